// The gradient flow's step loop (flow.hpp). Every floating-point operation mirrors the Python
// loop of mimfast/flow.py (same operands, same order, no contraction into fused multiply-adds:
// CMake builds this file with -ffp-contract=off), so the two loops give the same bytes.
#include "flow.hpp"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace mimfast {

FlowLoop::FlowLoop(FusedLoop& eval, Tableau tab, std::vector<FlowEvent> events)
    : eval_(eval), tab_(std::move(tab)), events_(std::move(events)), n_(eval.n_state()) {
    const int s = tab_.stages;
    if (s < 1 || static_cast<int>(tab_.a.size()) != s * s ||
        static_cast<int>(tab_.b.size()) != s || static_cast<int>(tab_.e.size()) != s + 1)
        throw std::invalid_argument("flow loop: the tableau needs a (s, s), b (s), e (s + 1)");
    if (n_ < 1) throw std::invalid_argument("flow loop: an empty state");
    for (const FlowEvent& ev : events_) {
        if (ev.kind < 0 || ev.kind > 2 || ev.cls < 0 || ev.cls >= eval.n_classes())
            throw std::invalid_argument("flow loop: an event of no kind or class");
        const int64_t n_cat = static_cast<int64_t>(eval.fused_class(ev.cls).z.size());
        for (int c : ev.others)
            if (c < 0 || c >= n_cat)
                throw std::invalid_argument("flow loop: an event's category is not its class's");
        if (ev.kind == FlowEvent::global_min && n_cat < 2)
            throw std::invalid_argument("flow loop: global_min needs a second category");
    }
    y_.assign(n_, 0.0);
    K_.assign((s + 1) * n_, 0.0);
    x_.assign(n_, 0.0);
    ynew_.assign(n_, 0.0);
    values_.assign(events_.size(), 0.0);
    new_values_.assign(events_.size(), 0.0);
    found_.assign(events_.size(), 0);
}

void FlowLoop::set_state(double t, const double* y, const double* f, double h, int64_t index,
                         const double* values, const unsigned char* found) {
    if (!(h > 0)) throw std::invalid_argument("flow loop: the step size must be positive");
    t_ = t;
    h_ = h;
    index_ = index;
    std::copy(y, y + n_, y_.begin());
    std::copy(f, f + n_, K_.begin());
    std::copy(values, values + events_.size(), values_.begin());
    std::copy(found, found + events_.size(), found_.begin());
    stage_ = 1;
    held_ = false;
    steps_ = 0;
    crossed_.clear();
}

// out = y + h * (w[0] K[0] + w[1] K[1] + ... + w[m-1] K[m-1]), summed in that order.
void FlowLoop::combine(const double* w, int m, double h, double* out) const {
    for (int64_t i = 0; i < n_; ++i) {
        double acc = w[0] * K_[i];
        for (int j = 1; j < m; ++j) acc = acc + w[j] * K_[j * n_ + i];
        out[i] = y_[i] + h * acc;
    }
}

// -grad L at x into out (all NaN, with no evaluation, where x is not finite); false, with
// nothing counted, when a class's estimate misses its tolerance.
bool FlowLoop::field(const double* x, double* out, int threads) {
    for (int64_t i = 0; i < n_; ++i)
        if (!std::isfinite(x[i])) {
            std::fill(out, out + n_, std::numeric_limits<double>::quiet_NaN());
            return true;
        }
    eval_.evaluate_at(x, threads);
    if (!eval_.within_tol(evals_)) return false;
    ++evals_;
    const std::vector<double>& g = eval_.grad();
    for (int64_t i = 0; i < n_; ++i) out[i] = -g[i];
    return true;
}

// mimfast/flow.py, _event_value: each event function at the FusedLoop's last evaluation.
void FlowLoop::event_values(std::vector<double>& out) const {
    const std::vector<double>& g = eval_.grad();
    for (size_t j = 0; j < events_.size(); ++j) {
        const FlowEvent& ev = events_[j];
        const double* row = &g[eval_.fused_class(ev.cls).a_off];
        if (ev.kind == FlowEvent::switch_) {
            double top = 0.0;
            for (size_t i = 0; i < ev.others.size(); ++i) {
                const double v = std::fabs(row[ev.others[i]]);
                if (i == 0 || v > top) top = v;
            }
            out[j] = std::fabs(row[0]) - top;
        } else if (ev.kind == FlowEvent::t_eps) {  // the own area's categories, in order
            const double* att = &eval_.attention()[eval_.att_offset(ev.cls)];
            double own = 0.0;
            for (const int c : ev.others) own += att[c];
            out[j] = own - ev.level;
        } else {
            out[j] = -row[ev.others[0]];
        }
    }
}

