// Expectations of docs/model.md §3 over one class count grid. No Python types here.
#pragma once
#include <cstdint>
#include <vector>

namespace mimfast {

// The count grid of one query class (see mimfast/grid.py, ClassGrid), or a point set.
struct Grid {
    int n_cat = 0;
    int inner = 0, last = 0;
    int64_t n_rows = 0;
    const int64_t* counts = nullptr;  // n_rows x n_cat, row-major
    const int64_t* rest = nullptr;
    const int64_t* lo = nullptr;
    const int64_t* hi = nullptr;
    const double* row_weight = nullptr;
    const double* t_inner = nullptr;
    int64_t n_inner = 0, off_inner = 0;
    const double* t_last = nullptr;
    int64_t n_last = 0, off_last = 0;
    const int64_t* blocks = nullptr;  // n_blocks x 3: row, first, stop
    int64_t n_blocks = 0;
    // A weighted point set (mimfast/quadrature.py, ClassPoints) instead of a count grid when
    // node_x is set: rows of float counts whose inner count is centre + node_x[j] (weight
    // node_w[j]) and whose last count takes the rest; blocks then slice the node arrays.
    const double* counts_f = nullptr;  // n_rows x n_cat, row-major
    const double* rest_f = nullptr;
    const double* centre = nullptr;
    const double* node_x = nullptr;
    const double* node_w = nullptr;
    int64_t n_nodes = 0;
};

// Per-category constants of the class (category 0: the own area) and its key weights.
struct Inputs {
    const double* sizes = nullptr;
    const double* z = nullptr;
    const double* s_a = nullptr;
    const double* s_b = nullptr;
    const double* inv_areas = nullptr;
    const double* inv_sizes = nullptr;
    const double* wu = nullptr;
    const double* wm = nullptr;
    double wself = 0.0;
    // Optional weights for the count points without an unmasked own-area key, relative to the
    // largest logit there (when the own area's logit leads by so much that the weights above
    // would underflow at those points); wu0[0] is unused.
    const double* wu0 = nullptr;
    const double* wm0 = nullptr;
    double wself0 = 0.0;
    // Named areas (mimfast.model.ClassInputs.named): per category the first category of the
    // named area it lies in (0: the query's own area), -1 for a category of one-tile areas;
    // nullptr when only the own area is named. Such a class is summed point by point.
    const int64_t* named = nullptr;
};

// Number of sums: mass, loss, dB_self, alpha[n], dA[n], dB[n].
inline int n_sums(int n_cat) { return 3 + 3 * n_cat; }
// Number of outputs of class_sums: the sums, then the rounding estimates of the loss, the
// attention and the gradient, each relative to its norm.
inline int n_out(int n_cat) { return n_sums(n_cat) + 3; }

// Throws std::invalid_argument when the grid's indices leave its tables.
void validate(const Grid& grid);
// Throws std::invalid_argument unless named[0..n) maps category 0 to 0 and every other category
// to -1 or to the first category of its area (an earlier or the same one, mapped to itself).
void validate_named(const int64_t* named, int n);

// Sums of docs/model.md §3 over the grid into out[n_out(n_cat)]; each block is summed on its own
// (consecutive blocks summed point by point together, up to 256 points) and these sums are
// added in block order, so the result is the same for any thread count. A block is summed by
// moments, or point by point where it is short, its class has named areas, or its moments are
// ill-conditioned and their rounding estimate exceeds 2^-48 of a part's norm (docs/model.md §3,
// conditioning).
void class_sums(const Grid& grid, const Inputs& in, int threads, double* out);

bool openmp_enabled();
int max_threads();

}  // namespace mimfast
