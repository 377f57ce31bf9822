// vkt_cpp: run a vkt bundle (text detection or DETR) in process through OpenVINO (or TensorRT), with the
// pre/post-processing its manifest.json describes. No Python at run time.
//
//   vkt_cpp --bundle DIR [--precision fp32|int8] [--threads N] IMAGE...      one JSON line per image
//   vkt_cpp --bundle DIR --bench R IMAGE...        R timed runs per image: pre / infer / post split (JSON)
//   vkt_cpp --bundle DIR --bench-stdin             the compiled model's settings (a JSON line), then one timed
//       run per image path read from stdin, one JSON line each, flushed: another process (benchmarks/bench_cpp.py)
//       takes turns with it on one compiled model
//   vkt_cpp --bundle DIR --workers N --repeat R IMAGE...
//       one compiled model, N threads with one request each, R images per thread; every result is compared
//       with a serial run of the same image; RSS is sampled throughout (JSON).
// Bad input (bundle, image, option, shape outside the profile) prints "error: ..." and exits 2.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "detr.hpp"
#include "image.hpp"
#include "textdet.hpp"

using namespace vkt;

namespace {

struct Args {
    std::string bundle, out;
    EngineOptions engine;
    int bench = 0, workers = 0, repeat = 0;
    bool each = false;  // one model call per image (default: same-size images batched)
    bool bench_stdin = false;
    std::vector<std::string> images;
};

const char* USAGE =
    "usage: vkt_cpp --bundle DIR [--precision fp32|fp16|int8] [--backend openvino|tensorrt] [--threads N]\n"
    "               [--device CPU] [--each] [--bench R | --bench-stdin | --workers N --repeat R] IMAGE...\n"
    "Runs a vkt text-detection or DETR bundle on the images; prints JSON lines.\n"
    "  --precision  which graph of the bundle (default fp32; int8 takes the Q/DQ graph placed for OpenVINO)\n"
    "  --threads    inference threads (default: the runtime's)\n"
    "  --each       one model call per image (default: images that resize to one shape share a call)\n"
    "  --bench R    time R runs of each image (after one warm-up): pre / infer / post split\n"
    "  --bench-stdin  print the runtime's settings (a JSON line), then read image paths from stdin, one a line;\n"
    "               time one run of each (decode + pipeline) and print its split as a JSON line at once\n"
    "               (for taking turns with another process)\n"
    "  --workers N --repeat R  N threads sharing one compiled model, R images each, checked against a serial run\n";

int positive_int(const std::string& flag, const char* v) {
    char* end = nullptr;
    long n = std::strtol(v, &end, 10);
    if (!*v || *end || n < 1 || n > 1000000) throw InputError(flag + " must be a positive integer, got '" + v + "'");
    return static_cast<int>(n);
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string f = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) throw InputError(f + " needs a value");
            return argv[++i];
        };
        if (f == "-h" || f == "--help") { std::cout << USAGE; std::exit(0); }
        else if (f == "--bundle") a.bundle = value();
        else if (f == "--precision") a.engine.precision = value();
        else if (f == "--backend") a.engine.backend = value();
        else if (f == "--device") a.engine.device = value();
        else if (f == "--threads") a.engine.threads = positive_int(f, value());
        else if (f == "--bench") a.bench = positive_int(f, value());
        else if (f == "--workers") a.workers = positive_int(f, value());
        else if (f == "--repeat") a.repeat = positive_int(f, value());
        else if (f == "--each") a.each = true;
        else if (f == "--bench-stdin") a.bench_stdin = true;
        else if (f.size() > 1 && f[0] == '-') throw InputError("unknown option '" + f + "'; see --help");
        else a.images.push_back(f);
    }
    if (a.bundle.empty()) throw InputError("--bundle DIR is required; see --help");
    if (a.images.empty() && !a.bench_stdin) throw InputError("no input images given; expected image files");
    if (a.bench_stdin && (a.bench || a.workers || !a.images.empty()))
        throw InputError("--bench-stdin reads its image paths from stdin: no IMAGE arguments, --bench or --workers with it");
    if ((a.workers > 0) != (a.repeat > 0)) throw InputError("--workers and --repeat go together");
    if (a.workers) a.engine.streams = a.workers;
    return a;
}

long rss_kb() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

json to_json(const TextResult& r) {
    json dets = json::array();
    for (const auto& b : r.boxes) {
        json poly = json::array();
        for (const auto& p : b.polygon) poly.push_back({p.x, p.y});
        dets.push_back({{"polygon", poly}, {"score", b.score}});
    }
    return {{"height", r.height}, {"width", r.width}, {"input_height", r.input_height}, {"input_width", r.input_width},
            {"detections", dets}};
}

json to_json(const DetrResult& r) {
    json dets = json::array();
    for (const auto& o : r.objects)
        dets.push_back({{"box", {o.box[0], o.box[1], o.box[2], o.box[3]}}, {"score", o.score}, {"label", o.label}, {"name", o.name}});
    return {{"height", r.height}, {"width", r.width}, {"input_height", r.input_height}, {"input_width", r.input_width},
            {"detections", dets}};
}

