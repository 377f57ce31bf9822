#include "detr.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

namespace vkt {
namespace {

const char* MASK = "pixel_mask";
const char* SIZES = "orig_sizes";

struct Candidates {  // one image's per-query results
    std::vector<float> scores;
    std::vector<int64_t> labels;
    std::vector<std::array<float, 4>> boxes;
};

// Softmax over C + 1 logits, "no object" dropped, best class per query; boxes cxcywh -> xyxy (decode_raw).
Candidates decode_raw(const float* logits, const float* pred_boxes, size_t queries, size_t classes1) {
    Candidates c;
    std::vector<float> e(classes1);
    for (size_t q = 0; q < queries; ++q) {
        const float* z = logits + q * classes1;
        const float mx = *std::max_element(z, z + classes1);
        float sum = 0;
        for (size_t k = 0; k < classes1; ++k) sum += (e[k] = std::exp(z[k] - mx));
        size_t best = 0;
        for (size_t k = 1; k + 1 < classes1; ++k)
            if (e[k] > e[best]) best = k;
        c.scores.push_back(e[best] / sum);
        c.labels.push_back(static_cast<int64_t>(best));
        const float* b = pred_boxes + 4 * q;
        c.boxes.push_back({b[0] - 0.5f * b[2], b[1] - 0.5f * b[3], b[0] + 0.5f * b[2], b[1] + 0.5f * b[3]});
    }
    return c;
}

float iou(const std::array<float, 4>& a, const std::array<float, 4>& b) {
    const float iw = std::max(std::min(a[2], b[2]) - std::max(a[0], b[0]), 0.f);
    const float ih = std::max(std::min(a[3], b[3]) - std::max(a[1], b[1]), 0.f);
    const float inter = iw * ih;
    const float aa = std::max(a[2] - a[0], 0.f) * std::max(a[3] - a[1], 0.f);
    const float ab = std::max(b[2] - b[0], 0.f) * std::max(b[3] - b[1], 0.f);
    const float uni = aa + ab - inter;
    return uni > 0 ? inter / uni : 0.f;
}

// Gaussian soft-NMS over `idx` (Bodla et al. 2017): returns kept (index, decayed score), best first.
std::vector<std::pair<size_t, float>> soft_nms(const Candidates& c, const std::vector<size_t>& idx, double sigma, double threshold) {
    std::vector<double> s(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) s[i] = c.scores[idx[i]];
    std::vector<size_t> alive(idx.size());
    std::iota(alive.begin(), alive.end(), 0);
    std::vector<std::pair<size_t, float>> keep;
    while (!alive.empty()) {
        size_t bi = 0;
        for (size_t i = 1; i < alive.size(); ++i)
            if (s[alive[i]] > s[alive[bi]]) bi = i;
        const size_t best = alive[bi];
        if (s[best] <= threshold) break;
        keep.emplace_back(idx[best], static_cast<float>(s[best]));
        alive.erase(alive.begin() + static_cast<long>(bi));
        for (size_t a : alive) {
            const float o = iou(c.boxes[idx[best]], c.boxes[idx[a]]);
            s[a] *= static_cast<double>(std::exp(-(o * o) / static_cast<float>(sigma)));
        }
    }
    return keep;
}

// Threshold (compared in float32, as numpy with a float32 array), optional soft-NMS and top-k (detection.select).
// `normalized`: boxes in [0, 1], scaled here.
std::vector<Object> select(Candidates c, int src_h, int src_w, const DetrParams& p, bool normalized) {
    if (normalized) {
        const float w = static_cast<float>(src_w), h = static_cast<float>(src_h);
        for (auto& b : c.boxes) { b[0] *= w; b[1] *= h; b[2] *= w; b[3] *= h; }
    }
    std::vector<size_t> order(c.scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return -c.scores[a] < -c.scores[b]; });
    order.erase(std::remove_if(order.begin(), order.end(),
                               [&](size_t i) { return !(c.scores[i] > static_cast<float>(p.score_threshold)); }),
                order.end());
    std::vector<std::pair<size_t, float>> kept;
    if (p.soft_nms && order.size() > 1) {
        std::vector<std::vector<size_t>> groups;
        if (p.class_agnostic) {
            groups.push_back(order);
        } else {
            std::set<int64_t> classes;
            for (size_t i : order) classes.insert(c.labels[i]);
            for (int64_t k : classes) {
                groups.emplace_back();
                for (size_t i : order)
                    if (c.labels[i] == k) groups.back().push_back(i);
            }
        }
        for (const auto& g : groups) {
            auto k = soft_nms(c, g, p.soft_nms_sigma, p.score_threshold);
            kept.insert(kept.end(), k.begin(), k.end());
        }
        std::stable_sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return -a.second < -b.second; });
    } else {
        for (size_t i : order) kept.emplace_back(i, c.scores[i]);
    }
    std::vector<Object> out;
    for (size_t k = 0; k < kept.size() && static_cast<int64_t>(k) < p.top_k; ++k) {
        const size_t i = kept[k].first;
        out.push_back({c.boxes[i], kept[k].second, c.labels[i], p.name(c.labels[i])});
    }
    return out;
}

}  // namespace

