// A manifest's `preprocess` section made callable: resize rule, channel order, scale/mean/std, NCHW float32.
// Mirrors vkt/runtime/image.py (resized_size, Preprocessor) step for step, including its rounding.
#pragma once

#include <optional>
#include <string>

#include <opencv2/core.hpp>

#include "error.hpp"

namespace vkt {

// How one source image maps to its network input: (height, width) before and after the resize.
struct Plan {
    int src_h = 0, src_w = 0, h = 0, w = 0;
};

class Preprocessor {
public:
    // `pre`: the manifest's preprocess object; `max_side`: the model profile's max height/width, capping a
    // "limit_side" resize. BundleError naming the key and value for anything image.py refuses.
    Preprocessor(const json& pre, std::optional<int> max_side);

    Plan plan(int height, int width) const;  // vkt.runtime.image.resized_size
    // Resize `bgr` (uint8 [H, W, 3]) to plan.h x plan.w (cv::resize, INTER_LINEAR) and write it normalised,
    // channel-major, into the top-left of a [3, slot_h, slot_w] float32 slot (the caller fills any padding).
    void write(const cv::Mat& bgr, const Plan& plan, float* slot, int slot_h, int slot_w) const;

    std::string input;  // the manifest's "input" (graph input name), or empty
    std::string mode = "none";

private:
    std::string limit_type_ = "min";
    int64_t limit_side_len_ = 0, round_to_ = 32, shortest_edge_ = 0, longest_edge_ = 1000000000;
    std::optional<int64_t> cap_;  // min(max_side_len, max_side) for "limit_side"
    float a_[3], b_[3];           // out = pixel * a + b per model channel
    int src_channel_[3];          // BGR index read by each model channel
};

}  // namespace vkt
