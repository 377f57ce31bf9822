// Binary PPM (P6) / PGM (P5) reader, 8-bit: the least dependency that reads a real image.
// Convert anything else first, e.g. `python -c "import cv2; cv2.imwrite('x.ppm', cv2.imread('x.png'))"`
// or ImageMagick's `convert x.png x.ppm`.
#pragma once

#include <cctype>
#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace vkt {

struct Image {
    int height = 0, width = 0;
    std::vector<uint8_t> rgb;  // [height, width, 3], R G B (a PGM is replicated to three channels)
};

namespace detail {
// Next header token: skips whitespace and '#' comments (netpbm allows them between fields).
inline std::string token(std::istream& in) {
    std::string t;
    int c;
    while ((c = in.get()) != EOF) {
        if (c == '#') {
            while ((c = in.get()) != EOF && c != '\n') {}
        } else if (!std::isspace(c)) {
            t.push_back(static_cast<char>(c));
            break;
        }
    }
    while ((c = in.peek()) != EOF && !std::isspace(c) && c != '#') t.push_back(static_cast<char>(in.get()));
    return t;
}

inline int positive(const std::string& t, const std::string& what, const std::string& path) {
    try {
        size_t used = 0;
        int v = std::stoi(t, &used);
        if (used == t.size() && v > 0) return v;
    } catch (const std::exception&) {}
    throw std::runtime_error(path + ": " + what + " must be a positive integer, got '" + t + "'");
}
}  // namespace detail

inline Image read_pnm(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open image '" + path + "'");
    std::string magic = detail::token(in);
    if (magic != "P6" && magic != "P5")
        throw std::runtime_error(path + ": expected a binary PPM (P6) or PGM (P5) file, got magic '" + magic + "'");
    Image img;
    img.width = detail::positive(detail::token(in), "width", path);
    img.height = detail::positive(detail::token(in), "height", path);
    int maxval = detail::positive(detail::token(in), "maxval", path);
    if (maxval != 255) throw std::runtime_error(path + ": only 8-bit images (maxval 255) are supported, got " + std::to_string(maxval));
    in.get();  // the single whitespace byte before the raster
    const size_t n = static_cast<size_t>(img.width) * img.height, channels = magic == "P6" ? 3 : 1;
    std::vector<uint8_t> raster(n * channels);
    if (!in.read(reinterpret_cast<char*>(raster.data()), static_cast<std::streamsize>(raster.size())))
        throw std::runtime_error(path + ": truncated raster (expected " + std::to_string(raster.size()) + " bytes)");
    if (channels == 3) {
        img.rgb = std::move(raster);
    } else {
        img.rgb.resize(n * 3);
        for (size_t i = 0; i < n; ++i) img.rgb[3 * i] = img.rgb[3 * i + 1] = img.rgb[3 * i + 2] = raster[i];
    }
    return img;
}

}  // namespace vkt
