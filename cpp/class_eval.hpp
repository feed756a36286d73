// Evaluators of one query class: anything that turns the class's key weights into the sums of
// docs/model.md §3. The fused GD loop (fused.hpp) takes a list of them, one per class, and does
// not care how they sum: over an exact count grid (ExactGrid below) or over a weighted point set
// (quadrature, docs/model.md §8). No Python types here.
#pragma once
#include <cstdint>
#include <vector>

#include "kernel.hpp"

namespace mimfast {

class ClassEval {
   public:
    virtual ~ClassEval() = default;
    // Number of key categories n (category 0: the query's own area).
    virtual int n_cat() const = 0;
    // The n_sums(n) sums [mass, loss, dB_self, alpha[n], dA[n], dB[n]] into out, for latents
    // z[n], key weights wu[n], wm[n] and wself, and optionally the weights of the points
    // without an unmasked own-area key (Inputs in kernel.hpp). The result must not depend on
    // `threads`.
    virtual void sums(const double* z, const double* wu, const double* wm, double wself,
                      int threads, double* out, const double* wu0 = nullptr,
                      const double* wm0 = nullptr, double wself0 = 0.0) const = 0;
};

// The arrays of one class count grid (see mimfast/grid.py, ClassGrid) and its per-category
// constants, owned.
struct GridArrays {
    int n_cat = 0, inner = 0, last = 0;
    std::vector<int64_t> counts, rest, lo, hi, blocks;  // counts n_rows x n_cat, blocks n x 3
    std::vector<double> row_weight, t_inner, t_last;
    int64_t off_inner = 0, off_last = 0;
    std::vector<double> sizes, s_a, s_b, inv_areas, inv_sizes;
};

// The exact expectation over a count grid (kernel.cpp). It owns its arrays, so nothing done to
// the arrays it was built from can reach it; the constructor validates them
// (std::invalid_argument).
class ExactGrid final : public ClassEval {
   public:
    explicit ExactGrid(GridArrays arrays);
    int n_cat() const override { return a_.n_cat; }
    void sums(const double* z, const double* wu, const double* wm, double wself, int threads,
              double* out, const double* wu0, const double* wm0, double wself0) const override;

   private:
    GridArrays a_;
    Grid g_;
    Inputs in_;
};

// The arrays of one weighted point set (see mimfast/quadrature.py, ClassPoints), owned.
struct PointArrays {
    int n_cat = 0, inner = 0, last = 0;
    std::vector<double> counts, rest, centre, node_x, node_w;  // counts n_rows x n_cat
    std::vector<int64_t> blocks;                               // n x 3: row, first, stop
    std::vector<double> sizes, s_a, s_b, inv_areas, inv_sizes;
};

// The expectation over a Gauss–Hahn point set (docs/model.md §8), summed by the same kernel
// as a count grid (kernel.cpp): a row's inner count runs over node offsets instead of
// consecutive integers.
class PointSet final : public ClassEval {
   public:
    explicit PointSet(PointArrays arrays);
    int n_cat() const override { return a_.n_cat; }
    void sums(const double* z, const double* wu, const double* wm, double wself, int threads,
              double* out, const double* wu0, const double* wm0, double wself0) const override;

   private:
    PointArrays a_;
    Grid g_;
    Inputs in_;
};

}  // namespace mimfast