DetrParams DetrParams::from_json(const json& post) {
    static const std::set<std::string> known{"type", "score_threshold", "top_k", "soft_nms", "soft_nms_sigma",
                                             "class_agnostic", "labels"};
    for (const auto& [k, v] : post.items())
        if (!known.count(k)) throw BundleError("unknown postprocess key '" + k + "' for object detection");
    const std::string type = get_string(post, "postprocess", "type", "detr");
    if (type != "detr") throw BundleError("postprocess.type must be \"detr\" for object detection, got " + repr(post["type"]));
    DetrParams p;
    p.score_threshold = get_number(post, "postprocess", "score_threshold", p.score_threshold);
    if (!(p.score_threshold >= 0 && p.score_threshold <= 1))
        throw BundleError("postprocess.score_threshold must be a number in [0, 1], got " + repr(post["score_threshold"]));
    p.top_k = get_int(post, "postprocess", "top_k", p.top_k);
    if (p.top_k < 1) throw BundleError("postprocess.top_k must be a positive integer, got " + repr(post["top_k"]));
    p.soft_nms = get_bool(post, "postprocess", "soft_nms", p.soft_nms);
    p.class_agnostic = get_bool(post, "postprocess", "class_agnostic", p.class_agnostic);
    p.soft_nms_sigma = get_number(post, "postprocess", "soft_nms_sigma", p.soft_nms_sigma);
    if (!(p.soft_nms_sigma > 0)) throw BundleError("postprocess.soft_nms_sigma must be a number > 0, got " + repr(post["soft_nms_sigma"]));
    auto it = post.find("labels");
    if (it != post.end() && !it->is_null()) {
        bool ok = it->is_array();
        for (size_t i = 0; ok && i < it->size(); ++i) ok = (*it)[i].is_string();
        if (!ok) throw BundleError("postprocess.labels must be a list of class names, got " + repr(*it));
        for (const json& l : *it) p.labels.push_back(l.get<std::string>());
    }
    return p;
}

std::string DetrParams::name(int64_t label) const {
    return label >= 0 && label < static_cast<int64_t>(labels.size()) ? labels[static_cast<size_t>(label)]
                                                                      : "class_" + std::to_string(label);
}

