#include "bundle.hpp"

#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include "sha256.hpp"

namespace vkt {
namespace {

const char* MANIFEST = "manifest.json";

bool is_dir(const std::string& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p, int64_t* size = nullptr) {
    struct stat st{};
    if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
    if (size) *size = static_cast<int64_t>(st.st_size);
    return true;
}

std::string role_of(const std::string& precision) {
    if (precision == "fp32") return "fp32 onnx";
    if (precision == "fp16") return "fp16 onnx";
    if (precision == "int8") return "int8 qdq onnx";
    throw InputError("unknown precision '" + precision + "'; expected fp32, fp16 or int8");
}

void check_rel(const std::string& p, const std::string& where) {
    bool bad = p.empty() || p[0] == '/' || p[0] == '~' || p.find('\\') != std::string::npos;
    std::stringstream ss(p);
    for (std::string part; std::getline(ss, part, '/');) bad = bad || part == "..";
    if (bad) throw BundleError(where + ": file path must be relative and inside the bundle, got '" + p + "'");
}

TensorSpec tensor_spec(const json& t, const std::string& where) {
    if (!t.is_object()) throw BundleError(where + " must be an object, got " + repr(t));
    TensorSpec s;
    s.name = get_string(t, where, "name", "");
    s.dtype = get_string(t, where, "dtype", "float32");
    if (s.name.empty()) throw BundleError(where + ".name must be a non-empty string, got " + repr(t.value("name", json())));
    auto shape = t.find("shape");
    if (shape == t.end() || !shape->is_array())
        throw BundleError(where + ".shape must be a list, got " + repr(shape == t.end() ? json() : *shape));
    for (const json& d : *shape) {
        Dim dim;
        if (d.is_number_integer() && d.get<int64_t>() >= 0) dim.value = d.get<int64_t>();
        else if (d.is_string()) dim.name = d.get<std::string>();
        else throw BundleError(where + ".shape entries must be integers >= 0 or axis names, got " + repr(d));
        s.shape.push_back(dim);
    }
    return s;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

}  // namespace

const TensorSpec* ModelSpec::input(const std::string& name) const {
    for (const auto& t : inputs)
        if (t.name == name) return &t;
    return nullptr;
}

bool ModelSpec::has_output(const std::string& name) const {
    for (const auto& t : outputs)
        if (t.name == name) return true;
    return false;
}

std::map<std::string, std::pair<int64_t, int64_t>> ModelSpec::bounds() const {
    std::map<std::string, std::pair<int64_t, int64_t>> out;
    for (const auto& p : profiles)
        for (const auto& [axis, r] : p) {
            auto it = out.find(axis);
            if (it == out.end()) out[axis] = {r[0], r[2]};
            else it->second = {std::min(it->second.first, r[0]), std::max(it->second.second, r[2])};
        }
    return out;
}

void ModelSpec::check_input(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorSpec* t = input(name);
    if (!t) throw ShapeError("the graph has no input '" + name + "'");
    const std::string what = "input '" + name + "' of shape " + shape_str(shape);
    if (shape.size() != t->shape.size())
        throw ShapeError(what + " has rank " + std::to_string(shape.size()) + "; the graph expects rank " +
                         std::to_string(t->shape.size()));
    const auto b = bounds();
    for (size_t i = 0; i < shape.size(); ++i) {
        const Dim& d = t->shape[i];
        if (d.value >= 0 && shape[i] != d.value)
            throw ShapeError(what + ": dimension " + std::to_string(i) + " must be " + std::to_string(d.value));
        auto it = d.value < 0 ? b.find(d.name) : b.end();
        if (it != b.end() && (shape[i] < it->second.first || shape[i] > it->second.second))
            throw ShapeError(what + " is outside the model's shape profile: " + d.name + " " + std::to_string(shape[i]) +
                             " is not in [" + std::to_string(it->second.first) + ", " +
                             std::to_string(it->second.second) + "]");
    }
}

Bundle Bundle::load(const std::string& path) {
    std::string root = path;
    while (root.size() > 1 && root.back() == '/') root.pop_back();
    if (is_file(root) && root.size() >= 13 && root.compare(root.size() - 13, 13, MANIFEST) == 0)
        root = root.size() == 13 ? "." : root.substr(0, root.size() - 14);
    if (!is_dir(root)) throw BundleError("bundle not found: '" + path + "' is not a folder");
    const std::string mpath = root + "/" + MANIFEST;
    std::ifstream in(mpath, std::ios::binary);
    if (!in) throw BundleError("'" + root + "' is not a vkt bundle: it has no " + MANIFEST);
    Bundle b;
    b.root = root;
    try {
        in >> b.manifest;
    } catch (const json::exception& e) {
        throw BundleError("'" + mpath + "' is not valid JSON (" + e.what() + ")");
    }
    const json& m = b.manifest;
    if (!m.is_object() || m.value("schema", json()) != "vkt.bundle")
        throw BundleError("'" + mpath + "': expected schema \"vkt.bundle\", got " +
                          repr(m.is_object() ? m.value("schema", json()) : m));
    const json ver = m.value("schema_version", json());
    if (!ver.is_number_integer() || ver.get<int64_t>() < 1)
        throw BundleError("'" + mpath + "': schema_version must be a positive integer, got " + repr(ver));
    if (ver.get<int64_t>() > SCHEMA_VERSION)
        throw BundleError("'" + mpath + "' has schema_version " + repr(ver) + ", newer than this reader understands (" +
                          std::to_string(SCHEMA_VERSION) + ")");
    for (const char* key : {"files", "components"}) {
        const json v = m.value(key, json());
        if (!(key == std::string("files") ? v.is_array() : v.is_object()))
            throw BundleError("'" + mpath + "': key '" + key + "' must be a " +
                              (key == std::string("files") ? "list" : "object") + ", got " + repr(v));
    }
    b.family = get_string(m, "manifest", "family", "");
    b.task = get_string(m, "manifest", "task", "");
    b.name = get_string(m, "manifest", "name", root);
    for (const json& e : m["files"]) {
        if (!e.is_object()) throw BundleError("'" + mpath + "': malformed file entry " + repr(e));
        FileEntry f;
        f.path = get_string(e, "files[]", "path", "");
        f.role = get_string(e, "files[]", "role", "");
        f.component = get_string(e, "files[]", "component", "");
        f.sha256 = get_string(e, "files[]", "sha256", "");
        f.bytes = get_int(e, "files[]", "bytes", -1);
        f.meta = get_object(e, "files[]", "meta");
        if (f.path.empty() || f.role.empty() || f.sha256.size() != 64 || f.bytes < 0)
            throw BundleError("'" + mpath + "': malformed file entry " + repr(e));
        check_rel(f.path, mpath);
        if (!m["components"].contains(f.component))
            throw BundleError("'" + mpath + "': file '" + f.path + "' belongs to unknown component '" + f.component + "'");
        b.files.push_back(std::move(f));
    }
    return b;
}

const json& Bundle::preprocess() const { return get_object(manifest, "manifest", "preprocess"); }
const json& Bundle::postprocess() const { return get_object(manifest, "manifest", "postprocess"); }

ModelSpec Bundle::spec(const std::string& component) const {
    const json& comps = manifest["components"];
    if (!comps.contains(component)) throw BundleError("bundle '" + name + "' has no component '" + component + "'");
    const std::string where = "components." + component + ".spec";
    const json& s = get_object(comps[component], "components." + component, "spec");
    ModelSpec out;
    for (const char* key : {"inputs", "outputs"}) {
        const json v = s.value(key, json());
        if (!v.is_array() || v.empty()) throw BundleError(where + "." + key + " must be a non-empty list, got " + repr(v));
        for (size_t i = 0; i < v.size(); ++i)
            (key == std::string("inputs") ? out.inputs : out.outputs)
                .push_back(tensor_spec(v[i], where + "." + key + "[" + std::to_string(i) + "]"));
    }
    const json profiles = s.value("profiles", json::array());
    if (!profiles.is_array()) throw BundleError(where + ".profiles must be a list, got " + repr(profiles));
    for (const json& p : profiles) {
        if (!p.is_object()) throw BundleError(where + ".profiles entries must be objects, got " + repr(p));
        Profile prof;
        for (const auto& [axis, r] : p.items()) {
            bool ok = r.is_array() && r.size() == 3;
            for (size_t i = 0; ok && i < 3; ++i) ok = r[i].is_number_integer() && r[i].get<int64_t>() >= 1;
            if (ok) ok = r[0].get<int64_t>() <= r[1].get<int64_t>() && r[1].get<int64_t>() <= r[2].get<int64_t>();
            if (!ok) throw BundleError(where + ".profiles." + axis + " must be [min, opt, max] positive integers, got " + repr(r));
            prof[axis] = {r[0].get<int64_t>(), r[1].get<int64_t>(), r[2].get<int64_t>()};
        }
        out.profiles.push_back(std::move(prof));
    }
    return out;
}

const FileEntry& Bundle::graph(const std::string& precision, const std::string& backend, const std::string& component) const {
    std::vector<const FileEntry*> found;
    if (backend == "tensorrt") {
        role_of(precision);  // checks the name
        for (const auto& e : files)
            if (e.component == component && e.role == "plan" && e.meta.value("precision", json("fp32")) == precision)
                found.push_back(&e);
        if (found.empty())
            throw BundleError("bundle '" + name + "' has no " + precision + " plan for '" + component +
                              "'; build one with 'vkt build'");
        return *found.back();
    }
    if (backend != "openvino") throw InputError("unknown backend '" + backend + "'; expected openvino or tensorrt");
    const std::string role = role_of(precision);
    std::vector<const FileEntry*> placed, unplaced;
    std::string others;
    for (const auto& e : files) {
        if (e.component != component || e.role != role) continue;
        auto p = e.meta.find("placement");
        if (p == e.meta.end()) unplaced.push_back(&e);
        else if (*p == "openvino") placed.push_back(&e);
        else others += (others.empty() ? "" : ", ") + (p->is_string() ? p->get<std::string>() : repr(*p));
    }
    if (!placed.empty()) return *placed.back();
    if (!unplaced.empty()) return *unplaced.back();
    if (!others.empty())
        throw BundleError("bundle '" + name + "' has no '" + role + "' graph for OpenVINO (its " + role +
                          " graphs are placed for " + others + "): run in fp32, or add an OpenVINO placement");
    std::string have;
    for (const auto& e : files)
        if (e.component == component) have += (have.empty() ? "" : ", ") + e.role;
    throw BundleError("bundle '" + name + "' component '" + component + "' has no '" + role + "' file; it has [" + have + "]");
}

std::string Bundle::verified_path(const FileEntry& e) const {
    std::vector<const FileEntry*> check{&e};
    if (e.role.size() > 5 && e.role.compare(e.role.size() - 5, 5, " onnx") == 0)
        for (const auto& f : files)
            if (f.component == e.component && f.role == "onnx external data") check.push_back(&f);
    for (const FileEntry* f : check) {
        const std::string p = root + "/" + f->path;
        int64_t size = -1;
        if (!is_file(p, &size))
            throw BundleError("bundle '" + root + "': file '" + f->path + "' (" + f->role + ") is missing");
        if (size != f->bytes)
            throw BundleError("bundle '" + root + "': file '" + f->path + "' has " + std::to_string(size) +
                              " bytes, the manifest says " + std::to_string(f->bytes) + " (truncated or replaced?)");
        const std::string digest = sha256_file(p);
        if (digest != f->sha256)
            throw BundleError("bundle '" + root + "': file '" + f->path + "' fails its sha256 check (tampered or corrupt): "
                              "expected " + f->sha256.substr(0, 16) + "..., got " + digest.substr(0, 16) + "...");
    }
    return root + "/" + e.path;
}

}  // namespace vkt
