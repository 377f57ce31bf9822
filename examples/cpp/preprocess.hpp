// A bundle's manifest.json `preprocess` section, reproduced: resize rule, channel order, scale/mean/std,
// NCHW float32. Mirrors vkt/runtime/image.py (resized_size, Preprocessor); docs/ARCHITECTURE.md lists the keys.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "image_io.hpp"

namespace vkt {

using json = nlohmann::json;

struct Preprocess {
    std::string input;                  // graph input name
    std::string color = "BGR";          // channel order the model expects
    std::string mode = "none";          // resize mode: limit_side | shortest_edge | none
    std::string limit_type = "min";
    int limit_side_len = 0, round_to = 32, max_side = 0;   // max_side: min(max_side_len, profile max h/w); 0: none
    int shortest_edge = 0, longest_edge = 1000000000;
    float a[3] = {1, 1, 1}, b[3] = {0, 0, 0};              // out = pixel * a + b, a = scale / std, b = -mean / std

    // From the parsed manifest (component "model"): preprocess keys plus the input's profile caps.
    static Preprocess from_manifest(const json& m) {
        Preprocess p;
        const json& pre = m.at("preprocess");
        const json& spec = m.at("components").at("model").at("spec");
        p.input = pre.value("input", spec.at("inputs").at(0).at("name").get<std::string>());
        p.color = pre.value("color", "BGR");
        if (p.color != "BGR" && p.color != "RGB") throw std::runtime_error("preprocess.color must be BGR or RGB, got " + p.color);
        if (pre.value("layout", "NCHW") != "NCHW") throw std::runtime_error("preprocess.layout must be NCHW");
        const json r = pre.value("resize", json::object());
        p.mode = r.value("mode", "none");
        if (p.mode == "limit_side") {
            p.limit_side_len = r.at("limit_side_len").get<int>();
            p.limit_type = r.value("limit_type", "min");
            p.round_to = r.value("round_to", 32);
            std::vector<int> caps;
            if (r.contains("max_side_len")) caps.push_back(r["max_side_len"].get<int>());
            // As TextDetector: the profile's max height/width (dims 2 and 3 of the input) caps the resize too.
            for (const json& t : spec.at("inputs"))
                if (t.at("name") == p.input && spec.contains("profiles") && !spec["profiles"].empty()) {
                    const json& prof = spec["profiles"][0];
                    std::vector<int> sides;
                    for (size_t d = 2; d < t.at("shape").size(); ++d)
                        if (t["shape"][d].is_string() && prof.contains(t["shape"][d].get<std::string>()))
                            sides.push_back(prof[t["shape"][d].get<std::string>()][2].get<int>());
                    if (!sides.empty()) caps.push_back(*std::min_element(sides.begin(), sides.end()));
                }
            if (!caps.empty()) p.max_side = *std::min_element(caps.begin(), caps.end());
        } else if (p.mode == "shortest_edge") {
            p.shortest_edge = r.at("shortest_edge").get<int>();
            p.longest_edge = r.value("longest_edge", 1000000000);
        } else if (p.mode != "none") {
            throw std::runtime_error("unknown resize mode " + p.mode);
        }
        const double scale = pre.value("scale", 1.0);
        const std::vector<double> mean = pre.value("mean", std::vector<double>{0, 0, 0});
        const std::vector<double> std_ = pre.value("std", std::vector<double>{1, 1, 1});
        for (int c = 0; c < 3; ++c) {
            p.a[c] = static_cast<float>(scale / std_.at(c));
            p.b[c] = static_cast<float>(-mean.at(c) / std_.at(c));
        }
        return p;
    }

    // Target (height, width): vkt.runtime.image.resized_size.
    void target(int h0, int w0, int& h, int& w) const {
        if (mode == "none") { h = h0; w = w0; return; }
        if (mode == "shortest_edge") {
            // transformers' DetrImageProcessor rule, step for step: when the long side limits, the
            // short side is round(raw) but the long side comes from the unrounded raw
            // (640 x 1280 -> 666 x 1333, not 1332).
            const double lo = std::min(h0, w0), hi = std::max(h0, w0);
            int s = shortest_edge;
            double scale = s;
            if (hi / lo * s > longest_edge) {
                scale = static_cast<double>(longest_edge) * lo / hi;
                s = static_cast<int>(std::nearbyint(scale));  // Python's round: half to even
            }
            if ((h0 <= w0 && h0 == s) || (w0 <= h0 && w0 == s)) { h = h0; w = w0; return; }
            if (w0 < h0) { w = s; h = static_cast<int>(scale * h0 / w0); }
            else { h = s; w = static_cast<int>(scale * w0 / h0); }
            return;
        }
        double ratio = 1.0;
        if (limit_type == "min" && std::min(h0, w0) < limit_side_len) ratio = static_cast<double>(limit_side_len) / std::min(h0, w0);
        if (limit_type == "max" && std::max(h0, w0) > limit_side_len) ratio = static_cast<double>(limit_side_len) / std::max(h0, w0);
        h = static_cast<int>(h0 * ratio);  // truncation, as PP-OCR
        w = static_cast<int>(w0 * ratio);
        if (max_side > 0 && std::max(h, w) > max_side) {
            double s = static_cast<double>(max_side) / std::max(h, w);
            h = static_cast<int>(h * s);
            w = static_cast<int>(w * s);
        }
        // Round half to even (Python's round; std::nearbyint under the default rounding mode).
        h = std::max(static_cast<int>(std::nearbyint(static_cast<double>(h) / round_to)) * round_to, round_to);
        w = std::max(static_cast<int>(std::nearbyint(static_cast<double>(w) / round_to)) * round_to, round_to);
        if (max_side > 0) {
            int top = max_side / round_to * round_to;
            h = std::min(h, top);
            w = std::min(w, top);
        }
    }

