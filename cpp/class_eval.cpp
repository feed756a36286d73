#include "class_eval.hpp"

#include <stdexcept>
#include <string>
#include <utility>

namespace mimfast {

void KernelEval::set_categories(const CategoryArrays& c, const std::string& what) {
    const size_t n = static_cast<size_t>(g_.n_cat);
    for (const auto& [v, name] : {std::pair{&c.sizes, "sizes"}, std::pair{&c.s_a, "s_a"},
                                  std::pair{&c.s_b, "s_b"}, std::pair{&c.inv_areas, "inv_areas"},
                                  std::pair{&c.inv_sizes, "inv_sizes"}})
        if (v->size() != n)
            throw std::invalid_argument(what + ": " + name + " must be a 1-D array of length " +
                                        std::to_string(n) + ", got " + std::to_string(v->size()));
    in_ = Inputs{};
    in_.sizes = c.sizes.data();
    in_.s_a = c.s_a.data();
    in_.s_b = c.s_b.data();
    in_.inv_areas = c.inv_areas.data();
    in_.inv_sizes = c.inv_sizes.data();
}

void KernelEval::sums(const double* z, const double* wu, const double* wm, double wself,
                      int threads, double* out, const double* wu0, const double* wm0,
                      double wself0, const int64_t* named) const {
    Inputs in = in_;
    in.z = z;
    in.wu = wu;
    in.wm = wm;
    in.wself = wself;
    in.wu0 = wu0;
    in.wm0 = wm0;
    in.wself0 = wself0;
    in.named = named;
    class_sums(g_, in, threads, out);
}

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
    set_categories(a_.cat, "count grid");
    validate(g_);
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
    set_categories(a_.cat, "point set");
    validate(g_);
}


}  // namespace mimfast
