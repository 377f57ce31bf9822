#include "image.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "error.hpp"

namespace vkt {
namespace {

// A PNG's iCCP chunks dropped (as image.py's without_iccp): OpenCV ignores colour profiles anyway, but libpng
// prints a warning for some (scikit-image's page.png). Chunks before the first IDAT are walked; the rest is kept.
// The bytes are copied only when there is an iCCP chunk to drop.
void drop_iccp(std::vector<unsigned char>& raw) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (raw.size() < 8 || !std::equal(sig, sig + 8, raw.begin())) return;
    auto type_is = [&](size_t i, const char* t) { return std::equal(t, t + 4, raw.begin() + i + 4); };
    bool found = false;
    for (size_t i = 8; i + 8 <= raw.size() && !type_is(i, "IDAT");) {
        const size_t len = size_t(raw[i]) << 24 | size_t(raw[i + 1]) << 16 | size_t(raw[i + 2]) << 8 | raw[i + 3];
        if (type_is(i, "iCCP")) { found = true; break; }
        i = std::min(raw.size(), i + 12 + len);
    }
    if (!found) return;
    std::vector<unsigned char> out(raw.begin(), raw.begin() + 8);
    out.reserve(raw.size());
    size_t i = 8;
    while (i + 8 <= raw.size() && !type_is(i, "IDAT")) {
        const size_t len = size_t(raw[i]) << 24 | size_t(raw[i + 1]) << 16 | size_t(raw[i + 2]) << 8 | raw[i + 3];
        const size_t end = std::min(raw.size(), i + 12 + len);
        if (!type_is(i, "iCCP")) out.insert(out.end(), raw.begin() + i, raw.begin() + end);
        i = end;
    }
    out.insert(out.end(), raw.begin() + std::min(i, raw.size()), raw.end());
    raw.swap(out);
}

// The whole file in one read (its size first); istreambuf_iterator went byte by byte (~1 ms for 800 kB).
bool read_file(const std::string& path, std::vector<unsigned char>& data) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec)) return false;  // a folder's size is no byte count
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return false;
    const std::streamoff size = in.tellg();
    if (size < 0) return false;
    data.resize(static_cast<size_t>(size));
    in.seekg(0);
    return size == 0 || static_cast<bool>(in.read(reinterpret_cast<char*>(data.data()), size));
}

}  // namespace

cv::Mat read_image(const std::string& path) {
    std::vector<unsigned char> data;
    if (!read_file(path, data)) throw InputError("image not found or unreadable: '" + path + "'");
    if (data.empty()) throw InputError("image file '" + path + "' is empty (0 bytes)");
    const bool jpeg = data.size() >= 2 && data[0] == 0xff && data[1] == 0xd8;
    const size_t n = data.size();
    cv::Mat img;
    try {
        drop_iccp(data);
        img = cv::imdecode(data, jpeg ? cv::IMREAD_COLOR : cv::IMREAD_UNCHANGED);
    } catch (const cv::Exception& e) {
        throw InputError("cannot decode image '" + path + "': " + e.msg.substr(0, 200));
    }
    if (img.empty())
        throw InputError("cannot decode image '" + path + "' (" + std::to_string(n) +
                         " bytes): corrupt, truncated or not an image");
    return to_bgr_uint8(img, "'" + path + "'");
}

cv::Mat to_bgr_uint8(const cv::Mat& src, const std::string& where) {
    const int ch = src.channels();
    if (src.dims != 2 || (ch != 1 && ch != 3 && ch != 4))
        throw InputError(where + ": expected an image with 1, 3 or 4 channels, got " + std::to_string(ch));
    if (src.rows < 1 || src.cols < 1) throw InputError(where + ": image has zero size");
    cv::Mat img;
    switch (src.depth()) {
        case CV_8U: img = src; break;
        case CV_16U:  // the high byte, x >> 8 (exact: 65535 -> 255), as image.py
            img.create(src.size(), CV_MAKETYPE(CV_8U, ch));
            for (int y = 0; y < src.rows; ++y) {
                const uint16_t* s = src.ptr<uint16_t>(y);
                uint8_t* d = img.ptr<uint8_t>(y);
                for (int x = 0; x < src.cols * ch; ++x) d[x] = static_cast<uint8_t>(s[x] >> 8);
            }
            break;
        case CV_32F: case CV_64F: {
            cv::Mat f;
            src.convertTo(f, CV_64F);
            img.create(src.size(), CV_MAKETYPE(CV_8U, ch));
            for (int y = 0; y < f.rows; ++y) {
                const double* s = f.ptr<double>(y);
                uint8_t* d = img.ptr<uint8_t>(y);
                for (int x = 0; x < f.cols * ch; ++x) {
                    if (!std::isfinite(s[x])) throw InputError(where + ": float image holds NaN or infinite values");
                    d[x] = static_cast<uint8_t>(std::nearbyint(std::min(std::max(s[x], 0.0), 1.0) * 255.0));
                }
            }
            break;
        }
        default:
            throw InputError(where + ": expected 8-bit, 16-bit or float pixels, got OpenCV depth " + std::to_string(src.depth()));
    }
    cv::Mat out;
    if (ch == 1) {
        cv::cvtColor(img, out, cv::COLOR_GRAY2BGR);
    } else if (ch == 4) {
        // Composite over white, in float32 as numpy: c * a + 255 * (1 - a), a = alpha * (1 / 255), rounded half to even.
        out.create(img.size(), CV_8UC3);
        const float inv = 1.0f / 255.0f;
        for (int y = 0; y < img.rows; ++y) {
            const uint8_t* s = img.ptr<uint8_t>(y);
            uint8_t* d = out.ptr<uint8_t>(y);
            for (int x = 0; x < img.cols; ++x) {
                const float a = static_cast<float>(s[4 * x + 3]) * inv;
                const float white = 255.0f * (1.0f - a);
                for (int c = 0; c < 3; ++c) {
                    const float v = static_cast<float>(s[4 * x + c]) * a + white;
                    d[3 * x + c] = static_cast<uint8_t>(std::nearbyint(v));
                }
            }
        }
    } else {
        out = img.isContinuous() ? img : img.clone();
    }
    return out;
}

}  // namespace vkt
