#include "preprocess.hpp"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>

namespace vkt {
namespace {

int64_t positive(const json& obj, const std::string& where, const std::string& key, int64_t def) {
    auto it = obj.find(key);
    if (it != obj.end() && !it->is_null() && (!it->is_number_integer() || it->get<int64_t>() < 1))
        throw BundleError(where + "." + key + " must be a positive integer, got " + repr(*it));
    return get_int(obj, where, key, def);
}

void three(const json& pre, const std::string& key, double def, double out[3]) {
    auto it = pre.find(key);
    if (it == pre.end() || it->is_null()) { out[0] = out[1] = out[2] = def; return; }
    bool ok = it->is_array() && it->size() == 3;
    for (size_t i = 0; ok && i < 3; ++i) ok = (*it)[i].is_number() && std::isfinite((*it)[i].get<double>());
    if (!ok) throw BundleError("preprocess." + key + " must be 3 numbers (one per channel), got " + repr(*it));
    for (int i = 0; i < 3; ++i) out[i] = (*it)[i].get<double>();
}

int64_t round_half_even(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

}  // namespace

Preprocessor::Preprocessor(const json& pre, std::optional<int> max_side) {
    input = get_string(pre, "preprocess", "input", "");
    const std::string color = get_string(pre, "preprocess", "color", "BGR");
    if (color != "BGR" && color != "RGB") throw BundleError("preprocess.color must be \"BGR\" or \"RGB\", got " + repr(pre["color"]));
    const std::string layout = get_string(pre, "preprocess", "layout", "NCHW");
    if (layout != "NCHW") throw BundleError("preprocess.layout must be \"NCHW\", got " + repr(pre["layout"]));
    const double scale = get_number(pre, "preprocess", "scale", 1.0);
    if (!(scale > 0)) throw BundleError("preprocess.scale must be a positive number, got " + repr(pre["scale"]));
    double mean[3], std_[3];
    three(pre, "mean", 0.0, mean);
    three(pre, "std", 1.0, std_);
    for (double s : std_)
        if (!(s > 0)) throw BundleError("preprocess.std must be 3 positive numbers, got " + repr(pre["std"]));
    for (int c = 0; c < 3; ++c) {
        a_[c] = static_cast<float>(scale / std_[c]);
        b_[c] = static_cast<float>(-mean[c] / std_[c]);
        src_channel_[c] = color == "BGR" ? c : 2 - c;
    }
    const json& r = get_object(pre, "preprocess", "resize");
    mode = get_string(r, "preprocess.resize", "mode", "none");
    if (mode == "limit_side") {
        if (!r.contains("limit_side_len")) throw BundleError("preprocess.resize.limit_side_len is missing (mode limit_side)");
        limit_side_len_ = positive(r, "resize", "limit_side_len", 0);
        round_to_ = positive(r, "resize", "round_to", 32);
        limit_type_ = get_string(r, "preprocess.resize", "limit_type", "min");
        if (limit_type_ != "min" && limit_type_ != "max")
            throw BundleError("resize.limit_type must be \"min\" or \"max\", got " + repr(r["limit_type"]));
        if (r.contains("max_side_len") && !r["max_side_len"].is_null()) cap_ = positive(r, "resize", "max_side_len", 0);
        if (max_side) cap_ = cap_ ? std::min<int64_t>(*cap_, *max_side) : *max_side;
        if (cap_ && *cap_ < round_to_)
            throw BundleError("max side " + std::to_string(*cap_) + " is smaller than round_to " + std::to_string(round_to_));
    } else if (mode == "shortest_edge") {
        if (!r.contains("shortest_edge")) throw BundleError("preprocess.resize.shortest_edge is missing (mode shortest_edge)");
        shortest_edge_ = positive(r, "resize", "shortest_edge", 0);
        longest_edge_ = positive(r, "resize", "longest_edge", 1000000000);
    } else if (mode != "none") {
        throw BundleError("unknown resize mode " + repr(r["mode"]) + "; expected \"limit_side\", \"shortest_edge\" or \"none\"");
    }
}

Plan Preprocessor::plan(int height, int width) const {
    Plan p{height, width, height, width};
    if (mode == "limit_side") {
        double ratio = 1.0;
        if (limit_type_ == "min" && std::min(height, width) < limit_side_len_)
            ratio = static_cast<double>(limit_side_len_) / std::min(height, width);
        if (limit_type_ == "max" && std::max(height, width) > limit_side_len_)
            ratio = static_cast<double>(limit_side_len_) / std::max(height, width);
        int64_t h = static_cast<int64_t>(height * ratio), w = static_cast<int64_t>(width * ratio);  // truncation
        if (cap_ && std::max(h, w) > *cap_) {
            const double s = static_cast<double>(*cap_) / static_cast<double>(std::max(h, w));
            h = static_cast<int64_t>(h * s);
            w = static_cast<int64_t>(w * s);
        }
        h = std::max(round_half_even(static_cast<double>(h) / round_to_) * round_to_, round_to_);
        w = std::max(round_half_even(static_cast<double>(w) / round_to_) * round_to_, round_to_);
        if (cap_) {
            const int64_t top = *cap_ / round_to_ * round_to_;
            h = std::min(h, top);
            w = std::min(w, top);
        }
        p.h = static_cast<int>(h);
        p.w = static_cast<int>(w);
    } else if (mode == "shortest_edge") {
        // transformers' DetrImageProcessor rule, as image.py: when the long side limits, the short side is
        // round(raw) but the long side comes from the unrounded raw.
        int64_t s = shortest_edge_;
        const double lo = std::min(height, width), hi = std::max(height, width);
        bool limited = false;
        double raw = 0;
        if (hi / lo * static_cast<double>(s) > static_cast<double>(longest_edge_)) {
            raw = static_cast<double>(longest_edge_) * lo / hi;
            s = round_half_even(raw);
            limited = true;
        }
        if ((height <= width && height == s) || (width <= height && width == s)) return p;
        const double scale = limited ? raw : static_cast<double>(s);
        int64_t h, w;
        if (width < height) { h = static_cast<int64_t>(scale * height / width); w = s; }
        else { h = s; w = static_cast<int64_t>(scale * width / height); }
        if (std::min(h, w) < 1)
            throw InputError("image of " + std::to_string(height) + "x" + std::to_string(width) +
                             " pixels is too elongated for resize shortest_edge " + std::to_string(shortest_edge_) +
                             " / longest_edge " + std::to_string(longest_edge_) + ": it would become " +
                             std::to_string(h) + "x" + std::to_string(w));
        p.h = static_cast<int>(h);
        p.w = static_cast<int>(w);
    }
    return p;
}

void Preprocessor::write(const cv::Mat& bgr, const Plan& plan, float* slot, int slot_h, int slot_w) const {
    CV_Assert(bgr.type() == CV_8UC3 && bgr.rows == plan.src_h && bgr.cols == plan.src_w);
    cv::Mat img = bgr;
    if (plan.h != plan.src_h || plan.w != plan.src_w) cv::resize(bgr, img, cv::Size(plan.w, plan.h), 0, 0, cv::INTER_LINEAR);
    // Channels split first (SIMD in OpenCV), then one contiguous loop per plane and row that the compiler
    // vectorises: float32 x * a then + b, as numpy (no fused multiply-add, -ffp-contract=off).
    cv::Mat planes[3];
    cv::split(img, planes);
    const size_t plane = static_cast<size_t>(slot_h) * slot_w;
    for (int c = 0; c < 3; ++c) {
        const cv::Mat& src = planes[src_channel_[c]];
        const float a = a_[c], b = b_[c];
        for (int y = 0; y < plan.h; ++y) {
            const uint8_t* row = src.ptr<uint8_t>(y);
            float* o = slot + c * plane + static_cast<size_t>(y) * slot_w;
            for (int x = 0; x < plan.w; ++x) {
                const float v = static_cast<float>(row[x]) * a;
                o[x] = v + b;
            }
        }
    }
}

}  // namespace vkt
