// The fused GD loop: the state, the class inputs, the update and the record of a whole run (or a
// chunk of it) in C++, so a step costs only its class evaluations. It does exactly what the
// Python loop of mimfast/simulate.py does with the same evaluator, operation for operation, so
// both give the same bytes. No Python types here: the caller supplies `poll`, which says whether
// the run was interrupted.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "class_eval.hpp"

namespace mimfast {

// One query class (k, h) and where it lives in the flat state.
struct FusedClass {
    std::shared_ptr<const ClassEval> eval;   // the sums used for the step
    std::shared_ptr<const ClassEval> check;  // optional: evaluated too, the difference is the
                                             // error estimate (e.g. a coarser quadrature rule)
    std::vector<double> z;                   // latents per category
    std::vector<unsigned char> live;         // categories with key positions
    int64_t a_off = 0;                       // row A of fp[k][h] in the state
    int64_t p_off = -1;                      // row (B_self, B...) of pp[h], or -1 (PP frozen)
    double coef = 0.0;                       // pi_k m / P
    double coef_loss = 0.0;                  // pi_k m / P * patches of the class's group
    double tol = 0.0;  // run() returns before a step whose error estimate exceeds it (0: never)
    int64_t accept = -1;  // a step whose estimate passes whatever it is (the caller found that
                          // no refinement meets tol there)
    std::vector<int64_t> named;  // the class's named areas (Inputs::named), empty: none
};

// How far the own area's unmasked logit must lead every other logit of a class before the count
// points without an unmasked own-area key get weights of their own (mimfast.model.OWN_LEAD).
constexpr double OWN_LEAD = 100.0;

enum class Status : int { done = 0, chunk = 1, nonfinite = 2, tolerance = 3, interrupted = 4 };

// When run() hands control back before the end of the run.
struct RunLimits {
    int64_t steps = 0;           // the run's last step (run() also returns right on reaching it)
    int64_t record_every = 1;    // record steps 0, record_every, ... and `steps`
    int64_t stop_every = 0;      // return after each step from a multiple of stop_every
    double seconds = 0.0;        // return after a step once this much time passed (0: never)
    double poll_seconds = 0.05;  // call poll() at most this often
};

class FusedLoop {
   public:
    FusedLoop(std::vector<FusedClass> classes, int64_t n_state);

    int64_t n_state() const { return n_state_; }
    int64_t n_attention() const { return n_att_; }
    int64_t n_classes() const { return static_cast<int64_t>(classes_.size()); }

    // Start (or continue) from state s at step t; steps <= last_recorded are not recorded again.
    void set_state(int64_t t, const double* s, int64_t last_recorded);
    // Replace class i's evaluators, tolerance and accepted step (after a refinement); same
    // category count.
    void set_evaluators(int64_t i, std::shared_ptr<const ClassEval> eval,
                        std::shared_ptr<const ClassEval> check, double tol, int64_t accept = -1);
    // Give class i named areas (Inputs::named in kernel.hpp; one entry per category).
    void set_named(int64_t i, std::vector<int64_t> named);
    int64_t t() const { return t_; }
    const std::vector<double>& state() const { return state_; }

    // Step until the run ends or a limit in `lim` hands control back; see Status. On
    // Status::tolerance the state and t stay at the step whose estimate was too large.
    Status run(const RunLimits& lim, double eta, int threads, const std::function<bool()>& poll);

    // The evaluation that made the last step (or the last evaluation): gradient (laid out as
    // the state), loss, attention, patch loss and error estimate per class.
    const std::vector<double>& grad() const { return grad_; }
    double loss() const { return loss_; }
    const std::vector<double>& attention() const { return att_; }
    const std::vector<double>& patch_loss() const { return ploss_; }
    const std::vector<double>& error() const { return err_; }
    // Largest error estimate of each class over every evaluation since construction.
    const std::vector<double>& max_error() const { return max_err_; }

    // One evaluation at state s (which state() becomes), read as after run(): the gradient
    // flow's stages (flow.hpp).
    void evaluate_at(const double* s, int threads);
    // Whether every class's last error estimate is within its tolerance, or accepted at `mark`.
    bool within_tol(int64_t mark) const;
    const FusedClass& fused_class(int64_t i) const { return classes_[i]; }
    int64_t att_offset(int64_t i) const { return att_off_[i]; }

    // Records, numbered from 0 since construction; those before forgotten() are dropped.
    struct Records {
        std::vector<int64_t> steps;
        std::vector<double> loss, state, grad, attention, patch_loss, error;
    };
    const Records& records() const { return rec_; }
    int64_t recorded() const { return first_ + static_cast<int64_t>(rec_.steps.size()); }
    int64_t forgotten() const { return first_; }
    void forget(int64_t upto);

   private:
    void evaluate(int threads);
    void record();

    std::vector<FusedClass> classes_;
    int64_t n_state_, n_att_ = 0;
    std::vector<int64_t> att_off_;
    int64_t t_ = 0, last_recorded_ = -1;
    std::vector<double> state_, next_, grad_, att_, ploss_, err_, max_err_, sums_, check_;
    std::vector<double> wu_, wm_, lu_, wu0_, wm0_;
    double loss_ = 0.0;
    Records rec_;
    int64_t first_ = 0;
};

}  // namespace mimfast
