// A vkt bundle read from its manifest.json: schema check, graph choice by precision and backend, the graph's
// spec (inputs, outputs, shape profiles), and every file it uses checked against its recorded size and sha256.
// Mirrors vkt/bundle.py (Bundle.load, entry) and vkt/runtime/__init__.py (make_runner's choice of graph).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "error.hpp"

namespace vkt {

constexpr int SCHEMA_VERSION = 1;  // the manifest version this reader understands (vkt.bundle.SCHEMA_VERSION)

struct FileEntry {
    std::string path, role, component, sha256;
    int64_t bytes = 0;
    json meta;
};

// One tensor of the graph: a dimension is static (value >= 0) or named (value -1, name set).
struct Dim {
    int64_t value = -1;
    std::string name;
};
struct TensorSpec {
    std::string name, dtype;
    std::vector<Dim> shape;
};
using Profile = std::map<std::string, std::array<int64_t, 3>>;  // axis -> (min, opt, max)

struct ModelSpec {
    std::vector<TensorSpec> inputs, outputs;
    std::vector<Profile> profiles;

    const TensorSpec* input(const std::string& name) const;
    bool has_output(const std::string& name) const;
    // Named axis -> (lowest min, highest max) over the profiles (what the runtime accepts).
    std::map<std::string, std::pair<int64_t, int64_t>> bounds() const;
    // ShapeError naming the tensor, its shape and the violated bound unless `shape` fits input `name`.
    void check_input(const std::string& name, const std::vector<int64_t>& shape) const;
};

class Bundle {
public:
    // Read and check <dir>/manifest.json (a path to the manifest itself is accepted). BundleError on a
    // missing folder or manifest, invalid JSON, another schema, a newer schema_version, or a malformed entry.
    static Bundle load(const std::string& dir);

    std::string root, name, family, task;
    json manifest;
    std::vector<FileEntry> files;

    const json& preprocess() const;
    const json& postprocess() const;
    ModelSpec spec(const std::string& component = "model") const;

    // The graph file for `precision` ("fp32", "fp16", "int8") on `backend`:
    //   "openvino": the ONNX graph of that role placed for OpenVINO (meta "placement": "openvino"), else one
    //               without a placement; a Q/DQ graph placed only for onnxruntime/TensorRT is refused;
    //   "tensorrt": the "plan" file whose meta "precision" is `precision`.
    const FileEntry& graph(const std::string& precision, const std::string& backend,
                           const std::string& component = "model") const;
    // Absolute path of `e` after checking its size and sha256 (BundleError naming the file otherwise), and of
    // every "onnx external data" file of its component when `e` is an ONNX graph.
    std::string verified_path(const FileEntry& e) const;
};

}  // namespace vkt
