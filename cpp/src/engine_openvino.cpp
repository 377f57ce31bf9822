// The OpenVINO runner: the profile's ranges as dynamic bounds, f32 inference precision (FP32 means FP32 on CPUs
// with bf16 units too; an INT8 graph gated with its float layers in bf16 runs them in bf16 where the CPU has it), a
// LATENCY hint; one ov::CompiledModel shared, one ov::InferRequest per Session.
// As vkt/runtime/openvino.py (OvRunner).
#include <algorithm>

#include <openvino/runtime/core.hpp>
#include <openvino/runtime/properties.hpp>

#include "engine.hpp"

namespace vkt {
namespace {

std::string first_line(const std::exception& e) {
    std::string s = e.what();
    // OpenVINO prefixes its messages with source locations ("Exception from src/..."): keep the last line.
    while (!s.empty() && s.back() == '\n') s.pop_back();
    auto nl = s.rfind('\n');
    return (nl == std::string::npos ? s : s.substr(nl + 1)).substr(0, 500);
}

// The compiled-model properties that decide CPU speed (benchmarks/bench_cpp.py compares them with Python's).
const char* const SETTINGS[] = {"PERFORMANCE_HINT", "EXECUTION_MODE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS",
                                "INFERENCE_PRECISION_HINT", "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING",
                                "SCHEDULING_CORE_TYPE", "TBB_PARTITIONER", "CPU_DENORMALS_OPTIMIZATION"};

class OvSession : public Session {
public:
    OvSession(const ModelSpec& spec, ov::InferRequest req) : spec_(spec), req_(std::move(req)) {}

    std::map<std::string, Tensor> infer(const std::vector<Feed>& feeds) override {
        for (const Feed& f : feeds) spec_.check_input(f.name, f.shape);
        std::map<std::string, Tensor> out;
        try {
            for (const Feed& f : feeds) {
                ov::Shape shape(f.shape.begin(), f.shape.end());
                req_.set_tensor(f.name, ov::Tensor(ov::element::f32, shape, const_cast<float*>(f.data)));
            }
            req_.infer();
            for (const TensorSpec& t : spec_.outputs) {
                ov::Tensor r = req_.get_tensor(t.name);
                Tensor o;
                const ov::Shape& s = r.get_shape();
                o.shape.assign(s.begin(), s.end());
                const size_t n = r.get_size();
                const auto type = r.get_element_type();
                if (type == ov::element::f32) {
                    o.view = r.data<const float>();  // the request's memory: read before its next infer()
                } else if (type == ov::element::i64) {
                    const int64_t* p = r.data<const int64_t>();
                    o.owned.assign(p, p + n);
                } else if (type == ov::element::i32) {
                    const int32_t* p = r.data<const int32_t>();
                    o.owned.assign(p, p + n);
                } else {
                    throw BackendError("output '" + t.name + "' has element type " + type.get_type_name() +
                                       "; expected f32, i64 or i32");
                }
                out.emplace(t.name, std::move(o));
            }
        } catch (const ov::Exception& e) {
            throw BackendError("OpenVINO failed to run the model: " + first_line(e));
        }
        return out;
    }

private:
    ModelSpec spec_;  // a copy: a Session never dangles
    ov::InferRequest req_;
};

class OvEngine : public Engine {
public:
    OvEngine(const std::string& path, ModelSpec spec, const EngineOptions& opt) : Engine(std::move(spec)) {
        try {
            ov::Core core;
            std::shared_ptr<ov::Model> model = core.read_model(path);
            const auto bounds = spec_.bounds();
            if (!bounds.empty()) {
                std::map<std::string, ov::PartialShape> shapes;
                for (const TensorSpec& t : spec_.inputs) {
                    std::vector<ov::Dimension> dims;
                    for (const Dim& d : t.shape) {
                        auto it = d.value < 0 ? bounds.find(d.name) : bounds.end();
                        dims.push_back(d.value >= 0 ? ov::Dimension(d.value)
                                       : it != bounds.end() ? ov::Dimension(it->second.first, it->second.second)
                                                            : ov::Dimension());
                    }
                    shapes[t.name] = ov::PartialShape(dims);
                }
                model->reshape(shapes);
            }
            ov::AnyMap config{{ov::hint::performance_mode.name(), ov::hint::PerformanceMode::LATENCY}};
            if (opt.device == "CPU") {
                // f32 (FP32 means FP32), or bf16 for an INT8 graph gated so, where the CPU has bf16 natively
                ov::element::Type hint = ov::element::f32;
                if (opt.float_precision == "bf16") {
                    const auto caps = core.get_property(opt.device, ov::device::capabilities);
                    if (std::find(caps.begin(), caps.end(), ov::device::capability::BF16) != caps.end())
                        hint = ov::element::bf16;
                }
                config[ov::hint::inference_precision.name()] = hint;
                if (opt.threads > 0) config[ov::inference_num_threads.name()] = opt.threads;
                if (opt.streams > 1) config[ov::num_streams.name()] = ov::streams::Num(opt.streams);
            }
            compiled_ = core.compile_model(model, opt.device, config);
            for (const TensorSpec& t : spec_.outputs) compiled_.output(t.name);  // throws for a missing output
        } catch (const std::exception& e) {
            throw BackendError("OpenVINO cannot load '" + path + "': " + first_line(e));
        }
    }

    std::unique_ptr<Session> session() override {
        try {
            return std::make_unique<OvSession>(spec_, compiled_.create_infer_request());
        } catch (const ov::Exception& e) {
            throw BackendError("OpenVINO cannot create an infer request: " + first_line(e));
        }
    }

    std::map<std::string, std::string> settings() const override {
        std::map<std::string, std::string> out;
        for (const char* key : SETTINGS) {
            try {
                out[key] = compiled_.get_property(key).as<std::string>();
            } catch (const std::exception&) {  // a device without that property
            }
        }
        return out;
    }

private:
    ov::CompiledModel compiled_;
};

}  // namespace

std::shared_ptr<Engine> open_openvino(const std::string& path, ModelSpec spec, const EngineOptions& opt) {
    return std::make_shared<OvEngine>(path, std::move(spec), opt);
}

}  // namespace vkt
