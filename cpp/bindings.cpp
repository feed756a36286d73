// Thin pybind11 layer: check and convert arrays, release the GIL, call the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "class_eval.hpp"
#include "kernel.hpp"

namespace py = pybind11;

namespace {

template <typename T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
const T* data(const Arr<T>& a, py::ssize_t n, const char* name) {
    if (a.ndim() != 1 || a.shape(0) != n)
        throw std::invalid_argument(std::string(name) + " must be a 1-D array of length " +
                                    std::to_string(n));
    return a.data();
}

template <typename T>
std::vector<T> copy(const Arr<T>& a) {
    return std::vector<T>(a.data(), a.data() + a.size());
}

// An exact count grid from its arrays, copied: the handle shares no memory with Python.
std::shared_ptr<mimfast::ExactGrid> make_grid(
    Arr<int64_t> counts, Arr<int64_t> rest, Arr<int64_t> lo, Arr<int64_t> hi,
    Arr<double> row_weight, Arr<double> t_inner, int64_t off_inner, Arr<double> t_last,
    int64_t off_last, int inner, int last, Arr<int64_t> blocks, Arr<double> sizes,
    Arr<double> s_a, Arr<double> s_b, Arr<double> inv_areas, Arr<double> inv_sizes) {
    if (counts.ndim() != 2) throw std::invalid_argument("counts must be a 2-D array");
    if (blocks.ndim() != 2 || blocks.shape(1) != 3)
        throw std::invalid_argument("blocks must be an (n, 3) array");
    for (const py::array* a : std::initializer_list<const py::array*>{
             &rest, &lo, &hi, &row_weight, &t_inner, &t_last, &sizes, &s_a, &s_b, &inv_areas,
             &inv_sizes})
        if (a->ndim() != 1) throw std::invalid_argument("grid tables must be 1-D arrays");
    mimfast::GridArrays g;
    g.n_cat = static_cast<int>(counts.shape(1));
    g.inner = inner;
    g.last = last;
    g.counts = copy(counts);
    g.rest = copy(rest);
    g.lo = copy(lo);
    g.hi = copy(hi);
    g.blocks = copy(blocks);
    g.row_weight = copy(row_weight);
    g.t_inner = copy(t_inner);
    g.t_last = copy(t_last);
    g.off_inner = off_inner;
    g.off_last = off_last;
    g.sizes = copy(sizes);
    g.s_a = copy(s_a);
    g.s_b = copy(s_b);
    g.inv_areas = copy(inv_areas);
    g.inv_sizes = copy(inv_sizes);
    return std::make_shared<mimfast::ExactGrid>(std::move(g));
}

py::array_t<double> eval_sums(const mimfast::ClassEval& e, Arr<double> z, Arr<double> wu,
                              Arr<double> wm, double wself, int threads) {
    if (threads < 1) throw std::invalid_argument("threads must be at least 1");
    const py::ssize_t n = e.n_cat();
    const double* pz = data(z, n, "z");
    const double* pu = data(wu, n, "wu");
    const double* pm = data(wm, n, "wm");
    py::array_t<double> out(mimfast::n_sums(e.n_cat()));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        e.sums(pz, pu, pm, wself, threads, o);
    }
    return out;
}

void bind_kernel(py::module_& m) {
    py::class_<mimfast::ClassEval, std::shared_ptr<mimfast::ClassEval>>(
        m, "ClassEval", "Evaluator of one query class (base of ClassGrid and point sets).")
        .def_property_readonly("n_cat", &mimfast::ClassEval::n_cat)
        .def("sums", &eval_sums, py::arg("z"), py::arg("wu"), py::arg("wm"), py::arg("wself"),
             py::arg("threads"),
             "Sums of docs/model.md §3: [mass, loss, dB_self, alpha[n], dA[n], dB[n]].");
    py::class_<mimfast::ExactGrid, mimfast::ClassEval, std::shared_ptr<mimfast::ExactGrid>>(
        m, "ClassGrid", "A class count grid, copied and validated for the kernel.")
        .def(py::init(&make_grid), py::arg("counts"), py::arg("rest"), py::arg("lo"),
             py::arg("hi"), py::arg("row_weight"), py::arg("t_inner"), py::arg("off_inner"),
             py::arg("t_last"), py::arg("off_last"), py::arg("inner"), py::arg("last"),
             py::arg("blocks"), py::arg("sizes"), py::arg("s_a"), py::arg("s_b"),
             py::arg("inv_areas"), py::arg("inv_sizes"));
    m.def("openmp_enabled", &mimfast::openmp_enabled, "Whether the kernel was built with OpenMP.");
    m.def("max_threads", &mimfast::max_threads, "Threads the kernel uses by default.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "mimfast's compiled kernel (private; use mimfast.simulate).";
    bind_kernel(m);
}
