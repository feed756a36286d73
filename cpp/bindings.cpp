// Thin pybind11 layer: check and convert arrays, release the GIL, call the kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "class_eval.hpp"
#include "flow.hpp"
#include "fused.hpp"
#include "gauss.hpp"
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

py::array_t<double> vec(const std::vector<double>& v) {
    py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

// A class's per-category constants, checked 1-D and copied.
mimfast::CategoryArrays categories(Arr<double> sizes, Arr<double> s_a, Arr<double> s_b,
                                   Arr<double> inv_areas, Arr<double> inv_sizes) {
    for (const py::array* a :
         std::initializer_list<const py::array*>{&sizes, &s_a, &s_b, &inv_areas, &inv_sizes})
        if (a->ndim() != 1) throw std::invalid_argument("per-category constants must be 1-D");
    return {copy(sizes), copy(s_a), copy(s_b), copy(inv_areas), copy(inv_sizes)};
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
             &rest, &lo, &hi, &row_weight, &t_inner, &t_last})
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
    g.cat = categories(sizes, s_a, s_b, inv_areas, inv_sizes);
    return std::make_shared<mimfast::ExactGrid>(std::move(g));
}

// A Gauss–Hahn point set from its arrays, copied.
std::shared_ptr<mimfast::PointSet> make_points(
    Arr<double> counts, Arr<double> rest, Arr<double> centre, Arr<double> node_x,
    Arr<double> node_w, int inner, int last, Arr<int64_t> blocks, Arr<double> sizes,
    Arr<double> s_a, Arr<double> s_b, Arr<double> inv_areas, Arr<double> inv_sizes) {
    if (counts.ndim() != 2) throw std::invalid_argument("counts must be a 2-D array");
    if (blocks.ndim() != 2 || blocks.shape(1) != 3)
        throw std::invalid_argument("blocks must be an (n, 3) array");
    for (const py::array* a :
         std::initializer_list<const py::array*>{&rest, &centre, &node_x, &node_w})
        if (a->ndim() != 1) throw std::invalid_argument("point set tables must be 1-D arrays");
    mimfast::PointArrays p;
    p.n_cat = static_cast<int>(counts.shape(1));
    p.inner = inner;
    p.last = last;
    p.counts = copy(counts);
    p.rest = copy(rest);
    p.centre = copy(centre);
    p.node_x = copy(node_x);
    p.node_w = copy(node_w);
    p.blocks = copy(blocks);
    p.cat = categories(sizes, s_a, s_b, inv_areas, inv_sizes);
    return std::make_shared<mimfast::PointSet>(std::move(p));
}

py::array_t<double> eval_sums(const mimfast::ClassEval& e, Arr<double> z, Arr<double> wu,
                              Arr<double> wm, double wself, int threads,
                              std::optional<Arr<double>> wu0, std::optional<Arr<double>> wm0,
                              double wself0, std::optional<Arr<int64_t>> named) {
    if (threads < 1) throw std::invalid_argument("threads must be at least 1");
    const py::ssize_t n = e.n_cat();
    const double* pz = data(z, n, "z");
    const double* pu = data(wu, n, "wu");
    const double* pm = data(wm, n, "wm");
    if (wu0.has_value() != wm0.has_value())
        throw std::invalid_argument("wu0 and wm0 come together");
    const double* pu0 = wu0 ? data(*wu0, n, "wu0") : nullptr;
    const double* pm0 = wm0 ? data(*wm0, n, "wm0") : nullptr;
    const int64_t* pn = named ? data(*named, n, "named") : nullptr;
    if (pn) mimfast::validate_named(pn, static_cast<int>(n));
    py::array_t<double> out(mimfast::n_out(e.n_cat()));
    double* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        e.sums(pz, pu, pm, wself, threads, o, pu0, pm0, wself0, pn);
    }
    return out;
}

// run(poll) without the GIL, as an int status; poll() takes the GIL back to look for signals, and
// the exception of one that raised leaves here (the loop keeps every completed step).
template <typename Status, typename Run>
int released(Run&& run) {
    const std::function<bool()> poll = [] {
        py::gil_scoped_acquire gil;
        return PyErr_CheckSignals() != 0;
    };
    Status status;
    {
        py::gil_scoped_release release;
        status = run(poll);
    }
    if (status == Status::interrupted) throw py::error_already_set();
    return static_cast<int>(status);
}

