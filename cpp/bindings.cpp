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

// A count grid handed to the kernel once: the arrays are converted and validated here and
// kept alive by the object, so each GD step passes only the key weights.
class ClassGrid {
   public:
    ClassGrid(Arr<int64_t> counts, Arr<int64_t> rest, Arr<int64_t> lo, Arr<int64_t> hi,
              Arr<double> row_weight, Arr<double> t_inner, int64_t off_inner,
              Arr<double> t_last, int64_t off_last, int inner, int last, Arr<int64_t> blocks,
              Arr<double> sizes, Arr<double> s_a, Arr<double> s_b, Arr<double> inv_areas,
              Arr<double> inv_sizes)
        : keep_{counts, rest, lo, hi, row_weight, t_inner, t_last, blocks,
                sizes, s_a, s_b, inv_areas, inv_sizes} {
        if (counts.ndim() != 2) throw std::invalid_argument("counts must be a 2-D array");
        if (blocks.ndim() != 2 || blocks.shape(1) != 3)
            throw std::invalid_argument("blocks must be an (n, 3) array");
        g_.n_rows = counts.shape(0);
        g_.n_cat = static_cast<int>(counts.shape(1));
        g_.counts = counts.data();
        g_.rest = data(rest, g_.n_rows, "rest");
        g_.lo = data(lo, g_.n_rows, "lo");
        g_.hi = data(hi, g_.n_rows, "hi");
        g_.row_weight = data(row_weight, g_.n_rows, "row_weight");
        g_.t_inner = t_inner.data();
        g_.n_inner = t_inner.size();
        g_.off_inner = off_inner;
        g_.t_last = t_last.data();
        g_.n_last = t_last.size();
        g_.off_last = off_last;
        g_.inner = inner;
        g_.last = last;
        g_.blocks = blocks.data();
        g_.n_blocks = blocks.shape(0);
        const py::ssize_t n = g_.n_cat;
        in_.sizes = data(sizes, n, "sizes");
        in_.s_a = data(s_a, n, "s_a");
        in_.s_b = data(s_b, n, "s_b");
        in_.inv_areas = data(inv_areas, n, "inv_areas");
        in_.inv_sizes = data(inv_sizes, n, "inv_sizes");
        mimfast::validate(g_);
    }

    py::array_t<double> sums(Arr<double> z, Arr<double> wu, Arr<double> wm, double wself,
                             int threads) const {
        if (threads < 1) throw std::invalid_argument("threads must be at least 1");
        mimfast::Inputs in = in_;
        const py::ssize_t n = g_.n_cat;
        in.z = data(z, n, "z");
        in.wu = data(wu, n, "wu");
        in.wm = data(wm, n, "wm");
        in.wself = wself;
        py::array_t<double> out(mimfast::n_sums(g_.n_cat));
        double* o = out.mutable_data();
        {
            py::gil_scoped_release release;
            mimfast::class_sums(g_, in, threads, o);
        }
        return out;
    }

   private:
    std::vector<py::object> keep_;
    mimfast::Grid g_;
    mimfast::Inputs in_;
};

void bind_kernel(py::module_& m) {
    py::class_<ClassGrid>(m, "ClassGrid",
                          "A class count grid converted and validated for the kernel.")
        .def(py::init<Arr<int64_t>, Arr<int64_t>, Arr<int64_t>, Arr<int64_t>, Arr<double>,
                      Arr<double>, int64_t, Arr<double>, int64_t, int, int, Arr<int64_t>,
                      Arr<double>, Arr<double>, Arr<double>, Arr<double>, Arr<double>>(),
             py::arg("counts"), py::arg("rest"), py::arg("lo"), py::arg("hi"),
             py::arg("row_weight"), py::arg("t_inner"), py::arg("off_inner"),
             py::arg("t_last"), py::arg("off_last"), py::arg("inner"), py::arg("last"),
             py::arg("blocks"), py::arg("sizes"), py::arg("s_a"), py::arg("s_b"),
             py::arg("inv_areas"), py::arg("inv_sizes"))
        .def("sums", &ClassGrid::sums, py::arg("z"), py::arg("wu"), py::arg("wm"),
             py::arg("wself"), py::arg("threads"),
             "Sums of docs/model.md §3 over the grid: [mass, loss, dB_self, alpha[n], dA[n], dB[n]].");
    m.def("openmp_enabled", &mimfast::openmp_enabled, "Whether the kernel was built with OpenMP.");
    m.def("max_threads", &mimfast::max_threads, "Threads the kernel uses by default.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "mimfast's compiled kernel (private; use mimfast.simulate).";
    bind_kernel(m);
}
