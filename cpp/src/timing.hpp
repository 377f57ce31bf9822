// Wall-clock totals of the pipeline stages, in seconds.
#pragma once

#include <chrono>

namespace vkt {

struct Timing {
    double pre = 0, infer = 0, post = 0;
};

class Stopwatch {
public:
    Stopwatch() : t_(std::chrono::steady_clock::now()) {}
    double lap() {  // seconds since the last lap (or construction)
        auto now = std::chrono::steady_clock::now();
        double s = std::chrono::duration<double>(now - t_).count();
        t_ = now;
        return s;
    }

private:
    std::chrono::steady_clock::time_point t_;
};

}  // namespace vkt