// Records start .. recorded() of a loop (`held`: a FusedLoop or a FlowLoop) as arrays: steps,
// loss, state, grad, attention, patch_loss, error, and for the flow tau and the next step size.
template <typename Loop>
py::tuple record_rows(const Loop& held, const mimfast::FusedLoop& shape, int64_t start) {
    if (start < held.forgotten() || start > held.recorded())
        throw std::invalid_argument("records from " + std::to_string(start) + " are not held");
    const auto& r = held.records();
    const int64_t skip = start - held.forgotten();
    const int64_t n = held.recorded() - start;
    auto rows = [&](const auto& v, int64_t w) {
        using T = typename std::decay_t<decltype(v)>::value_type;
        py::array_t<T> a({n, w});
        std::copy(v.begin() + skip * w, v.begin() + (skip + n) * w, a.mutable_data());
        return a;
    };
    const int64_t ns = shape.n_state(), nc = shape.n_classes();
    py::tuple out = py::make_tuple(rows(r.steps, 1).reshape({n}), rows(r.loss, 1).reshape({n}),
                                   rows(r.state, ns), rows(r.grad, ns),
                                   rows(r.attention, shape.n_attention()),
                                   rows(r.patch_loss, nc), rows(r.error, nc));
    if constexpr (std::is_same_v<Loop, mimfast::FlowLoop>)
        out = out + py::make_tuple(rows(r.tau, 1).reshape({n}), rows(r.next_h, 1).reshape({n}));
    return out;
}

// The fused loop behind Python: lists of per-class inputs in, numpy arrays out. run() releases
// the GIL and takes it back only to look for signals; when one raised, its exception leaves
// run() and the loop keeps every completed step and record.
class Fused {
   public:
    using EvalPtr = std::shared_ptr<mimfast::ClassEval>;
    Fused(std::vector<EvalPtr> evals, std::vector<EvalPtr> checks, std::vector<Arr<double>> z,
          std::vector<Arr<bool>> live, std::vector<int64_t> a_off, std::vector<int64_t> p_off,
          std::vector<double> coef, std::vector<double> coef_loss, int64_t n_state)
        : loop_(classes(evals, checks, z, live, a_off, p_off, coef, coef_loss), n_state) {}

    void set_state(int64_t t, Arr<double> s, int64_t last_recorded) {
        data(s, loop_.n_state(), "state");
        loop_.set_state(t, s.data(), last_recorded);
    }
    void set_evaluators(int64_t i, EvalPtr eval, EvalPtr check, double tol, int64_t accept) {
        loop_.set_evaluators(i, std::move(eval), std::move(check), tol, accept);
    }
    void set_named(int64_t i, Arr<int64_t> named) {
        if (named.ndim() != 1) throw std::invalid_argument("fused loop: named must be 1-D");
        loop_.set_named(i, copy(named));
    }
    int run(int64_t steps, int64_t record_every, double eta, int threads, int64_t stop_every,
            double seconds, double poll_seconds) {
        if (threads < 1) throw std::invalid_argument("threads must be at least 1");
        mimfast::RunLimits lim;
        lim.steps = steps;
        lim.record_every = record_every;
        lim.stop_every = stop_every;
        lim.seconds = seconds;
        lim.poll_seconds = poll_seconds;
        return released<mimfast::Status>(
            [&](const auto& poll) { return loop_.run(lim, eta, threads, poll); });
    }
    int64_t t() const { return loop_.t(); }
    py::array_t<double> state() const { return vec(loop_.state()); }
    py::tuple last() const {
        return py::make_tuple(vec(loop_.grad()), loop_.loss(), vec(loop_.attention()),
                              vec(loop_.patch_loss()), vec(loop_.error()));
    }
    py::array_t<double> max_error() const { return vec(loop_.max_error()); }
    int64_t recorded() const { return loop_.recorded(); }
    // Records start .. recorded(): steps, loss, state, grad, attention, patch_loss, error.
    py::tuple records(int64_t start) const { return record_rows(loop_, loop_, start); }
    void forget(int64_t upto) { loop_.forget(upto); }
    mimfast::FusedLoop& loop() { return loop_; }

