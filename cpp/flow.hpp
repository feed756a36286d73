// The gradient flow's step loop in C++: the stages of an explicit embedded Runge–Kutta pair, its
// error norm and step-size control (mimfast/flow.py), with the class evaluations of a FusedLoop,
// for as many accepted steps as it can. It does what the Python loop of mimfast/flow.py does,
// operation for operation, so both give the same bytes with the same evaluator. It hands control
// back to record (records are kept here until taken), to locate an event (a step where an event
// function rises through 0 is held until commit()), to grow quadrature rules (an evaluation whose
// estimate misses its tolerance is retried after set_evaluators() on the FusedLoop), and to look
// for interrupts. No Python types here.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "fused.hpp"

namespace mimfast {

// An explicit embedded pair whose last stage is the derivative at the new point (FSAL). The
// coefficients and constants come from the caller (mimfast/flow.py, DP54), never from here.
struct Tableau {
    int stages = 0;         // s: stages 0 .. s-1 make the step, stage s is the new derivative
    std::vector<double> a;  // s x s, row-major: stage i takes a[i][0 .. i-1]
    std::vector<double> b;  // s: the solution's weights
    std::vector<double> e;  // s + 1: the error estimate's weights
    double exponent = 0;    // of the error in the step factor (-1 / order)
    double safety = 0, min_factor = 0, max_factor = 0;
    double min_step = 0;    // relative to the flow time: a smaller step is no step
};

// An event function of one class, rising through 0 at the event (mimfast/flow.py).
struct FlowEvent {
    enum Kind : int { switch_ = 0, t_eps = 1, global_min = 2 };
    int kind = 0;
    int64_t cls = 0;          // the class, in the FusedLoop's order
    // Key categories: switch, those whose |dL/dA| the own one must reach; T_eps, those of the
    // own area (their attention is summed); global_min, the global area's (the first counts).
    std::vector<int> others;
    double level = 0;         // T_eps: 1 - epsilon
};

enum class FlowStatus : int {
    done = 0,         // reached tau
    chunk = 1,        // `seconds` passed (the caller's callbacks)
    nonfinite = 2,    // no step small enough keeps the stages finite
    tolerance = 3,    // an evaluation's estimate missed its tolerance (retried on the next run)
    interrupted = 4,  // poll() said so
    event = 5,        // an accepted step crosses events (held: see crossed(), commit())
    steps = 6,        // max_steps accepted steps
};

struct FlowLimits {
    double tau = 0;             // the flow time to reach
    double rtol = 0;            // of the step's error norm
    int64_t max_steps = 0;      // accepted steps of this run, counted from set_state()
    double seconds = 0.0;       // return after a step once this much time passed (0: never)
    double poll_seconds = 0.05; // call poll() at most this often
};

class FlowLoop {
   public:
    // `eval` evaluates the field; it must outlive the loop.
    FlowLoop(FusedLoop& eval, Tableau tab, std::vector<FlowEvent> events);

    int64_t n_state() const { return n_; }
    int64_t n_events() const { return static_cast<int64_t>(events_.size()); }

    // Start from flow time t, state y with field f = -grad L(y) and event values `values`, next
    // step size h; the next accepted step is record `index`; events with found[j] are done.
    void set_state(double t, const double* y, const double* f, double h, int64_t index,
                   const double* values, const unsigned char* found);

    FlowStatus run(const FlowLimits& lim, int threads, const std::function<bool()>& poll);
    // Record the held step (after Status::event) and go on from it.
    void commit();

    double t() const { return t_; }
    double h() const { return h_; }
    const std::vector<double>& y() const { return y_; }
    int64_t evaluations() const { return evals_; }
    int64_t steps() const { return steps_; }
    // The held step: from t() to held_t() with step size held_h() and stages K (s + 1 rows of
    // n_state);
    // the events it crosses and their values at both ends.
    double held_h() const { return step_h_; }
    double held_t() const { return t_new_; }
    const std::vector<double>& stages() const { return K_; }
    const std::vector<int64_t>& crossed() const { return crossed_; }
    const std::vector<double>& values() const { return values_; }
    const std::vector<double>& new_values() const { return new_values_; }

    // Records of accepted steps, numbered from 0 since construction; as in FusedLoop.
    struct Records : FusedLoop::Records {
        std::vector<double> tau, next_h;
    };
    const Records& records() const { return rec_; }
    int64_t recorded() const { return first_ + static_cast<int64_t>(rec_.steps.size()); }
    int64_t forgotten() const { return first_; }
    void forget(int64_t upto);

   private:
    bool field(const double* x, double* out, int threads);
    void combine(const double* w, int n, double h, double* out) const;
    void event_values(std::vector<double>& out) const;

    FusedLoop& eval_;
    Tableau tab_;
    std::vector<FlowEvent> events_;
    int64_t n_;
    double t_ = 0, h_ = 0, step_h_ = 0, t_new_ = 0, h_next_ = 0;
    int stage_ = 1;  // the next stage to evaluate (1 .. s); s is the new point
    bool held_ = false;
    int64_t index_ = 0, evals_ = 0, steps_ = 0;
    std::vector<double> y_, K_, x_, ynew_, values_, new_values_;
    std::vector<unsigned char> found_;
    std::vector<int64_t> crossed_;
    // the evaluation at the new point, kept for its record
    std::vector<double> g_new_, att_new_, ploss_new_, err_new_;
    double loss_new_ = 0;
    Records rec_;
    int64_t first_ = 0;
};

}  // namespace mimfast
