// DETR object detection from a bundle: "shortest_edge" resize, raw heads (logits, pred_boxes) or in-graph
// post-processing (scores, labels, boxes), an optional pixel_mask, then threshold / soft-NMS / top-k.
// Mirrors vkt/runtime/detection.py.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/core.hpp>

#include "engine.hpp"
#include "preprocess.hpp"
#include "timing.hpp"

namespace vkt {

struct DetrParams {
    double score_threshold = 0.5, soft_nms_sigma = 0.5;
    int64_t top_k = 100;
    bool soft_nms = false, class_agnostic = false;
    std::vector<std::string> labels;

    static DetrParams from_json(const json& post);  // BundleError naming the key and value
    std::string name(int64_t label) const;
};

struct Object {
    std::array<float, 4> box;  // xyxy, source pixels
    float score = 0;
    int64_t label = 0;
    std::string name;
};

struct DetrResult {
    int height = 0, width = 0, input_height = 0, input_width = 0;
    std::vector<Object> objects;  // best first
};

class Detector {
public:
    Detector(const Bundle& bundle, std::shared_ptr<Engine> engine);
    std::vector<DetrResult> operator()(Session& session, const std::vector<cv::Mat>& images, Timing* timing = nullptr) const;

    int max_batch = 1;

private:
    std::shared_ptr<Engine> engine_;
    std::unique_ptr<Preprocessor> pre_;
    DetrParams params_;
    std::string input_;
    bool raw_ = true, has_mask_ = false;
    int static_batch_ = 0;  // 0: dynamic
};

}  // namespace vkt
