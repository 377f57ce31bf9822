#include "textdet.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include <opencv2/imgproc.hpp>
#include <polyclipping/clipper.hpp>

namespace vkt {
namespace {

// Min-area rectangle of `pts` -> corners top-left, top-right, bottom-right, bottom-left (textdet._min_box), and
// its short side.
template <class P>
std::vector<cv::Point2f> min_box(const std::vector<P>& pts, float& short_side) {
    cv::RotatedRect rect = cv::minAreaRect(pts);
    cv::Point2f c[4];
    rect.points(c);  // cv::boxPoints
    std::vector<cv::Point2f> v(c, c + 4);
    std::stable_sort(v.begin(), v.end(), [](const cv::Point2f& a, const cv::Point2f& b) { return a.x < b.x; });
    cv::Point2f l0 = v[0], l1 = v[1], r0 = v[2], r1 = v[3];
    if (!(v[1].y > v[0].y)) std::swap(l0, l1);
    if (!(v[3].y > v[2].y)) std::swap(r0, r1);
    short_side = std::min(rect.size.width, rect.size.height);
    return {l0, r0, r1, l1};
}

// Mean of prob over the polygon's pixels, on its bounding-box crop (textdet._mean_in_polygon).
template <class P>
double mean_in_polygon(const cv::Mat& prob, const std::vector<P>& poly) {
    const int h = prob.rows, w = prob.cols;
    float x0 = poly[0].x, x1 = poly[0].x, y0 = poly[0].y, y1 = poly[0].y;
    for (const auto& p : poly) {
        x0 = std::min<float>(x0, p.x); x1 = std::max<float>(x1, p.x);
        y0 = std::min<float>(y0, p.y); y1 = std::max<float>(y1, p.y);
    }
    auto clampi = [](int v, int hi) { return std::min(std::max(v, 0), hi); };
    const int xmin = clampi(static_cast<int>(std::floor(x0)), w - 1), xmax = clampi(static_cast<int>(std::ceil(x1)), w - 1);
    const int ymin = clampi(static_cast<int>(std::floor(y0)), h - 1), ymax = clampi(static_cast<int>(std::ceil(y1)), h - 1);
    cv::Mat mask = cv::Mat::zeros(ymax - ymin + 1, xmax - xmin + 1, CV_8U);
    std::vector<cv::Point> shifted;
    shifted.reserve(poly.size());
    for (const auto& p : poly)  // in the polygon's own type, then truncated (numpy astype(int32))
        shifted.emplace_back(static_cast<int>(p.x - static_cast<decltype(p.x)>(xmin)),
                             static_cast<int>(p.y - static_cast<decltype(p.y)>(ymin)));
    std::vector<std::vector<cv::Point>> polys{shifted};
    cv::fillPoly(mask, polys, cv::Scalar(1));
    return cv::mean(prob(cv::Range(ymin, ymax + 1), cv::Range(xmin, xmax + 1)), mask)[0];
}

// Offset the polygon outward by area * ratio / perimeter with Clipper (round joins); empty if it vanishes or
// splits (textdet._unclip).
std::vector<cv::Point2f> unclip(const std::vector<cv::Point2f>& poly, double ratio) {
    const size_t n = poly.size();
    double sx = 0, sy = 0;
    float perimeter = 0;  // float32 as numpy's norm(...).sum() on a float32 array
    for (size_t i = 0; i < n; ++i) {
        const cv::Point2f& a = poly[i];
        const cv::Point2f& b = poly[(i + 1) % n];
        sx += static_cast<double>(a.x) * b.y;
        sy += static_cast<double>(a.y) * b.x;
        const float dx = a.x - b.x, dy = a.y - b.y;
        perimeter += std::sqrt(dx * dx + dy * dy);
    }
    const double area = 0.5 * std::abs(sx - sy);
    if (perimeter == 0) return {};
    ClipperLib::Path path;
    for (const auto& p : poly) path.emplace_back(static_cast<ClipperLib::cInt>(p.x), static_cast<ClipperLib::cInt>(p.y));
    ClipperLib::ClipperOffset off;  // miter limit 2, arc tolerance 0.25: pyclipper's defaults
    off.AddPath(path, ClipperLib::jtRound, ClipperLib::etClosedPolygon);
    ClipperLib::Paths out;
    off.Execute(out, area * ratio / static_cast<double>(perimeter));
    if (out.size() != 1) return {};
    std::vector<cv::Point2f> grown;
    for (const auto& q : out[0]) grown.emplace_back(static_cast<float>(q.X), static_cast<float>(q.Y));
    return grown;
}

float norm2(const cv::Point2f& a, const cv::Point2f& b) {
    const float dx = a.x - b.x, dy = a.y - b.y;
    return std::sqrt(dx * dx + dy * dy);
}

}  // namespace

DBParams DBParams::from_json(const json& post) {
    static const std::set<std::string> known{"type", "thresh", "box_thresh", "unclip_ratio", "max_candidates", "min_size",
                                             "min_side_px", "use_dilation", "score_mode", "box_type", "channel"};
    for (const auto& [k, v] : post.items())
        if (!known.count(k)) throw BundleError("unknown postprocess key '" + k + "' for text detection");
    const std::string type = get_string(post, "postprocess", "type", "db");
    if (type != "db") throw BundleError("postprocess.type must be \"db\" for text detection, got " + repr(post["type"]));
    DBParams p;
    p.thresh = get_number(post, "postprocess", "thresh", p.thresh);
    if (!(p.thresh > 0 && p.thresh < 1)) throw BundleError("postprocess.thresh must be a number in (0, 1), got " + repr(post["thresh"]));
    p.box_thresh = get_number(post, "postprocess", "box_thresh", p.box_thresh);
    if (!(p.box_thresh >= 0 && p.box_thresh <= 1))
        throw BundleError("postprocess.box_thresh must be a number in [0, 1], got " + repr(post["box_thresh"]));
    p.unclip_ratio = get_number(post, "postprocess", "unclip_ratio", p.unclip_ratio);
    if (!(p.unclip_ratio > 0)) throw BundleError("postprocess.unclip_ratio must be a number > 0, got " + repr(post["unclip_ratio"]));
    p.max_candidates = get_int(post, "postprocess", "max_candidates", p.max_candidates);
    if (p.max_candidates < 1)
        throw BundleError("postprocess.max_candidates must be a positive integer, got " + repr(post["max_candidates"]));
    p.channel = get_int(post, "postprocess", "channel", p.channel);
    if (p.channel < 0) throw BundleError("postprocess.channel must be an integer >= 0, got " + repr(post["channel"]));
    p.min_size = get_number(post, "postprocess", "min_size", p.min_size);
    p.min_side_px = get_number(post, "postprocess", "min_side_px", p.min_side_px);
    for (const char* k : {"min_size", "min_side_px"})
        if ((k == std::string("min_size") ? p.min_size : p.min_side_px) < 0)
            throw BundleError(std::string("postprocess.") + k + " must be a number >= 0, got " + repr(post[k]));
    p.use_dilation = get_bool(post, "postprocess", "use_dilation", p.use_dilation);
    p.score_mode = get_string(post, "postprocess", "score_mode", p.score_mode);
    if (p.score_mode != "fast" && p.score_mode != "slow")
        throw BundleError("postprocess.score_mode must be \"fast\" or \"slow\", got " + repr(post["score_mode"]));
    p.box_type = get_string(post, "postprocess", "box_type", p.box_type);
    if (p.box_type != "quad" && p.box_type != "poly")
        throw BundleError("postprocess.box_type must be \"quad\" or \"poly\", got " + repr(post["box_type"]));
    return p;
}

std::vector<TextBox> db_postprocess(const cv::Mat& prob, int src_h, int src_w, const DBParams& p) {
    CV_Assert(prob.type() == CV_32F && prob.rows > 0 && prob.cols > 0);
    const int map_h = prob.rows, map_w = prob.cols;
    cv::Mat bitmap(map_h, map_w, CV_8U);
    const float thresh = static_cast<float>(p.thresh);  // numpy compares a float32 map with a float32 threshold
    for (int y = 0; y < map_h; ++y) {
        const float* s = prob.ptr<float>(y);
        uint8_t* d = bitmap.ptr<uint8_t>(y);
        for (int x = 0; x < map_w; ++x) d[x] = s[x] > thresh ? 1 : 0;
    }
    if (p.use_dilation) cv::dilate(bitmap, bitmap, cv::Mat::ones(2, 2, CV_8U));
    std::vector<std::vector<cv::Point>> contours;
    cv::findContours(bitmap, contours, cv::RETR_LIST, cv::CHAIN_APPROX_SIMPLE);
    const double sx = static_cast<double>(src_w) / map_w, sy = static_cast<double>(src_h) / map_h;
    std::vector<TextBox> out;
    const size_t n = std::min(contours.size(), static_cast<size_t>(p.max_candidates));
    for (size_t k = 0; k < n; ++k) {
        const auto& contour = contours[k];
        std::vector<cv::Point2f> region;
        float short_side = 0;
        if (p.box_type == "quad") {
            region = min_box(contour, short_side);
            if (short_side < p.min_size) continue;
        } else {
            std::vector<cv::Point> approx;
            cv::approxPolyDP(contour, approx, 0.002 * cv::arcLength(contour, true), true);
            if (approx.size() < 4) continue;
            for (const auto& q : approx) region.emplace_back(static_cast<float>(q.x), static_cast<float>(q.y));
        }
        const double score = p.score_mode == "fast" ? mean_in_polygon(prob, region) : mean_in_polygon(prob, contour);
        if (score < p.box_thresh) continue;
        std::vector<cv::Point2f> grown = unclip(region, p.unclip_ratio);
        if (grown.empty()) continue;
        std::vector<cv::Point2f> box = min_box(grown, short_side);
        if (short_side < p.min_size + 2) continue;
        std::vector<cv::Point2f> poly = p.box_type == "quad" ? box : grown;
        for (auto& q : poly) {  // to source pixels in float64, clipped, then float32
            q.x = static_cast<float>(std::min(std::max(static_cast<double>(q.x) * sx, 0.0), static_cast<double>(src_w - 1)));
            q.y = static_cast<float>(std::min(std::max(static_cast<double>(q.y) * sy, 0.0), static_cast<double>(src_h - 1)));
        }
        if (p.min_side_px > 0) {
            float side;
            if (p.box_type == "quad") {
                side = std::min(norm2(poly[0], poly[1]), norm2(poly[0], poly[3]));
            } else {
                cv::RotatedRect r = cv::minAreaRect(poly);
                side = std::min(r.size.width, r.size.height);
            }
            if (side < p.min_side_px) continue;
        }
        out.push_back({std::move(poly), static_cast<float>(score)});
    }
    return out;
}

TextDetector::TextDetector(const Bundle& bundle, std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {
    if (bundle.task != "text-detection")
        throw BundleError("bundle '" + bundle.name + "' is for task '" + bundle.task + "'; TextDetector needs 'text-detection'");
    params_ = DBParams::from_json(bundle.postprocess());
    const ModelSpec& spec = engine_->spec();
    input_ = get_string(bundle.preprocess(), "preprocess", "input", "");
    if (input_.empty()) input_ = spec.inputs[0].name;
    const TensorSpec* in = spec.input(input_);
    if (!in || in->shape.size() != 4) throw BundleError("preprocess.input '" + input_ + "' is not an [N, 3, H, W] input of the graph");
    const TensorSpec& o = spec.outputs[0];
    output_ = o.name;
    if (o.shape.size() != 4)
        throw BundleError("output '" + output_ + "' has rank " + std::to_string(o.shape.size()) +
                          "; a text detector's output is a probability map [N, 1, H, W]");
    if (o.shape[1].value >= 0 && params_.channel >= o.shape[1].value)
        throw BundleError("postprocess.channel " + std::to_string(params_.channel) + " is out of range: output '" + output_ +
                          "' has " + std::to_string(o.shape[1].value) + " channel(s)");
    // The first profile's max height/width caps the resize; its max batch caps a call (pipeline.batch_cap).
    std::optional<int> max_side;
    const Profile* prof = spec.profiles.empty() ? nullptr : &spec.profiles[0];
    for (size_t d = 2; prof && d < 4; ++d) {
        auto it = prof->find(in->shape[d].name);
        if (in->shape[d].value < 0 && it != prof->end())
            max_side = max_side ? std::min<int>(*max_side, static_cast<int>(it->second[2])) : static_cast<int>(it->second[2]);
    }
    pre_ = std::make_unique<Preprocessor>(bundle.preprocess(), max_side);
    if (pre_->mode != "limit_side" && pre_->mode != "none")
        throw BundleError("text detection needs preprocess.resize.mode \"limit_side\" or \"none\", got \"" + pre_->mode + "\"");
    const Dim& b = in->shape[0];
    if (b.value >= 0) max_batch = static_cast<int>(b.value);
    else if (prof && prof->count(b.name)) max_batch = static_cast<int>(prof->at(b.name)[2]);
}

std::vector<TextResult> TextDetector::operator()(Session& session, const std::vector<cv::Mat>& images, Timing* timing) const {
    Stopwatch sw;
    std::vector<Plan> plans;
    for (const cv::Mat& im : images) plans.push_back(pre_->plan(im.rows, im.cols));
    // Bucket by resized shape, in order of first appearance (pipeline._bucket), max_batch per call.
    std::vector<std::pair<std::pair<int, int>, std::vector<size_t>>> buckets;
    for (size_t i = 0; i < plans.size(); ++i) {
        auto key = std::make_pair(plans[i].h, plans[i].w);
        auto it = std::find_if(buckets.begin(), buckets.end(), [&](const auto& b) { return b.first == key; });
        if (it == buckets.end()) buckets.push_back({key, {i}});
        else it->second.push_back(i);
    }
    std::vector<TextResult> results(images.size());
    double t_pre = sw.lap(), t_infer = 0, t_post = 0;
    std::vector<float> batch;
    for (const auto& [shape, all] : buckets) {
        for (size_t k = 0; k < all.size(); k += static_cast<size_t>(max_batch)) {
            std::vector<size_t> idx(all.begin() + k, all.begin() + std::min(all.size(), k + max_batch));
            const int h = shape.first, w = shape.second;
            const size_t per = static_cast<size_t>(3) * h * w;
            batch.resize(per * idx.size());
            for (size_t s = 0; s < idx.size(); ++s) pre_->write(images[idx[s]], plans[idx[s]], batch.data() + s * per, h, w);
            t_pre += sw.lap();
            auto out = session.infer({{input_, {static_cast<int64_t>(idx.size()), 3, h, w}, batch.data()}});
            t_infer += sw.lap();
            const Tensor& prob = out.at(output_);
            if (prob.shape.size() != 4 || prob.shape[0] != static_cast<int64_t>(idx.size()) || prob.shape[1] <= params_.channel ||
                prob.shape[2] < h || prob.shape[3] < w)
                throw BackendError("output '" + output_ + "' came back with an unexpected shape");
            const int mh = static_cast<int>(prob.shape[2]), mw = static_cast<int>(prob.shape[3]);
            for (size_t s = 0; s < idx.size(); ++s) {
                const float* plane = prob.data() + (s * prob.shape[1] + params_.channel) * static_cast<size_t>(mh) * mw;
                cv::Mat map(mh, mw, CV_32F, const_cast<float*>(plane));
                const Plan& pl = plans[idx[s]];
                TextResult& r = results[idx[s]];
                r.height = pl.src_h; r.width = pl.src_w; r.input_height = pl.h; r.input_width = pl.w;
                r.boxes = db_postprocess(map(cv::Rect(0, 0, pl.w, pl.h)), pl.src_h, pl.src_w, params_);
            }
            t_post += sw.lap();
        }
    }
    if (timing) { timing->pre += t_pre; timing->infer += t_infer; timing->post += t_post; }
    return results;
}

}  // namespace vkt