   private:
    static std::vector<mimfast::FusedClass> classes(
        const std::vector<EvalPtr>& evals, const std::vector<EvalPtr>& checks,
        const std::vector<Arr<double>>& z, const std::vector<Arr<bool>>& live,
        const std::vector<int64_t>& a_off, const std::vector<int64_t>& p_off,
        const std::vector<double>& coef, const std::vector<double>& coef_loss) {
        const size_t n = evals.size();
        for (size_t len : {checks.size(), z.size(), live.size(), a_off.size(), p_off.size(),
                           coef.size(), coef_loss.size()})
            if (len != n)
                throw std::invalid_argument("fused loop: one entry per class in every list");
        std::vector<mimfast::FusedClass> out(n);
        for (size_t i = 0; i < n; ++i) {
            if (!evals[i]) throw std::invalid_argument("fused loop: evaluator missing");
            const py::ssize_t nc = evals[i]->n_cat();
            const double* pz = data(z[i], nc, "z");
            const bool* pl = data(live[i], nc, "live");
            out[i].eval = evals[i];
            out[i].check = checks[i];
            out[i].z.assign(pz, pz + nc);
            out[i].live.assign(pl, pl + nc);
            out[i].a_off = a_off[i];
            out[i].p_off = p_off[i];
            out[i].coef = coef[i];
            out[i].coef_loss = coef_loss[i];
        }
        return out;
    }
    mimfast::FusedLoop loop_;
};

// The gradient flow's step loop behind Python, evaluating with a Fused loop (which it keeps
// alive; its set_evaluators() reaches the flow). run() releases the GIL as Fused.run() does.
class Flow {
   public:
    Flow(Fused& fused, const std::vector<std::vector<double>>& a, std::vector<double> b,
         std::vector<double> e, double exponent, double safety, double min_factor,
         double max_factor, double min_step, const std::vector<int>& kind,
         const std::vector<int64_t>& cls, const std::vector<std::vector<int>>& others,
         const std::vector<double>& level)
        : fused_(fused),
          loop_(fused.loop(), tableau(a, std::move(b), std::move(e), exponent, safety,
                                      min_factor, max_factor, min_step),
                events(kind, cls, others, level)) {}

    void set_state(double t, Arr<double> y, Arr<double> f, double h, int64_t index,
                   Arr<double> values, Arr<bool> found) {
        const py::ssize_t n = loop_.n_state(), m = loop_.n_events();
        const bool* pf = data(found, m, "found");
        std::vector<unsigned char> done(pf, pf + m);
        loop_.set_state(t, data(y, n, "y"), data(f, n, "f"), h, index, data(values, m, "values"),
                        done.data());
    }
    int run(double tau, double rtol, int64_t max_steps, int threads, double seconds,
            double poll_seconds) {
        if (threads < 1) throw std::invalid_argument("threads must be at least 1");
        mimfast::FlowLimits lim;
        lim.tau = tau;
        lim.rtol = rtol;
        lim.max_steps = max_steps;
        lim.seconds = seconds;
        lim.poll_seconds = poll_seconds;
        return released<mimfast::FlowStatus>(
            [&](const auto& poll) { return loop_.run(lim, threads, poll); });
    }
    void commit() { loop_.commit(); }
    double t() const { return loop_.t(); }
    double h() const { return loop_.h(); }
    int64_t evaluations() const { return loop_.evaluations(); }
    py::array_t<double> y() const { return vec(loop_.y()); }
    // The held step: t, h, t_new, y, stages (s + 1, n), crossed events, their values at t and
    // at t_new.
    py::tuple held() const {
        const auto& K = loop_.stages();
        py::array_t<double> k({static_cast<py::ssize_t>(K.size()) / loop_.n_state(),
                               static_cast<py::ssize_t>(loop_.n_state())});
        std::copy(K.begin(), K.end(), k.mutable_data());
        const auto& c = loop_.crossed();
        py::array_t<int64_t> crossed(static_cast<py::ssize_t>(c.size()));
        std::copy(c.begin(), c.end(), crossed.mutable_data());
        return py::make_tuple(loop_.t(), loop_.held_h(), loop_.held_t(), vec(loop_.y()), k,
                              crossed, vec(loop_.values()), vec(loop_.new_values()));
    }
    int64_t recorded() const { return loop_.recorded(); }
    py::tuple records(int64_t start) const {
        return record_rows(loop_, fused_.loop(), start);
    }
    void forget(int64_t upto) { loop_.forget(upto); }

