// DB text detection from a bundle: the manifest's preprocess and postprocess (type "db") sections, same-size
// images batched together, boxes mapped back to source pixels. Mirrors vkt/runtime/textdet.py.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "engine.hpp"
#include "preprocess.hpp"
#include "timing.hpp"

namespace vkt {

struct DBParams {
    double thresh = 0.3, box_thresh = 0.5, unclip_ratio = 1.6, min_size = 3, min_side_px = 4;
    int64_t max_candidates = 1000, channel = 0;
    bool use_dilation = true;
    std::string score_mode = "fast", box_type = "quad";

    // From a manifest postprocess object; BundleError naming the key and value (unknown keys too).
    static DBParams from_json(const json& post);
};

struct TextBox {
    std::vector<cv::Point2f> polygon;  // source pixels; 4 points clockwise from top-left for quads
    float score = 0;
};

struct TextResult {
    int height = 0, width = 0;              // source image
    int input_height = 0, input_width = 0;  // network input it ran at
    std::vector<TextBox> boxes;
};

// Boxes from one probability map [H, W] (a float32 view), mapped to a src_h x src_w image.
std::vector<TextBox> db_postprocess(const cv::Mat& prob, int src_h, int src_w, const DBParams& p);

class TextDetector {
public:
    // Checks the bundle's task, the graph's input/output and the pre/post settings before any image.
    TextDetector(const Bundle& bundle, std::shared_ptr<Engine> engine);
    // BGR uint8 images -> one result each; images that resize to one shape share a model call
    // (up to max_batch). `session` is this thread's; `timing` (optional) accumulates pre/infer/post.
    std::vector<TextResult> operator()(Session& session, const std::vector<cv::Mat>& images, Timing* timing = nullptr) const;

    int max_batch = 8;

private:
    std::shared_ptr<Engine> engine_;
    std::unique_ptr<Preprocessor> pre_;
    DBParams params_;
    std::string input_, output_;
};

}  // namespace vkt
