// Errors the library throws, and typed reads of manifest keys that name the key and the bad value.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace vkt {

using json = nlohmann::json;

// Bad input (an image, an option, a manifest value): the CLI prints "error: <what>" and exits 2.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct BundleError : Error { using Error::Error; };   // missing/tampered file, bad manifest
struct InputError : Error { using Error::Error; };    // an image or option
struct ShapeError : InputError { using InputError::InputError; };  // a tensor outside the graph's profile
struct BackendError : Error { using Error::Error; };  // the inference library refused or failed

// A JSON value as the manifest spells it, cut to 200 characters (for messages).
std::string repr(const json& v);

// manifest[where][key] typed: a missing key takes the default; a wrong type raises BundleError
// "<where>.<key> must be <what>, got <value>".
double get_number(const json& obj, const std::string& where, const std::string& key, double def);
int64_t get_int(const json& obj, const std::string& where, const std::string& key, int64_t def);
bool get_bool(const json& obj, const std::string& where, const std::string& key, bool def);
std::string get_string(const json& obj, const std::string& where, const std::string& key, const std::string& def);
// obj[key] must be an object (missing: empty object).
const json& get_object(const json& obj, const std::string& where, const std::string& key);

}  // namespace vkt