    // Image -> [1, 3, h, w] float32. The resize emulates OpenCV's cv::resize(INTER_LINEAR) on 8-bit images
    // (vkt uses it): half-pixel centres, edge clamp, 11-bit fixed-point weights, and the rounding of its SIMD
    // vertical pass. Measured against OpenCV 4 on x86: identical except ~0.05% of pixels, all on the clamped
    // first/last rows, off by one level. A service that links OpenCV should call cv::resize instead.
    std::vector<float> operator()(const Image& img, int& h, int& w) const {
        target(img.height, img.width, h, w);
        std::vector<uint8_t> rs;
        if (h == img.height && w == img.width) {
            rs = img.rgb;
        } else {
            rs = resize_linear(img, h, w);
        }
        // Model channel c reads R, G or B: "BGR" models take B first. Same float32 arithmetic as vkt.
        const int src[3] = {color == "BGR" ? 2 : 0, 1, color == "BGR" ? 0 : 2};
        std::vector<float> out(static_cast<size_t>(3) * h * w);
        const size_t plane = static_cast<size_t>(h) * w;
        for (int c = 0; c < 3; ++c)
            for (size_t k = 0; k < plane; ++k) {
                float v = static_cast<float>(rs[3 * k + src[c]]) * a[c];
                out[c * plane + k] = v + b[c];
            }
        return out;
    }

    // Source index and weights (w0 + w1 = 2048) of each destination pixel along one axis.
    static void linear_coefs(int n_dst, int n_src, std::vector<int>& idx, std::vector<int>& w0, std::vector<int>& w1) {
        const double scale = 1.0 / (static_cast<double>(n_dst) / n_src);
        idx.resize(n_dst); w0.resize(n_dst); w1.resize(n_dst);
        for (int d = 0; d < n_dst; ++d) {
            float f = static_cast<float>((d + 0.5) * scale - 0.5);
            int s = static_cast<int>(std::floor(f));
            f -= static_cast<float>(s);
            if (s < 0) { s = 0; f = 0.f; }
            if (s >= n_src - 1) { s = n_src - 1; f = 0.f; }
            idx[d] = s;
            w0[d] = static_cast<int>(std::nearbyint((1.f - f) * 2048.f));
            w1[d] = static_cast<int>(std::nearbyint(f * 2048.f));
        }
    }

    static std::vector<uint8_t> resize_linear(const Image& img, int h, int w) {
        std::vector<int> xi, xa, xb, yi, ya, yb;
        linear_coefs(w, img.width, xi, xa, xb);
        linear_coefs(h, img.height, yi, ya, yb);
        // Horizontal pass per source row: value * 2048.
        std::vector<int> hor(static_cast<size_t>(img.height) * w * 3);
        for (int y = 0; y < img.height; ++y) {
            const uint8_t* row = &img.rgb[static_cast<size_t>(y) * img.width * 3];
            int* out = &hor[static_cast<size_t>(y) * w * 3];
            for (int x = 0; x < w; ++x) {
                const int i0 = xi[x], i1 = std::min(i0 + 1, img.width - 1);
                for (int c = 0; c < 3; ++c) out[3 * x + c] = row[3 * i0 + c] * xa[x] + row[3 * i1 + c] * xb[x];
            }
        }
        // Vertical pass: ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16), then (+2) >> 2, as OpenCV's SIMD path.
        std::vector<uint8_t> rs(static_cast<size_t>(h) * w * 3);
        for (int y = 0; y < h; ++y) {
            const int* s0 = &hor[static_cast<size_t>(yi[y]) * w * 3];
            const int* s1 = &hor[static_cast<size_t>(std::min(yi[y] + 1, img.height - 1)) * w * 3];
            uint8_t* out = &rs[static_cast<size_t>(y) * w * 3];
            for (int k = 0; k < w * 3; ++k) {
                int v = (((ya[y] * (s0[k] >> 4)) >> 16) + ((yb[y] * (s1[k] >> 4)) >> 16) + 2) >> 2;
                out[k] = static_cast<uint8_t>(std::clamp(v, 0, 255));
            }
        }
        return rs;
    }
};

}  // namespace vkt
