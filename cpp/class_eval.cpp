#include "class_eval.hpp"

#include <stdexcept>
#include <string>
#include <utility>

namespace mimfast {
namespace {

Inputs constants(const std::vector<double>& sizes, const std::vector<double>& s_a,
                 const std::vector<double>& s_b, const std::vector<double>& inv_areas,
                 const std::vector<double>& inv_sizes) {
    Inputs in;
    in.sizes = sizes.data();
    in.s_a = s_a.data();
    in.s_b = s_b.data();
    in.inv_areas = inv_areas.data();
    in.inv_sizes = inv_sizes.data();
    return in;
}

Inputs with_weights(Inputs in, const double* z, const double* wu, const double* wm,
                    double wself, const double* wu0, const double* wm0, double wself0) {
    in.z = z;
    in.wu = wu;
    in.wm = wm;
    in.wself = wself;
    in.wu0 = wu0;
    in.wm0 = wm0;
    in.wself0 = wself0;
    return in;
}

}  // namespace

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
    in_ = constants(a_.sizes, a_.s_a, a_.s_b, a_.inv_areas, a_.inv_sizes);
    validate(g_);
}

void ExactGrid::sums(const double* z, const double* wu, const double* wm, double wself,
                     int threads, double* out, const double* wu0, const double* wm0,
                     double wself0) const {
    class_sums(g_, with_weights(in_, z, wu, wm, wself, wu0, wm0, wself0), threads, out);
}

PointSet::PointSet(PointArrays arrays) : a_(std::move(arrays)) {
    const size_t n = static_cast<size_t>(a_.n_cat);
    auto fail = [](const std::string& what) { throw std::invalid_argument("point set: " + what); };
    if (a_.n_cat < 2) fail("fewer than two key categories");
    if (a_.counts.size() % n != 0) fail("counts must have n_cat columns");
    const size_t rows = a_.counts.size() / n;
    if (a_.rest.size() != rows || a_.centre.size() != rows)
        fail("rest and centre must have one entry per row");
    if (a_.node_x.size() != a_.node_w.size()) fail("node_x and node_w differ in length");
    if (a_.blocks.size() % 3 != 0) fail("blocks must be an (n, 3) array");
    for (const auto* v : {&a_.sizes, &a_.s_a, &a_.s_b, &a_.inv_areas, &a_.inv_sizes})
        if (v->size() != n) fail("per-category constants must have n_cat entries");
    g_.n_cat = a_.n_cat;
    g_.inner = a_.inner;
    g_.last = a_.last;
    g_.n_rows = static_cast<int64_t>(rows);
    g_.counts_f = a_.counts.data();
    g_.rest_f = a_.rest.data();
    g_.centre = a_.centre.data();
    g_.node_x = a_.node_x.data();
    g_.node_w = a_.node_w.data();
    g_.n_nodes = static_cast<int64_t>(a_.node_x.size());
    g_.blocks = a_.blocks.data();
    g_.n_blocks = static_cast<int64_t>(a_.blocks.size() / 3);
    in_ = constants(a_.sizes, a_.s_a, a_.s_b, a_.inv_areas, a_.inv_sizes);
    validate(g_);
}

void PointSet::sums(const double* z, const double* wu, const double* wm, double wself,
                    int threads, double* out, const double* wu0, const double* wm0,
                    double wself0) const {
    class_sums(g_, with_weights(in_, z, wu, wm, wself, wu0, wm0, wself0), threads, out);
}

}  // namespace mimfast
