// Image files -> BGR uint8 [H, W, 3], converted as vkt/runtime/image.py (read_image, to_bgr_uint8) does:
//   grayscale -> 3 channels; BGRA -> composited over white; 16-bit -> high byte (x >> 8);
//   float in [0, 1] -> x * 255 rounded; JPEG -> decoded in colour so its EXIF orientation applies.
#pragma once

#include <string>

#include <opencv2/core.hpp>

namespace vkt {

// InputError naming the file for a missing, empty, corrupt or unsupported one.
cv::Mat read_image(const std::string& path);
// An in-memory image (any of the layouts and depths above) -> contiguous BGR uint8; InputError otherwise.
cv::Mat to_bgr_uint8(const cv::Mat& img, const std::string& where);

}  // namespace vkt