FlowStatus FlowLoop::run(const FlowLimits& lim, int threads, const std::function<bool()>& poll) {
    if (held_) throw std::logic_error("flow loop: a held step awaits commit()");
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    auto polled = start;
    const auto seconds = [](clock::duration d) { return std::chrono::duration<double>(d).count(); };
    const int s = tab_.stages;
    for (;;) {
        if (stage_ == 1) {  // a new try
            if (!(t_ < lim.tau)) return FlowStatus::done;
            if (steps_ >= lim.max_steps) return FlowStatus::steps;
            h_ = std::min(h_, lim.tau - t_);
        }
        for (; stage_ <= s; ++stage_) {
            const auto now = clock::now();
            if (seconds(now - polled) >= lim.poll_seconds) {
                polled = now;
                if (poll()) return FlowStatus::interrupted;
            }
            double* x = stage_ < s ? x_.data() : ynew_.data();
            combine(stage_ < s ? &tab_.a[stage_ * s] : tab_.b.data(), stage_, h_, x);
            if (!field(x, &K_[stage_ * n_], threads)) return FlowStatus::tolerance;
        }
        stage_ = 1;
        double sum = 0.0;
        for (int64_t i = 0; i < n_; ++i) {
            double acc = tab_.e[0] * K_[i];
            for (int j = 1; j <= s; ++j) acc = acc + tab_.e[j] * K_[j * n_ + i];
            const double scale = lim.rtol * (1.0 + std::max(std::fabs(y_[i]), std::fabs(ynew_[i])));
            const double v = h_ * acc / scale;
            sum += v * v;
        }
        const double err = std::sqrt(sum / static_cast<double>(n_));
        if (!std::isfinite(err)) {  // a stage left the finite states: a much smaller step
            if (h_ <= tab_.min_step * std::max(t_, lim.tau * 1e-300)) return FlowStatus::nonfinite;
            h_ *= tab_.min_factor;
            continue;
        }
        if (err > 1.0) {
            h_ *= std::max(tab_.min_factor, tab_.safety * std::pow(err, tab_.exponent));
            continue;
        }
        step_h_ = h_;
        t_new_ = h_ == lim.tau - t_ ? lim.tau : t_ + h_;
        h_next_ = h_ * (err > 0 ? std::min(tab_.max_factor, tab_.safety * std::pow(err, tab_.exponent))
                                : tab_.max_factor);
        g_new_ = eval_.grad();
        att_new_ = eval_.attention();
        ploss_new_ = eval_.patch_loss();
        err_new_ = eval_.error();
        loss_new_ = eval_.loss();
        event_values(new_values_);
        crossed_.clear();
        for (size_t j = 0; j < events_.size(); ++j)
            if (!found_[j] && values_[j] < 0 && 0 <= new_values_[j])
                crossed_.push_back(static_cast<int64_t>(j));
        held_ = true;
        if (!crossed_.empty()) return FlowStatus::event;
        commit();
        if (lim.seconds > 0 && seconds(clock::now() - start) >= lim.seconds)
            return FlowStatus::chunk;
    }
}

void FlowLoop::commit() {
    if (!held_) throw std::logic_error("flow loop: no held step to commit");
    rec_.steps.push_back(index_);
    rec_.tau.push_back(t_new_);
    rec_.next_h.push_back(h_next_);
    rec_.loss.push_back(loss_new_);
    rec_.state.insert(rec_.state.end(), ynew_.begin(), ynew_.end());
    rec_.grad.insert(rec_.grad.end(), g_new_.begin(), g_new_.end());
    rec_.attention.insert(rec_.attention.end(), att_new_.begin(), att_new_.end());
    rec_.patch_loss.insert(rec_.patch_loss.end(), ploss_new_.begin(), ploss_new_.end());
    rec_.error.insert(rec_.error.end(), err_new_.begin(), err_new_.end());
    const int s = tab_.stages;
    t_ = t_new_;
    std::swap(y_, ynew_);
    std::copy(K_.begin() + s * n_, K_.begin() + (s + 1) * n_, K_.begin());
    std::swap(values_, new_values_);
    for (int64_t j : crossed_) found_[j] = 1;
    crossed_.clear();
    h_ = h_next_;
    ++index_;
    ++steps_;
    held_ = false;
}

void FlowLoop::forget(int64_t upto) {
    const int64_t drop = std::min(upto, recorded()) - first_;
    if (drop <= 0) return;
    const auto cut = [drop](auto& v, int64_t width) {
        v.erase(v.begin(), v.begin() + drop * width);
    };
    const int64_t nc = eval_.n_classes();
    cut(rec_.steps, 1);
    cut(rec_.tau, 1);
    cut(rec_.next_h, 1);
    cut(rec_.loss, 1);
    cut(rec_.state, n_);
    cut(rec_.grad, n_);
    cut(rec_.attention, eval_.n_attention());
    cut(rec_.patch_loss, nc);
    cut(rec_.error, nc);
    first_ += drop;
}

}  // namespace mimfast