// Bit-for-bit equality of two runs' results (the concurrency check).
bool same(const TextResult& a, const TextResult& b) {
    if (a.boxes.size() != b.boxes.size()) return false;
    for (size_t i = 0; i < a.boxes.size(); ++i)
        if (a.boxes[i].score != b.boxes[i].score || a.boxes[i].polygon != b.boxes[i].polygon) return false;
    return true;
}
bool same(const DetrResult& a, const DetrResult& b) {
    if (a.objects.size() != b.objects.size()) return false;
    for (size_t i = 0; i < a.objects.size(); ++i)
        if (a.objects[i].box != b.objects[i].box || a.objects[i].score != b.objects[i].score || a.objects[i].label != b.objects[i].label)
            return false;
    return true;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

template <class Pipe>
int run(const Args& a, const Bundle& bundle, const std::vector<cv::Mat>& images) {
    auto engine = open_engine(bundle, a.engine);
    const Pipe pipe(bundle, engine);
    auto session = engine->session();
    if (a.bench_stdin) {
        // First line: the runtime's settings. Then one timed call per line: decode the file, then the pipeline
        // (pre / infer / post), as --bench does.
        std::cout << json{{"settings", engine->settings()}}.dump() << std::endl;
        for (std::string path; std::getline(std::cin, path);) {
            if (path.empty()) continue;
            Stopwatch sw;
            cv::Mat img = read_image(path);
            const double d = sw.lap();
            Timing t;
            pipe(*session, {img}, &t);
            const double all = d + sw.lap();
            std::cout << json{{"image", path}, {"decode_ms", 1e3 * d}, {"pre_ms", 1e3 * t.pre}, {"infer_ms", 1e3 * t.infer},
                              {"post_ms", 1e3 * t.post}, {"total_ms", 1e3 * all}}.dump() << std::endl;
        }
        return 0;
    }
    if (a.bench) {
        // Per image: decode + pre-process, inference, post-processing, each the median of R runs after a warm-up.
        json rows = json::array();
        for (size_t i = 0; i < images.size(); ++i) {
            pipe(*session, {images[i]});
            std::vector<double> dec, pre, inf, post, total;
            for (int r = 0; r < a.bench; ++r) {
                Stopwatch sw;
                cv::Mat img = read_image(a.images[i]);
                const double d = sw.lap();
                Timing t;
                pipe(*session, {img}, &t);
                const double all = d + sw.lap();
                dec.push_back(d); pre.push_back(t.pre); inf.push_back(t.infer); post.push_back(t.post); total.push_back(all);
            }
            rows.push_back({{"image", a.images[i]}, {"decode_ms", 1e3 * median(dec)}, {"pre_ms", 1e3 * median(pre)},
                            {"infer_ms", 1e3 * median(inf)}, {"post_ms", 1e3 * median(post)}, {"total_ms", 1e3 * median(total)}});
        }
        std::cout << json{{"bench", rows}, {"runs", a.bench}, {"threads", a.engine.threads}}.dump() << "\n";
        return 0;
    }
    if (a.workers) {
        using Result = typename decltype(pipe(*session, {}))::value_type;
        std::vector<Result> serial;
        for (const cv::Mat& img : images) serial.push_back(pipe(*session, {img})[0]);
        std::atomic<long> mismatches{0}, done{0};
        std::atomic<bool> running{true};
        std::vector<long> rss;
        std::string failure;
        std::mutex mu;
        std::thread sampler([&] {
            while (running) {
                rss.push_back(rss_kb());
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });
        Stopwatch sw;
        std::vector<std::thread> pool;
        for (int t = 0; t < a.workers; ++t)
            pool.emplace_back([&, t] {
                try {
                    auto mine = engine->session();  // one request per thread, one compiled model for all
                    for (int r = 0; r < a.repeat; ++r) {
                        const size_t i = static_cast<size_t>(t + r) % images.size();
                        if (!same(pipe(*mine, {images[i]})[0], serial[i])) ++mismatches;
                        ++done;
                    }
                } catch (const std::exception& e) {
                    std::lock_guard<std::mutex> lock(mu);
                    failure = e.what();
                }
            });
        for (auto& th : pool) th.join();
        const double seconds = sw.lap();
        running = false;
        sampler.join();
        if (!failure.empty()) throw BackendError("a worker failed: " + failure);
        std::cout << json{{"workers", a.workers}, {"repeat", a.repeat}, {"images", done.load()}, {"mismatches", mismatches.load()},
                          {"seconds", seconds}, {"rss_kb", rss}}.dump() << "\n";
        return 0;
    }
    std::vector<json> lines;
    if (a.each) {
        for (size_t i = 0; i < images.size(); ++i) lines.push_back(to_json(pipe(*session, {images[i]})[0]));
    } else {
        for (const auto& r : pipe(*session, images)) lines.push_back(to_json(r));
    }
    for (size_t i = 0; i < lines.size(); ++i) {
        lines[i]["image"] = a.images[i];
        std::cout << lines[i].dump() << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Args a = parse(argc, argv);
        const Bundle bundle = Bundle::load(a.bundle);
        if (bundle.task != "text-detection" && bundle.task != "object-detection")
            throw BundleError("bundle '" + bundle.name + "' is for task '" + bundle.task +
                              "'; vkt_cpp runs 'text-detection' and 'object-detection' bundles");
        std::vector<cv::Mat> images;  // every image decoded before the model is compiled
        for (const auto& p : a.images) images.push_back(read_image(p));
        return bundle.task == "text-detection" ? run<TextDetector>(a, bundle, images) : run<Detector>(a, bundle, images);
    } catch (const Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const std::exception& e) {
        std::cerr << "internal error: " << e.what() << "\n";
        return 1;
    }
}
