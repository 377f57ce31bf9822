// The TensorRT runner (built with -DVKT_WITH_TENSORRT=ON): the bundle's plan deserialized once (ICudaEngine,
// shared), one IExecutionContext + CUDA stream + device buffers per Session. TensorRT 10 name-based I/O API:
// setInputShape / setTensorAddress / enqueueV3. The pre/post-processing is the same code as for OpenVINO.
// Not compiled in vkt's CI (TensorRT is not installable there).
#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <mutex>

#include "engine.hpp"

namespace vkt {
namespace {

void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) throw BackendError(std::string("CUDA ") + what + " failed: " + cudaGetErrorString(e));
}

class Logger : public nvinfer1::ILogger {
public:
    void log(Severity severity, const char* msg) noexcept override {
        if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
    }
};

Logger& logger() {
    static Logger l;
    return l;
}

size_t element_size(nvinfer1::DataType t) {
    switch (t) {
        case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
        case nvinfer1::DataType::kINT64: return 8;
        default: return 0;
    }
}

struct DeviceBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
    void reserve(size_t n) {
        if (n <= bytes) return;
        if (ptr) cuda_check(cudaFree(ptr), "cudaFree");
        ptr = nullptr;
        bytes = 0;
        cuda_check(cudaMalloc(&ptr, n), "cudaMalloc");
        bytes = n;
    }
    ~DeviceBuffer() { if (ptr) cudaFree(ptr); }
};

class TrtSession : public Session {
public:
    TrtSession(ModelSpec spec, nvinfer1::ICudaEngine& engine) : spec_(std::move(spec)), engine_(engine) {
        context_.reset(engine_.createExecutionContext());
        if (!context_) throw BackendError("TensorRT could not create an execution context (out of GPU memory?)");
        cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    }
    ~TrtSession() override {
        context_.reset();
        if (stream_) cudaStreamDestroy(stream_);
    }

    std::map<std::string, Tensor> infer(const std::vector<Feed>& feeds) override {
        for (const Feed& f : feeds) spec_.check_input(f.name, f.shape);
        for (const Feed& f : feeds) {
            if (engine_.getTensorDataType(f.name.c_str()) != nvinfer1::DataType::kFLOAT)
                throw BackendError("plan input '" + f.name + "' is not float32");
            nvinfer1::Dims dims{};
            dims.nbDims = static_cast<int32_t>(f.shape.size());
            size_t n = 1;
            for (size_t i = 0; i < f.shape.size(); ++i) { dims.d[i] = f.shape[i]; n *= static_cast<size_t>(f.shape[i]); }
            if (!context_->setInputShape(f.name.c_str(), dims)) throw ShapeError("TensorRT refused the shape of input '" + f.name + "'");
            DeviceBuffer& buf = buffers_[f.name];
            buf.reserve(n * sizeof(float));
            cuda_check(cudaMemcpyAsync(buf.ptr, f.data, n * sizeof(float), cudaMemcpyHostToDevice, stream_), "copy to device");
            context_->setTensorAddress(f.name.c_str(), buf.ptr);
        }
        std::vector<std::pair<const TensorSpec*, size_t>> outs;
        for (const TensorSpec& t : spec_.outputs) {
            const nvinfer1::Dims d = context_->getTensorShape(t.name.c_str());
            if (d.nbDims < 0) throw BackendError("TensorRT cannot infer the shape of output '" + t.name + "'");
            size_t n = 1;
            for (int i = 0; i < d.nbDims; ++i) n *= static_cast<size_t>(d.d[i]);
            const size_t es = element_size(engine_.getTensorDataType(t.name.c_str()));
            if (!es) throw BackendError("plan output '" + t.name + "' is not float32, int32 or int64");
            DeviceBuffer& buf = buffers_[t.name];
            buf.reserve(std::max<size_t>(n * es, 1));
            context_->setTensorAddress(t.name.c_str(), buf.ptr);
            outs.emplace_back(&t, n);
        }
        if (!context_->enqueueV3(stream_)) throw BackendError("TensorRT failed to enqueue the plan");
        // Device -> this session's host buffers (kept between calls); float32 outputs are returned as views of them.
        std::map<std::string, Tensor> result;
        for (size_t k = 0; k < outs.size(); ++k) {
            const std::string& name = outs[k].first->name;
            std::vector<unsigned char>& h = host_[name];
            h.resize(outs[k].second * element_size(engine_.getTensorDataType(name.c_str())));
            cuda_check(cudaMemcpyAsync(h.data(), buffers_[name].ptr, h.size(), cudaMemcpyDeviceToHost, stream_), "copy to host");
        }
        cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
        for (size_t k = 0; k < outs.size(); ++k) {
            const std::string& name = outs[k].first->name;
            const nvinfer1::Dims d = context_->getTensorShape(name.c_str());
            const unsigned char* p = host_[name].data();
            const size_t n = outs[k].second;
            Tensor t;
            t.shape.assign(d.d, d.d + d.nbDims);
            const auto type = engine_.getTensorDataType(name.c_str());
            if (type == nvinfer1::DataType::kFLOAT) {
                t.view = reinterpret_cast<const float*>(p);  // valid until the next infer()
            } else if (type == nvinfer1::DataType::kINT32) {
                const int32_t* v = reinterpret_cast<const int32_t*>(p);
                t.owned.assign(v, v + n);
            } else {
                const int64_t* v = reinterpret_cast<const int64_t*>(p);
                t.owned.assign(v, v + n);
            }
            result.emplace(name, std::move(t));
        }
        return result;
    }

private:
    ModelSpec spec_;
    nvinfer1::ICudaEngine& engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    cudaStream_t stream_ = nullptr;
    std::map<std::string, DeviceBuffer> buffers_;
    std::map<std::string, std::vector<unsigned char>> host_;  // outputs copied back, reused by the next call
};

class TrtEngine : public Engine {
public:
    TrtEngine(const std::string& path, ModelSpec spec) : Engine(std::move(spec)) {
        std::ifstream in(path, std::ios::binary);
        std::vector<char> plan((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        if (plan.empty()) throw BundleError("cannot read the plan '" + path + "'");
        runtime_.reset(nvinfer1::createInferRuntime(logger()));
        if (!runtime_) throw BackendError("TensorRT could not create a runtime");
        engine_.reset(runtime_->deserializeCudaEngine(plan.data(), plan.size()));
        if (!engine_)
            throw BackendError("TensorRT cannot deserialize '" + path + "' (built by another TensorRT version or for another GPU?)");
    }

    // Each context starts on optimization profile 0 (vkt builds plans with one profile).
    std::unique_ptr<Session> session() override {
        std::lock_guard<std::mutex> lock(mu_);
        return std::make_unique<TrtSession>(spec_, *engine_);
    }

private:
    std::mutex mu_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;  // destroyed after the engine (members go in reverse order)
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
};

}  // namespace

std::shared_ptr<Engine> open_tensorrt(const std::string& path, ModelSpec spec, const EngineOptions&) {
    return std::make_shared<TrtEngine>(path, std::move(spec));
}

}  // namespace vkt
