#include "error.hpp"

#include <cmath>

namespace vkt {

std::string repr(const json& v) {
    std::string s = v.dump();
    return s.size() > 200 ? s.substr(0, 197) + "..." : s;
}

namespace {
[[noreturn]] void wrong(const std::string& where, const std::string& key, const std::string& what, const json& v) {
    throw BundleError(where + "." + key + " must be " + what + ", got " + repr(v));
}
}  // namespace

double get_number(const json& obj, const std::string& where, const std::string& key, double def) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_number() || !std::isfinite(it->get<double>())) wrong(where, key, "a number", *it);
    return it->get<double>();
}

int64_t get_int(const json& obj, const std::string& where, const std::string& key, int64_t def) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_number_integer()) wrong(where, key, "an integer", *it);
    return it->get<int64_t>();
}

bool get_bool(const json& obj, const std::string& where, const std::string& key, bool def) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_boolean()) wrong(where, key, "true or false", *it);
    return it->get<bool>();
}

std::string get_string(const json& obj, const std::string& where, const std::string& key, const std::string& def) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return def;
    if (!it->is_string()) wrong(where, key, "a string", *it);
    return it->get<std::string>();
}

const json& get_object(const json& obj, const std::string& where, const std::string& key) {
    static const json empty = json::object();
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return empty;
    if (!it->is_object()) wrong(where, key, "an object", *it);
    return *it;
}

}  // namespace vkt
