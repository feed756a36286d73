// Golub–Welsch (gauss.hpp): the tridiagonal QL algorithm (as in EISPACK's tql2) with the
// eigenvector update restricted to the first row, which is all a Gauss rule needs.
#include "gauss.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace mimfast {

void gauss_rule(int64_t n, const double* diag, const double* off, double* nodes,
                double* weights) {
    if (n < 1) throw std::invalid_argument("gauss_rule: need at least one node");
    std::vector<double> d(diag, diag + n), e(n, 0.0), z(n, 0.0);
    std::copy(off, off + n - 1, e.begin());  // e[i] couples i and i + 1; e[n - 1] = 0
    z[0] = 1.0;
    const double eps = std::numeric_limits<double>::epsilon();
    for (int64_t l = 0; l < n; ++l) {
        for (int iter = 0;; ++iter) {
            int64_t m = l;
            for (; m < n - 1; ++m)  // a negligible off-diagonal splits the matrix at m
                if (std::fabs(e[m]) <= eps * (std::fabs(d[m]) + std::fabs(d[m + 1]))) break;
            if (m == l) break;  // d[l] is an eigenvalue
            if (iter == 60) throw std::runtime_error("gauss_rule: no convergence in 60 sweeps");
            // Wilkinson shift from the leading 2 x 2 block, then chase the bulge up from m
            double g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            double r = std::hypot(g, 1.0);
            g = d[m] - d[l] + e[l] / (g + std::copysign(r, g));
            double s = 1.0, c = 1.0, p = 0.0;
            int64_t i = m - 1;
            bool split = false;
            for (; i >= l; --i) {
                const double f = s * e[i], b = c * e[i];
                r = std::hypot(f, g);
                e[i + 1] = r;
                if (r == 0.0) {  // underflow: the matrix splits at i + 1
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    split = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
                const double zi = z[i + 1];
                z[i + 1] = s * z[i] + c * zi;
                z[i] = c * z[i] - s * zi;
            }
            if (split) continue;
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return d[a] < d[b]; });
    double total = 0.0;
    for (int64_t k = 0; k < n; ++k) total += z[k] * z[k];
    for (int64_t k = 0; k < n; ++k) {
        nodes[k] = d[order[k]];
        weights[k] = z[order[k]] * z[order[k]] / total;
    }
}

}  // namespace mimfast
