// vkt_client: send an image to `vkt serve` with the KServe v2 binary tensor extension and summarise the output.
//
//   vkt_client --url http://127.0.0.1:8000 --bundle out/ppocrv5 --image page.ppm [--model NAME]
//              [--dump-input x.f32] [--dump-output y.f32] [--detect page.png]
//
// 1. reads the bundle's manifest.json (pre-processing keys, input/output names, model name),
// 2. pre-processes the PPM/PGM image itself (resize rule, channel order, scale/mean/std, NCHW float32),
// 3. POSTs /v2/models/<model>/infer with the tensor as binary data and asks for the output as binary,
// 4. prints the output's shape and summary (min/max/mean and, for DB text detection, pixels above thresh);
//    the last line is `SUMMARY {json}` for scripts. --detect also posts an image file to the task endpoint
//    /v2/models/<model>/detect (the server post-processes) and prints the detections.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>

#include "image_io.hpp"
#include "kserve_client.hpp"
#include "preprocess.hpp"

namespace {

int usage(const char* msg) {
    std::cerr << "error: " << msg << "\nusage: vkt_client --url URL --bundle DIR --image FILE.ppm [--model NAME] "
                 "[--dump-input F] [--dump-output F] [--detect IMAGE_FILE]\n";
    return 2;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open '" + path + "'");
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const std::string& path, const void* data, size_t n) {
    std::ofstream out(path, std::ios::binary);
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
    if (!out) throw std::runtime_error("cannot write '" + path + "'");
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
    return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
    std::map<std::string, std::string> a;
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        if (k.rfind("--", 0) != 0 || i + 1 >= argc) return usage(("bad argument '" + k + "'").c_str());
        a[k.substr(2)] = argv[++i];
    }
    for (const char* k : {"url", "bundle", "image"})
        if (!a.count(k)) return usage((std::string("--") + k + " is required").c_str());
    uint16_t probe = 1;
    if (*reinterpret_cast<uint8_t*>(&probe) != 1) return usage("the binary extension is little-endian; this host is not");
    try {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        // 1. The manifest: what the model expects.
        const auto manifest = nlohmann::json::parse(read_file(a["bundle"] + "/manifest.json"));
        const std::string model = a.count("model") ? a["model"] : manifest.at("name").get<std::string>();
        const auto pre = vkt::Preprocess::from_manifest(manifest);
        const std::string output = manifest["components"]["model"]["spec"]["outputs"][0]["name"];

        // 2. Pre-process: [1, 3, h, w] float32.
        const vkt::Image img = vkt::read_pnm(a["image"]);
        int h = 0, w = 0;
        std::vector<float> x = pre(img, h, w);
        if (a.count("dump-input")) write_file(a["dump-input"], x.data(), x.size() * sizeof(float));
        std::printf("image %s: %dx%d -> input %s [1,3,%d,%d] FP32 (%s, scale/mean/std from manifest.json)\n",
                    a["image"].c_str(), img.width, img.height, pre.input.c_str(), h, w, pre.color.c_str());

        // 3. Infer over HTTP with the binary tensor extension.
        vkt::Tensor in{pre.input, "FP32", {1, 3, h, w}, {}};
        in.data.resize(x.size() * sizeof(float));
        std::memcpy(in.data.data(), x.data(), in.data.size());
        vkt::Client client(a["url"]);
        auto t0 = std::chrono::steady_clock::now();
        auto outs = client.infer(model, {in}, {output});
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

        // 4. Summarise the output.
        const vkt::Tensor& y = outs.at(0);
        if (y.datatype != "FP32") throw std::runtime_error("expected an FP32 output, got " + y.datatype);
        const float* v = reinterpret_cast<const float*>(y.data.data());
        const size_t n = y.data.size() / sizeof(float);
        if (a.count("dump-output")) write_file(a["dump-output"], v, y.data.size());
        const double thresh = manifest["postprocess"].value("thresh", 0.3);
        double lo = std::numeric_limits<double>::infinity(), hi = -lo, sum = 0;
        size_t above = 0;
        for (size_t i = 0; i < n; ++i) {
            lo = std::min(lo, static_cast<double>(v[i]));
            hi = std::max(hi, static_cast<double>(v[i]));
            sum += v[i];
            above += v[i] > thresh;
        }
        std::printf("output %s %s FP32 in %.1f ms: min %.4f max %.4f mean %.5f, %zu values > %.2f\n", y.name.c_str(),
                    shape_str(y.shape).c_str(), ms, lo, hi, sum / n, above, thresh);

        nlohmann::json summary = {{"model", model}, {"input_shape", {1, 3, h, w}}, {"output", y.name}, {"shape", y.shape},
                                  {"min", lo}, {"max", hi}, {"mean", sum / n}, {"above_thresh", above}, {"ms", ms}};
        // Optional: the task endpoint, where the server runs DB post-processing and answers polygons.
        if (a.count("detect")) {
            auto r = client.post("/v2/models/" + model + "/detect", read_file(a["detect"]), {"Content-Type: application/octet-stream"});
            if (r.status != 200) throw std::runtime_error("detect: HTTP " + std::to_string(r.status) + ": " + r.body.substr(0, 500));
            auto det = nlohmann::json::parse(r.body);
            std::printf("detect: %zu detections\n", det["detections"].size());
            for (const auto& d : det["detections"]) std::printf("  score %.3f  %s\n", d["score"].get<double>(),
                                                                 (d.contains("polygon") ? d["polygon"] : d["box"]).dump().c_str());
            summary["detections"] = det["detections"].size();
        }
        std::printf("SUMMARY %s\n", summary.dump().c_str());
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    curl_global_cleanup();
    return 0;
}
