// KServe v2 / Triton HTTP client on libcurl: infer with the binary tensor data extension, plus plain POSTs.
//
// Request body:  JSON header  +  raw tensor bytes (little-endian, C order), with the header's length in
// the HTTP header `Inference-Header-Content-Length`. Each binary input carries
// `"parameters": {"binary_data_size": N}`; outputs asked with `"parameters": {"binary_data": true}` come
// back the same way (the response's `Inference-Header-Content-Length` says where the JSON ends).
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include <curl/curl.h>
#include <nlohmann/json.hpp>

namespace vkt {

struct HttpResponse {
    long status = 0;
    std::string body;
    std::string content_type;
    long header_length = -1;  // Inference-Header-Content-Length, -1 when absent
};

struct Tensor {
    std::string name, datatype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> data;  // raw little-endian bytes
};

namespace detail {
inline size_t on_body(char* p, size_t size, size_t n, void* user) {
    static_cast<std::string*>(user)->append(p, size * n);
    return size * n;
}

inline size_t on_header(char* p, size_t size, size_t n, void* user) {
    auto* r = static_cast<HttpResponse*>(user);
    std::string line(p, size * n);
    auto colon = line.find(':');
    if (colon != std::string::npos) {
        std::string key = line.substr(0, colon), value = line.substr(colon + 1);
        for (auto& ch : key) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        value.erase(0, value.find_first_not_of(" \t"));
        value.erase(value.find_last_not_of(" \t\r\n") + 1);
        if (key == "inference-header-content-length") r->header_length = std::stol(value);
        if (key == "content-type") r->content_type = value;
    }
    return size * n;
}
}  // namespace detail

class Client {
  public:
    explicit Client(std::string url) : url_(std::move(url)) {
        curl_ = curl_easy_init();
        if (!curl_) throw std::runtime_error("curl_easy_init failed");
    }
    ~Client() { curl_easy_cleanup(curl_); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // POST `body` to `path` with extra headers; keeps the connection alive between calls.
    HttpResponse post(const std::string& path, const std::string& body, const std::vector<std::string>& headers) {
        HttpResponse r;
        curl_slist* hs = nullptr;
        for (const auto& h : headers) hs = curl_slist_append(hs, h.c_str());
        hs = curl_slist_append(hs, "Expect:");  // no 100-continue round trip for large bodies
        curl_easy_reset(curl_);
        curl_easy_setopt(curl_, CURLOPT_URL, (url_ + path).c_str());
        curl_easy_setopt(curl_, CURLOPT_POST, 1L);
        curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.data());
        curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
        curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, hs);
        curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, detail::on_body);
        curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &r.body);
        curl_easy_setopt(curl_, CURLOPT_HEADERFUNCTION, detail::on_header);
        curl_easy_setopt(curl_, CURLOPT_HEADERDATA, &r);
        curl_easy_setopt(curl_, CURLOPT_TIMEOUT, 120L);
        CURLcode rc = curl_easy_perform(curl_);
        curl_slist_free_all(hs);
        if (rc != CURLE_OK) throw std::runtime_error("POST " + url_ + path + ": " + curl_easy_strerror(rc));
        curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &r.status);
        return r;
    }

    // /v2/models/<model>/infer with every input and the requested outputs as binary tensors.
    std::vector<Tensor> infer(const std::string& model, const std::vector<Tensor>& inputs, const std::vector<std::string>& outputs) {
        nlohmann::json head = {{"inputs", nlohmann::json::array()}, {"outputs", nlohmann::json::array()}};
        for (const auto& t : inputs)
            head["inputs"].push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape},
                                      {"parameters", {{"binary_data_size", t.data.size()}}}});
        for (const auto& o : outputs) head["outputs"].push_back({{"name", o}, {"parameters", {{"binary_data", true}}}});
        std::string body = head.dump();
        const size_t hl = body.size();
        for (const auto& t : inputs) body.append(reinterpret_cast<const char*>(t.data.data()), t.data.size());
        HttpResponse r = post("/v2/models/" + model + "/infer", body,
                              {"Content-Type: application/octet-stream", "Inference-Header-Content-Length: " + std::to_string(hl)});
        if (r.status != 200) throw std::runtime_error("infer: HTTP " + std::to_string(r.status) + ": " + r.body.substr(0, 500));
        const size_t json_end = r.header_length >= 0 ? static_cast<size_t>(r.header_length) : r.body.size();
        auto resp = nlohmann::json::parse(r.body.begin(), r.body.begin() + static_cast<std::ptrdiff_t>(json_end));
        std::vector<Tensor> out;
        size_t offset = json_end;
        for (const auto& o : resp.at("outputs")) {
            Tensor t{o.at("name"), o.at("datatype"), o.at("shape").get<std::vector<int64_t>>(), {}};
            if (!o.contains("parameters") || !o["parameters"].contains("binary_data_size"))
                throw std::runtime_error("output " + t.name + " came back as JSON; binary_data was asked for");
            size_t n = o["parameters"]["binary_data_size"].get<size_t>();
            if (offset + n > r.body.size()) throw std::runtime_error("response body too short for output " + t.name);
            t.data.assign(r.body.begin() + static_cast<std::ptrdiff_t>(offset), r.body.begin() + static_cast<std::ptrdiff_t>(offset + n));
            offset += n;
            out.push_back(std::move(t));
        }
        return out;
    }

  private:
    std::string url_;
    CURL* curl_ = nullptr;
};

}  // namespace vkt
