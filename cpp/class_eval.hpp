// Evaluators of one query class: anything that turns the class's key weights into the sums of
// docs/model.md §3. The fused GD loop (fused.hpp) takes a list of them, one per class, and does
// not care how they sum: over an exact count grid (ExactGrid below) or over a weighted point set
// (quadrature, docs/model.md §8). No Python types here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernel.hpp"

namespace mimfast {

class ClassEval {
   public:
    virtual ~ClassEval() = default;
    // Number of key categories n (category 0: the query's own area).
    virtual int n_cat() const = 0;
    // The n_out(n) outputs [mass, loss, dB_self, alpha[n], dA[n], dB[n], rounding[3]] into
    // out (kernel.hpp), for latents
    // z[n], key weights wu[n], wm[n] and wself, and optionally the weights of the points
    // without an unmasked own-area key, and the class's named areas (Inputs in kernel.hpp).
    // The result must not depend on `threads`.
    virtual void sums(const double* z, const double* wu, const double* wm, double wself,
                      int threads, double* out, const double* wu0 = nullptr,
                      const double* wm0 = nullptr, double wself0 = 0.0,
                      const int64_t* named = nullptr) const = 0;
};

// The per-category constants of a class (see mimfast/grid.py, category_constants), owned.
struct CategoryArrays {
    std::vector<double> sizes, s_a, s_b, inv_areas, inv_sizes;
};

// What the two evaluators below share: the kernel's view of their arrays (kernel.cpp) and the
// per-category constants; they differ only in how they set that view up.
class KernelEval : public ClassEval {
   public:
    int n_cat() const override { return g_.n_cat; }
    void sums(const double* z, const double* wu, const double* wm, double wself, int threads,
              double* out, const double* wu0, const double* wm0, double wself0,
              const int64_t* named) const override;

   protected:
    // Point the inputs at `c` (owned by the derived class), after checking that each constant
    // has g_.n_cat entries (std::invalid_argument, messages start with `what`).
    void set_categories(const CategoryArrays& c, const std::string& what);
    Grid g_;
    Inputs in_;
};

// The arrays of one class count grid (see mimfast/grid.py, ClassGrid), owned.
struct GridArrays {
    int n_cat = 0, inner = 0, last = 0;
    std::vector<int64_t> counts, rest, lo, hi, blocks;  // counts n_rows x n_cat, blocks n x 3
    std::vector<double> row_weight, t_inner, t_last;
    int64_t off_inner = 0, off_last = 0;
    CategoryArrays cat;
};

// The exact expectation over a count grid (kernel.cpp). It owns its arrays, so nothing done to
// the arrays it was built from can reach it; the constructor validates them
// (std::invalid_argument).
class ExactGrid final : public KernelEval {
   public:
    explicit ExactGrid(GridArrays arrays);

   private:
    GridArrays a_;
};

// The arrays of one weighted point set (see mimfast/quadrature.py, ClassPoints), owned.
struct PointArrays {
    int n_cat = 0, inner = 0, last = 0;
    std::vector<double> counts, rest, centre, node_x, node_w;  // counts n_rows x n_cat
    std::vector<int64_t> blocks;                               // n x 3: row, first, stop
    CategoryArrays cat;
};

// The expectation over a Gauss–Hahn point set (docs/model.md §8), summed by the same kernel
// as a count grid (kernel.cpp): a row's inner count runs over node offsets instead of
// consecutive integers.
class PointSet final : public KernelEval {
   public:
    explicit PointSet(PointArrays arrays);

   private:
    PointArrays a_;
};

}  // namespace mimfast
