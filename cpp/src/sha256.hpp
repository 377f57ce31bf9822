// SHA-256 (FIPS 180-4) of a file, as lowercase hex: what a bundle's manifest records for each file.
#pragma once

#include <string>

namespace vkt {

// Hex digest of the file at `path`; BundleError if it cannot be read.
std::string sha256_file(const std::string& path);
// Hex digest of a byte string (tested against the FIPS examples).
std::string sha256_bytes(const std::string& data);

}  // namespace vkt
