// The fused GD loop (fused.hpp). Every floating-point operation here mirrors the Python loop
// (mimfast/model.py class_inputs and evaluate, mimfast/simulate.py): same operands, same order,
// no contraction into fused multiply-adds (CMake builds this file with -ffp-contract=off), so
// the two loops give the same bytes with the same evaluator.
#include "fused.hpp"

// (also here: with link-time optimisation the command-line flag alone does not hold)
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>

namespace mimfast {
namespace {

// The error estimate of a class from the sums `a` used for the step and the sums `b` of its
// check evaluator: the largest normwise relative difference |a - b| / |a| of three parts, the
// gradient (dB_self, dA, dB), the attention (alpha) and the loss; 0 where a part agrees, and
// infinite where it differs from a zero reference. (mimfast/quadrature.py, sums_error.)
double difference(int n, const double* a, const double* b) {
    double out = 0.0;
    const auto part = [&](std::initializer_list<std::pair<int, int>> ranges) {
        double d = 0.0, r = 0.0, top = 0.0;  // scaled by the largest |a|: no squares underflow
        for (const auto& [first, stop] : ranges)
            for (int i = first; i < stop; ++i) top = std::max(top, std::fabs(a[i]));
        if (top == 0) top = 1.0;
        for (const auto& [first, stop] : ranges)
            for (int i = first; i < stop; ++i) {
                const double e = (a[i] - b[i]) / top, f = a[i] / top;
                d += e * e;
                r += f * f;
            }
        if (d > 0) out = std::max(out, r > 0 ? std::sqrt(d) / std::sqrt(r) : HUGE_VAL);
    };
    part({{2, 3}, {3 + n, 3 + 3 * n}});  // gradient
    part({{3, 3 + n}});                  // attention
    part({{1, 2}});                      // loss
    return out;
}

// The kernel's rounding estimate of sums `a` (the largest of its three parts).
double rounding(int n, const double* a) {
    const double* b = a + n_sums(n);
    return std::max(b[0], std::max(b[1], b[2]));
}

}  // namespace

FusedLoop::FusedLoop(std::vector<FusedClass> classes, int64_t n_state)
    : classes_(std::move(classes)), n_state_(n_state) {
    if (n_state < 0) throw std::invalid_argument("fused loop: negative state size");
    size_t widest = 0;
    for (size_t i = 0; i < classes_.size(); ++i) {
        const FusedClass& c = classes_[i];
        const std::string where = "fused loop: class " + std::to_string(i) + ": ";
        if (!c.eval) throw std::invalid_argument(where + "no evaluator");
        const int64_t n = c.eval->n_cat();
        if (n < 1 || static_cast<int64_t>(c.z.size()) != n ||
            static_cast<int64_t>(c.live.size()) != n)
            throw std::invalid_argument(where + "z and live must have one entry per category");
        if (c.check && c.check->n_cat() != n)
            throw std::invalid_argument(where + "the check evaluator has another category count");
        if (c.a_off < 0 || c.a_off + n > n_state)
            throw std::invalid_argument(where + "its fp row leaves the state");
        if (c.p_off != -1 && (c.p_off < 0 || c.p_off + 1 + n > n_state))
            throw std::invalid_argument(where + "its pp row leaves the state");
        att_off_.push_back(n_att_);
        n_att_ += n;
        widest = std::max(widest, static_cast<size_t>(n));
    }
    state_.assign(n_state, 0.0);
    next_.assign(n_state, 0.0);
    grad_.assign(n_state, 0.0);
    att_.assign(n_att_, 0.0);
    ploss_.assign(classes_.size(), 0.0);
    err_.assign(classes_.size(), 0.0);
    max_err_.assign(classes_.size(), 0.0);
    sums_.assign(n_out(static_cast<int>(widest)), 0.0);
    check_.assign(sums_.size(), 0.0);
    wu_.assign(widest, 0.0);
    wm_.assign(widest, 0.0);
    wu0_.assign(widest, 0.0);
    wm0_.assign(widest, 0.0);
    lu_.assign(widest, 0.0);
}

void FusedLoop::set_state(int64_t t, const double* s, int64_t last_recorded) {
    if (t < 0) throw std::invalid_argument("fused loop: negative step");
    t_ = t;
    last_recorded_ = last_recorded;
    std::copy(s, s + n_state_, state_.begin());
}

void FusedLoop::set_evaluators(int64_t i, std::shared_ptr<const ClassEval> eval,
                               std::shared_ptr<const ClassEval> check, double tol,
                               int64_t accept) {
    if (i < 0 || i >= n_classes()) throw std::invalid_argument("fused loop: no such class");
    FusedClass& c = classes_[i];
    const int n = static_cast<int>(c.z.size());
    if (!eval || eval->n_cat() != n || (check && check->n_cat() != n))
        throw std::invalid_argument("fused loop: the new evaluators must have " +
                                    std::to_string(n) + " categories");
    if (!(tol >= 0)) throw std::invalid_argument("fused loop: tol must be >= 0");
    c.eval = std::move(eval);
    c.check = std::move(check);
    c.tol = tol;
    c.accept = accept;
}

void FusedLoop::set_named(int64_t i, std::vector<int64_t> named) {
    if (i < 0 || i >= n_classes()) throw std::invalid_argument("fused loop: no such class");
    FusedClass& c = classes_[i];
    if (named.size() != c.z.size())
        throw std::invalid_argument("fused loop: named must have one entry per category");
    validate_named(named.data(), static_cast<int>(named.size()));
    c.named = std::move(named);
}

// mimfast/model.py: class_inputs, then evaluate's accumulation, class by class.
void FusedLoop::evaluate(int threads) {
    std::fill(grad_.begin(), grad_.end(), 0.0);
    loss_ = 0.0;
    for (size_t i = 0; i < classes_.size(); ++i) {
        const FusedClass& c = classes_[i];
        const int n = static_cast<int>(c.z.size());
        const double* A = &state_[c.a_off];
        const double* B = c.p_off >= 0 ? &state_[c.p_off + 1] : nullptr;
        const double b_self = c.p_off >= 0 ? state_[c.p_off] : 0.0;
        // the largest logit, first maximum in the order self, unmasked keys, masked keys
        double top = b_self;
        for (int k = 0; k < n; ++k) {
            lu_[k] = c.z[k] * A[k] + (B ? B[k] : 0.0);
            if (c.live[k] && lu_[k] > top) top = lu_[k];
        }
        for (int k = 0; k < n; ++k) {
            const double b = B ? B[k] : 0.0;
            if (c.live[k] && b > top) top = b;
        }
        for (int k = 0; k < n; ++k) {
            wu_[k] = c.live[k] ? std::exp(lu_[k] - top) : 0.0;
            wm_[k] = c.live[k] ? std::exp((B ? B[k] : 0.0) - top) : 0.0;
        }
        const double wself = std::exp(b_self - top);
        // the largest logit but the own area's unmasked one; far below it, the points without
        // an unmasked own-area key get weights of their own (mimfast/model.py, class_inputs)
        double top0 = b_self;
        for (int k = 0; k < n; ++k) {
            const double b = B ? B[k] : 0.0;
            if (c.live[k] && k > 0 && lu_[k] > top0) top0 = lu_[k];
            if (c.live[k] && b > top0) top0 = b;
        }
        const bool alt = c.live[0] && lu_[0] - top0 > OWN_LEAD;
        double wself0 = 0.0;
        if (alt) {
            for (int k = 0; k < n; ++k) {
                wu0_[k] = c.live[k] && k > 0 ? std::exp(lu_[k] - top0) : 0.0;
                wm0_[k] = c.live[k] ? std::exp((B ? B[k] : 0.0) - top0) : 0.0;
            }
            wself0 = std::exp(b_self - top0);
        }
        const double* pu0 = alt ? wu0_.data() : nullptr;
        const double* pm0 = alt ? wm0_.data() : nullptr;
        double* s = sums_.data();
        const int64_t* named = c.named.empty() ? nullptr : c.named.data();
        c.eval->sums(c.z.data(), wu_.data(), wm_.data(), wself, threads, s, pu0, pm0, wself0,
                     named);
        if (c.check) {
            c.check->sums(c.z.data(), wu_.data(), wm_.data(), wself, threads, check_.data(), pu0,
                          pm0, wself0, named);
            err_[i] = std::max(difference(n, s, check_.data()), rounding(n, s));
        } else {
            err_[i] = rounding(n, s);
        }
        max_err_[i] = std::max(max_err_[i], err_[i]);
        for (int k = 0; k < n; ++k) {
            grad_[c.a_off + k] = c.coef * s[3 + n + k];
            att_[att_off_[i] + k] = s[3 + k];
        }
        ploss_[i] = s[1];
        loss_ += c.coef_loss * s[1];
        if (c.p_off >= 0) {
            grad_[c.p_off] += c.coef * s[2];
            for (int k = 0; k < n; ++k) grad_[c.p_off + 1 + k] += c.coef * s[3 + 2 * n + k];
        }
    }
}

void FusedLoop::evaluate_at(const double* s, int threads) {
    std::copy(s, s + n_state_, state_.begin());
    evaluate(threads);
}

bool FusedLoop::within_tol(int64_t mark) const {
    for (size_t i = 0; i < classes_.size(); ++i)
        if (classes_[i].tol > 0 && classes_[i].accept != mark && !(err_[i] <= classes_[i].tol))
            return false;
    return true;
}

void FusedLoop::record() {
    rec_.steps.push_back(t_);
    rec_.loss.push_back(loss_);
    rec_.state.insert(rec_.state.end(), state_.begin(), state_.end());
    rec_.grad.insert(rec_.grad.end(), grad_.begin(), grad_.end());
    rec_.attention.insert(rec_.attention.end(), att_.begin(), att_.end());
    rec_.patch_loss.insert(rec_.patch_loss.end(), ploss_.begin(), ploss_.end());
    rec_.error.insert(rec_.error.end(), err_.begin(), err_.end());
    last_recorded_ = t_;
}

void FusedLoop::forget(int64_t upto) {
    const int64_t drop = std::min(upto, recorded()) - first_;
    if (drop <= 0) return;
    const auto cut = [drop](auto& v, int64_t width) {
        v.erase(v.begin(), v.begin() + drop * width);
    };
    cut(rec_.steps, 1);
    cut(rec_.loss, 1);
    cut(rec_.state, n_state_);
    cut(rec_.grad, n_state_);
    cut(rec_.attention, n_att_);
    cut(rec_.patch_loss, n_classes());
    cut(rec_.error, n_classes());
    first_ += drop;
}

Status FusedLoop::run(const RunLimits& lim, double eta, int threads,
                      const std::function<bool()>& poll) {
    if (lim.record_every < 1) throw std::invalid_argument("fused loop: record_every < 1");
    if (t_ > lim.steps) throw std::invalid_argument("fused loop: already past the last step");
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    auto polled = start;
    const auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
    for (;;) {
        evaluate(threads);
        if (!within_tol(t_)) return Status::tolerance;
        if ((t_ % lim.record_every == 0 || t_ == lim.steps) && t_ > last_recorded_) record();
        if (t_ >= lim.steps) return Status::done;
        bool finite = true;
        for (int64_t i = 0; i < n_state_; ++i) {
            next_[i] = state_[i] - eta * grad_[i];
            finite = finite && std::isfinite(next_[i]);
        }
        if (!finite) return Status::nonfinite;
        const bool stop = lim.stop_every > 0 && t_ % lim.stop_every == 0;
        std::swap(state_, next_);
        ++t_;
        if (t_ == lim.steps || stop) return Status::chunk;
        const auto now = clock::now();
        if (lim.seconds > 0 && seconds(now - start) >= lim.seconds) return Status::chunk;
        if (poll && seconds(now - polled) >= lim.poll_seconds) {
            polled = now;
            if (poll()) return Status::interrupted;
        }
    }
}

}  // namespace mimfast