   private:
    static mimfast::Tableau tableau(const std::vector<std::vector<double>>& a,
                                    std::vector<double> b, std::vector<double> e, double exponent,
                                    double safety, double min_factor, double max_factor,
                                    double min_step) {
        mimfast::Tableau t;
        t.stages = static_cast<int>(b.size());
        for (size_t i = 0; i < a.size(); ++i) {
            if (a.size() != b.size() || a[i].size() != i)
                throw std::invalid_argument("flow loop: row i of a must have i entries");
            for (size_t j = 0; j < b.size(); ++j) t.a.push_back(j < i ? a[i][j] : 0.0);
        }
        t.b = std::move(b);
        t.e = std::move(e);
        t.exponent = exponent;
        t.safety = safety;
        t.min_factor = min_factor;
        t.max_factor = max_factor;
        t.min_step = min_step;
        return t;
    }
    static std::vector<mimfast::FlowEvent> events(const std::vector<int>& kind,
                                                  const std::vector<int64_t>& cls,
                                                  const std::vector<std::vector<int>>& others,
                                                  const std::vector<double>& level) {
        const size_t n = kind.size();
        if (cls.size() != n || others.size() != n || level.size() != n)
            throw std::invalid_argument("flow loop: one entry per event in every list");
        std::vector<mimfast::FlowEvent> out(n);
        for (size_t j = 0; j < n; ++j) out[j] = {kind[j], cls[j], others[j], level[j]};
        return out;
    }
    Fused& fused_;
    mimfast::FlowLoop loop_;
};

// Gauss rules of a batch of Jacobi matrices: diag (m, n), off (m, n - 1) -> nodes, weights.
py::tuple gauss_rules(Arr<double> diag, Arr<double> off) {
    if (diag.ndim() != 2 || off.ndim() != 2 || diag.shape(1) < 1 ||
        off.shape(0) != diag.shape(0) || off.shape(1) != diag.shape(1) - 1)
        throw std::invalid_argument("gauss_rules: diag must be (m, n) and off (m, n - 1)");
    const py::ssize_t m = diag.shape(0), n = diag.shape(1);
    py::array_t<double> nodes({m, n}), weights({m, n});
    const double *pd = diag.data(), *po = off.data();
    double *pn = nodes.mutable_data(), *pw = weights.mutable_data();
    {
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < m; ++i)
            mimfast::gauss_rule(n, pd + i * n, po + i * (n - 1), pn + i * n, pw + i * n);
    }
    return py::make_tuple(nodes, weights);
}