Detector::Detector(const Bundle& bundle, std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {
    if (bundle.task != "object-detection")
        throw BundleError("bundle '" + bundle.name + "' is for task '" + bundle.task + "'; Detector needs 'object-detection'");
    params_ = DetrParams::from_json(bundle.postprocess());
    const ModelSpec& spec = engine_->spec();
    if (spec.has_output("scores") && spec.has_output("labels") && spec.has_output("boxes")) raw_ = false;
    else if (!(spec.has_output("logits") && spec.has_output("pred_boxes")))
        throw BundleError("a DETR graph has outputs [logits, pred_boxes] or [scores, labels, boxes]");
    if (!raw_ && !spec.input(SIZES)) throw BundleError(std::string("a post-processed DETR graph needs input '") + SIZES + "'");
    has_mask_ = spec.input(MASK) != nullptr;
    input_ = get_string(bundle.preprocess(), "preprocess", "input", "");
    if (input_.empty()) input_ = spec.inputs[0].name;
    const TensorSpec* in = spec.input(input_);
    if (!in || in->shape.size() != 4) throw BundleError("preprocess.input '" + input_ + "' is not an [N, 3, H, W] input of the graph");
    pre_ = std::make_unique<Preprocessor>(bundle.preprocess(), std::nullopt);
    const Dim& b = in->shape[0];
    const Profile* prof = spec.profiles.empty() ? nullptr : &spec.profiles[0];
    if (b.value >= 0) max_batch = static_batch_ = static_cast<int>(b.value);
    else max_batch = prof && prof->count(b.name) ? static_cast<int>(prof->at(b.name)[2]) : 8;
}

std::vector<DetrResult> Detector::operator()(Session& session, const std::vector<cv::Mat>& images, Timing* timing) const {
    Stopwatch sw;
    std::vector<Plan> plans;
    for (const cv::Mat& im : images) plans.push_back(pre_->plan(im.rows, im.cols));
    // Groups: input order with a mask (padded batches); else by resized shape, in order of first appearance.
    std::vector<std::vector<size_t>> groups;
    if (has_mask_) {
        for (size_t i = 0; i < images.size(); ++i) {
            if (i % static_cast<size_t>(max_batch) == 0) groups.emplace_back();
            groups.back().push_back(i);
        }
    } else {
        std::vector<std::pair<std::pair<int, int>, std::vector<size_t>>> buckets;
        for (size_t i = 0; i < plans.size(); ++i) {
            auto key = std::make_pair(plans[i].h, plans[i].w);
            auto it = std::find_if(buckets.begin(), buckets.end(), [&](const auto& b) { return b.first == key; });
            if (it == buckets.end()) buckets.push_back({key, {i}});
            else it->second.push_back(i);
        }
        for (const auto& [key, all] : buckets)
            for (size_t k = 0; k < all.size(); k += static_cast<size_t>(max_batch))
                groups.emplace_back(all.begin() + k, all.begin() + std::min(all.size(), k + max_batch));
    }
    std::vector<DetrResult> results(images.size());
    double t_pre = sw.lap(), t_infer = 0, t_post = 0;
    for (const auto& idx : groups) {
        const size_t n = static_batch_ ? static_cast<size_t>(static_batch_) : idx.size();
        int h = 0, w = 0;
        for (size_t i : idx) { h = std::max(h, plans[i].h); w = std::max(w, plans[i].w); }
        const size_t per = static_cast<size_t>(3) * h * w;
        std::vector<float> batch(per * n, 0.f), mask, sizes(2 * n, 1.f);
        if (has_mask_) mask.assign(n * h * w, 0.f);
        for (size_t s = 0; s < idx.size(); ++s) {
            const Plan& pl = plans[idx[s]];
            pre_->write(images[idx[s]], pl, batch.data() + s * per, h, w);
            if (has_mask_)
                for (int y = 0; y < pl.h; ++y) std::fill_n(mask.data() + (s * h + y) * w, pl.w, 1.f);
            sizes[2 * s] = static_cast<float>(pl.src_h);
            sizes[2 * s + 1] = static_cast<float>(pl.src_w);
        }
        std::vector<Feed> feeds{{input_, {static_cast<int64_t>(n), 3, h, w}, batch.data()}};
        if (has_mask_) feeds.push_back({MASK, {static_cast<int64_t>(n), h, w}, mask.data()});
        if (!raw_) feeds.push_back({SIZES, {static_cast<int64_t>(n), 2}, sizes.data()});
        t_pre += sw.lap();
        auto out = session.infer(feeds);
        t_infer += sw.lap();
        for (size_t s = 0; s < idx.size(); ++s) {
            const Plan& pl = plans[idx[s]];
            Candidates c;
            if (raw_) {
                const Tensor& lg = out.at("logits");
                const Tensor& pb = out.at("pred_boxes");
                if (lg.shape.size() != 3 || pb.shape.size() != 3 || lg.shape[2] < 2 || pb.shape[1] != lg.shape[1] || pb.shape[2] != 4)
                    throw BackendError("expected logits [N, Q, C + 1] and pred_boxes [N, Q, 4] from the graph");
                const size_t q = static_cast<size_t>(lg.shape[1]), k = static_cast<size_t>(lg.shape[2]);
                c = decode_raw(lg.data() + s * q * k, pb.data() + s * q * 4, q, k);
            } else {
                const Tensor& sc = out.at("scores");
                const Tensor& lb = out.at("labels");
                const Tensor& bx = out.at("boxes");
                const size_t k = static_cast<size_t>(sc.shape.at(1));
                for (size_t j = 0; j < k; ++j) {
                    c.scores.push_back(sc.data()[s * k + j]);
                    c.labels.push_back(static_cast<int64_t>(lb.data()[s * k + j]));
                    const float* b = bx.data() + (s * k + j) * 4;
                    c.boxes.push_back({b[0], b[1], b[2], b[3]});
                }
            }
            DetrResult& r = results[idx[s]];
            r.height = pl.src_h; r.width = pl.src_w; r.input_height = pl.h; r.input_width = pl.w;
            r.objects = select(std::move(c), pl.src_h, pl.src_w, params_, raw_);
        }
        t_post += sw.lap();
    }
    if (timing) { timing->pre += t_pre; timing->infer += t_infer; timing->post += t_post; }
    return results;
}

}  // namespace vkt
