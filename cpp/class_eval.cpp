#include "class_eval.hpp"

#include <stdexcept>
#include <string>
#include <utility>

namespace mimfast {

ExactGrid::ExactGrid(GridArrays arrays) : a_(std::move(arrays)) {
    const size_t n = static_cast<size_t>(a_.n_cat);
    if (a_.n_cat < 1) throw std::invalid_argument("count grid: no key categories");
    if (a_.counts.size() % n != 0)
        throw std::invalid_argument("count grid: counts must have n_cat columns");
    const size_t rows = a_.counts.size() / n;
    auto need = [](size_t got, size_t want, const char* name) {
        if (got != want)
            throw std::invalid_argument(std::string("count grid: ") + name +
                                        " must be a 1-D array of length " + std::to_string(want) +
                                        ", got " + std::to_string(got));
    };
    need(a_.rest.size(), rows, "rest");
    need(a_.lo.size(), rows, "lo");
    need(a_.hi.size(), rows, "hi");
    need(a_.row_weight.size(), rows, "row_weight");
    if (a_.blocks.size() % 3 != 0)
        throw std::invalid_argument("count grid: blocks must be an (n, 3) array");
    need(a_.sizes.size(), n, "sizes");
    need(a_.s_a.size(), n, "s_a");
    need(a_.s_b.size(), n, "s_b");
    need(a_.inv_areas.size(), n, "inv_areas");
    need(a_.inv_sizes.size(), n, "inv_sizes");
    g_.n_cat = a_.n_cat;
    g_.inner = a_.inner;
    g_.last = a_.last;
    g_.n_rows = static_cast<int64_t>(rows);
    g_.counts = a_.counts.data();
    g_.rest = a_.rest.data();
    g_.lo = a_.lo.data();
    g_.hi = a_.hi.data();
    g_.row_weight = a_.row_weight.data();
    g_.t_inner = a_.t_inner.data();
    g_.n_inner = static_cast<int64_t>(a_.t_inner.size());
    g_.off_inner = a_.off_inner;
    g_.t_last = a_.t_last.data();
    g_.n_last = static_cast<int64_t>(a_.t_last.size());
    g_.off_last = a_.off_last;
    g_.blocks = a_.blocks.data();
    g_.n_blocks = static_cast<int64_t>(a_.blocks.size() / 3);
    in_.sizes = a_.sizes.data();
    in_.s_a = a_.s_a.data();
    in_.s_b = a_.s_b.data();
    in_.inv_areas = a_.inv_areas.data();
    in_.inv_sizes = a_.inv_sizes.data();
    validate(g_);
}

void ExactGrid::sums(const double* z, const double* wu, const double* wm, double wself,
                     int threads, double* out) const {
    Inputs in = in_;
    in.z = z;
    in.wu = wu;
    in.wm = wm;
    in.wself = wself;
    class_sums(g_, in, threads, out);
}

}  // namespace mimfast
