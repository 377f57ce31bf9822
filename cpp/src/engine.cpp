#include "engine.hpp"

namespace vkt {

std::shared_ptr<Engine> open_engine(const Bundle& bundle, const EngineOptions& opt) {
    const FileEntry& e = bundle.graph(opt.precision, opt.backend);
    const std::string path = bundle.verified_path(e);
    ModelSpec spec = bundle.spec(e.component);
    if (opt.backend == "tensorrt") {
#ifdef VKT_WITH_TENSORRT
        return open_tensorrt(path, std::move(spec), opt);
#else
        throw BackendError("this build has no TensorRT runner: configure with -DVKT_WITH_TENSORRT=ON");
#endif
    }
#ifdef VKT_WITH_OPENVINO
    EngineOptions o = opt;
    auto fp = e.meta.find("float_precision");
    o.float_precision = fp != e.meta.end() && fp->is_string() ? fp->get<std::string>() : "f32";
    return open_openvino(path, std::move(spec), o);
#else
    throw BackendError("this build has no OpenVINO runner: configure with -DVKT_WITH_OPENVINO=ON");
#endif
}

}  // namespace vkt