void bind_kernel(py::module_& m) {
    py::class_<mimfast::ClassEval, std::shared_ptr<mimfast::ClassEval>>(
        m, "ClassEval", "Evaluator of one query class (base of ClassGrid and point sets).")
        .def_property_readonly("n_cat", &mimfast::ClassEval::n_cat)
        .def("sums", &eval_sums, py::arg("z"), py::arg("wu"), py::arg("wm"), py::arg("wself"),
             py::arg("threads"), py::arg("wu0") = py::none(), py::arg("wm0") = py::none(),
             py::arg("wself0") = 0.0, py::arg("named") = py::none(),
             "Sums of docs/model.md §3: [mass, loss, dB_self, alpha[n], dA[n], dB[n]].");
    py::class_<mimfast::ExactGrid, mimfast::ClassEval, std::shared_ptr<mimfast::ExactGrid>>(
        m, "ClassGrid", "A class count grid, copied and validated for the kernel.")
        .def(py::init(&make_grid), py::arg("counts"), py::arg("rest"), py::arg("lo"),
             py::arg("hi"), py::arg("row_weight"), py::arg("t_inner"), py::arg("off_inner"),
             py::arg("t_last"), py::arg("off_last"), py::arg("inner"), py::arg("last"),
             py::arg("blocks"), py::arg("sizes"), py::arg("s_a"), py::arg("s_b"),
             py::arg("inv_areas"), py::arg("inv_sizes"));
    py::class_<Fused>(m, "FusedLoop", "The GD loop of a whole run in C++ (cpp/fused.hpp).")
        .def(py::init<std::vector<Fused::EvalPtr>, std::vector<Fused::EvalPtr>,
                      std::vector<Arr<double>>, std::vector<Arr<bool>>, std::vector<int64_t>,
                      std::vector<int64_t>, std::vector<double>, std::vector<double>, int64_t>(),
             py::arg("evals"), py::arg("checks"), py::arg("z"), py::arg("live"),
             py::arg("a_off"), py::arg("p_off"), py::arg("coef"), py::arg("coef_loss"),
             py::arg("n_state"))
        .def("set_state", &Fused::set_state, py::arg("t"), py::arg("state"),
             py::arg("last_recorded"))
        .def("set_evaluators", &Fused::set_evaluators, py::arg("i"), py::arg("eval"),
             py::arg("check") = nullptr, py::arg("tol") = 0.0, py::arg("accept") = -1)
        .def("set_named", &Fused::set_named, py::arg("i"), py::arg("named"))
        .def("run", &Fused::run, py::arg("steps"), py::arg("record_every"), py::arg("eta"),
             py::arg("threads"), py::arg("stop_every") = 0, py::arg("seconds") = 0.0,
             py::arg("poll_seconds") = 0.05)
        .def_property_readonly("t", &Fused::t)
        .def_property_readonly("recorded", &Fused::recorded)
        .def("state", &Fused::state)
        .def("last", &Fused::last)
        .def("max_error", &Fused::max_error)
        .def("records", &Fused::records, py::arg("start"))
        .def("forget", &Fused::forget, py::arg("upto"));
    py::class_<Flow>(m, "FlowLoop",
                     "The gradient flow's step loop in C++ (cpp/flow.hpp), over a FusedLoop.")
        .def(py::init<Fused&, const std::vector<std::vector<double>>&, std::vector<double>,
                      std::vector<double>, double, double, double, double, double,
                      const std::vector<int>&, const std::vector<int64_t>&,
                      const std::vector<std::vector<int>>&, const std::vector<double>&>(),
             py::arg("fused"), py::arg("a"), py::arg("b"), py::arg("e"), py::arg("exponent"),
             py::arg("safety"), py::arg("min_factor"), py::arg("max_factor"),
             py::arg("min_step"), py::arg("kind"), py::arg("cls"), py::arg("others"),
             py::arg("level"), py::keep_alive<1, 2>())
        .def("set_state", &Flow::set_state, py::arg("t"), py::arg("y"), py::arg("f"),
             py::arg("h"), py::arg("index"), py::arg("values"), py::arg("found"))
        .def("run", &Flow::run, py::arg("tau"), py::arg("rtol"), py::arg("max_steps"),
             py::arg("threads"), py::arg("seconds") = 0.0, py::arg("poll_seconds") = 0.05)
        .def("commit", &Flow::commit)
        .def_property_readonly("t", &Flow::t)
        .def_property_readonly("h", &Flow::h)
        .def_property_readonly("evaluations", &Flow::evaluations)
        .def_property_readonly("recorded", &Flow::recorded)
        .def("y", &Flow::y)
        .def("held", &Flow::held)
        .def("records", &Flow::records, py::arg("start"))
        .def("forget", &Flow::forget, py::arg("upto"));
    py::class_<mimfast::PointSet, mimfast::ClassEval, std::shared_ptr<mimfast::PointSet>>(
        m, "ClassPoints", "A class's Gauss–Hahn point set, copied and validated for the kernel.")
        .def(py::init(&make_points), py::arg("counts"), py::arg("rest"), py::arg("centre"),
             py::arg("node_x"), py::arg("node_w"), py::arg("inner"), py::arg("last"),
             py::arg("blocks"), py::arg("sizes"), py::arg("s_a"), py::arg("s_b"),
             py::arg("inv_areas"), py::arg("inv_sizes"));
    m.def("gauss_rules", &gauss_rules, py::arg("diag"), py::arg("off"),
          "Golub–Welsch: nodes (ascending) and weights of the Gauss rules of Jacobi matrices.");
    m.def("openmp_enabled", &mimfast::openmp_enabled, "Whether the kernel was built with OpenMP.");
    m.def("max_threads", &mimfast::max_threads, "Threads the kernel uses by default.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "mimfast's compiled kernel (private; use mimfast.simulate).";
    bind_kernel(m);
}
