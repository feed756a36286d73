// Thin pybind11 layer: check and convert arrays, release the GIL, call the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

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

py::array_t<double> class_sums(Arr<int64_t> counts, Arr<int64_t> rest, Arr<int64_t> lo,
                               Arr<int64_t> hi, Arr<double> row_weight, Arr<double> t_inner,
                               int64_t off_inner, Arr<double> t_last, int64_t off_last,
                               int inner, int last, Arr<int64_t> blocks, Arr<double> sizes,
                               Arr<double> z, Arr<double> s_a, Arr<double> s_b,
                               Arr<double> inv_areas, Arr<double> inv_sizes,
                               Arr<double> wu, Arr<double> wm, double wself, int threads) {
    if (counts.ndim() != 2) throw std::invalid_argument("counts must be a 2-D array");
    if (blocks.ndim() != 2 || blocks.shape(1) != 3)
        throw std::invalid_argument("blocks must be an (n, 3) array");
    if (threads < 1) throw std::invalid_argument("threads must be at least 1");
    mimfast::Grid g;
    g.n_rows = counts.shape(0);
    g.n_cat = static_cast<int>(counts.shape(1));
    g.counts = counts.data();
    g.rest = data(rest, g.n_rows, "rest");
    g.lo = data(lo, g.n_rows, "lo");
    g.hi = data(hi, g.n_rows, "hi");
    g.row_weight = data(row_weight, g.n_rows, "row_weight");
    g.t_inner = t_inner.data();
    g.n_inner = t_inner.size();
    g.off_inner = off_inner;
    g.t_last = t_last.data();
    g.n_last = t_last.size();
    g.off_last = off_last;
    g.inner = inner;
    g.last = last;
    g.blocks = blocks.data();
    g.n_blocks = blocks.shape(0);
    mimfast::Inputs in;
    const py::ssize_t n = g.n_cat;
    in.sizes = data(sizes, n, "sizes");
    in.z = data(z, n, "z");
    in.s_a = data(s_a, n, "s_a");
    in.s_b = data(s_b, n, "s_b");
    in.inv_areas = data(inv_areas, n, "inv_areas");
    in.inv_sizes = data(inv_sizes, n, "inv_sizes");
    in.wu = data(wu, n, "wu");
    in.wm = data(wm, n, "wm");
    in.wself = wself;
    mimfast::validate(g);
    py::array_t<double> out(mimfast::n_sums(g.n_cat));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        mimfast::class_sums(g, in, threads, o);
    }
    return out;
}

void bind_kernel(py::module_& m) {
    m.def("class_sums", &class_sums,
          "Sums of SPEC §3 over one class count grid: "
          "[mass, loss, dB_self, alpha[n], dA[n], dB[n]].");
    m.def("openmp_enabled", &mimfast::openmp_enabled, "Whether the kernel was built with OpenMP.");
    m.def("max_threads", &mimfast::max_threads, "Threads the kernel uses by default.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "mimfast's compiled kernel (private; use mimfast.simulate).";
    bind_kernel(m);
}
