// The runner interface the pipelines share: an Engine is one compiled model (thread-safe, shared); a Session
// is one request context on it (one per thread). Only the runner differs between OpenVINO and TensorRT.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle.hpp"

namespace vkt {

// An output as float32 values: a view of the runtime's own output memory where that is float32 (no copy; valid
// until the Session's next infer() call), else `owned` (integer outputs, e.g. DETR labels, converted to float).
struct Tensor {
    std::vector<int64_t> shape;
    const float* view = nullptr;
    std::vector<float> owned;
    const float* data() const { return view ? view : owned.data(); }
};

struct Feed {  // an input, borrowed: `data` must stay alive during infer()
    std::string name;
    std::vector<int64_t> shape;
    const float* data;
};

class Session {
public:
    virtual ~Session() = default;
    // Runs the graph. Each feed's shape is checked against the spec first (ShapeError, before the runtime). The
    // outputs stay valid until the next infer() on this Session.
    virtual std::map<std::string, Tensor> infer(const std::vector<Feed>& feeds) = 0;
};

class Engine {
public:
    explicit Engine(ModelSpec spec) : spec_(std::move(spec)) {}
    virtual ~Engine() = default;
    // Thread-safe. Use each Session from one thread at a time, and let none outlive its Engine.
    virtual std::unique_ptr<Session> session() = 0;
    // The runtime's own account of how the model was compiled (OpenVINO: the compiled model's properties that
    // decide speed, e.g. PERFORMANCE_HINT, NUM_STREAMS, INFERENCE_NUM_THREADS), as text; empty where none.
    virtual std::map<std::string, std::string> settings() const { return {}; }
    const ModelSpec& spec() const { return spec_; }

protected:
    ModelSpec spec_;
};

struct EngineOptions {
    std::string backend = "openvino";  // "openvino" | "tensorrt"
    std::string precision = "fp32";    // "fp32" | "fp16" | "int8": which graph of the bundle
    int threads = 0;                   // OpenVINO INFERENCE_NUM_THREADS (0: its default)
    int streams = 1;                   // OpenVINO NUM_STREAMS (requests that run at once)
    std::string device = "CPU";        // OpenVINO device
    // What OpenVINO runs the layers an INT8 graph keeps in float in: the graph's meta "float_precision" (what its
    // gate scored them in; open_engine reads it). "bf16" only where the CPU has it natively, else f32, as Python does.
    std::string float_precision = "f32";
};

// The bundle's graph for `opt` (Bundle::graph), verified, compiled. BackendError when the backend is not built in.
std::shared_ptr<Engine> open_engine(const Bundle& bundle, const EngineOptions& opt);

std::shared_ptr<Engine> open_openvino(const std::string& path, ModelSpec spec, const EngineOptions& opt);
std::shared_ptr<Engine> open_tensorrt(const std::string& path, ModelSpec spec, const EngineOptions& opt);

}  // namespace vkt
