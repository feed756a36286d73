// The expectations of docs/model.md §3 over one class count grid.
//
// Inside a block the inner count runs over consecutive values j = x0 + x (x centred on the
// block) and the last category takes rest - j, so every count is affine in x and so is the
// softmax denominator D(x). Every quantity of docs/model.md §3 is then a polynomial in x (degree <= 3)
// times a power of i = 1 / D(x) (power <= 3). The hot loop therefore only accumulates the ten
// moments  m[a][b] = sum_x w(x) x^a i^b  (b <= 3, a <= b), and each block turns its moments
// into the sums of docs/model.md §3 with the polynomial coefficients of its row. With 1 - alpha_c and
// 1 - alpha_c - mu_c formed from the positive terms of D, and gbar - e_c summed without e_c,
// no line is a difference of nearly equal sums when one category takes nearly all attention.
#include "kernel.hpp"

#include <algorithm>
#include <cmath>
#include <array>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mimfast {
namespace {

constexpr int64_t MIN_POINTS_PER_THREAD = 50000;
constexpr int MAX_CAT = 64;  // key categories = 1 + area groups

using Poly = std::array<double, 4>;  // c0 + c1 x + c2 x^2 + c3 x^3

Poly affine(double c0, double c1) { return {c0, c1, 0.0, 0.0}; }

Poly mul(const Poly& p, const Poly& q) {
    Poly r{};
    for (int a = 0; a < 4; ++a)
        for (int b = 0; a + b < 4; ++b) r[a + b] += p[a] * q[b];
    return r;
}

Poly axpy(double s, const Poly& p, const Poly& q) {  // s p + q
    Poly r;
    for (int a = 0; a < 4; ++a) r[a] = s * p[a] + q[a];
    return r;
}

struct Moments {
    double m[4][4] = {};  // m[a][b] = sum w x^a i^b, a <= b

    // E[P(x) i^b]
    double operator()(const Poly& p, int b) const {
        double s = 0.0;
        for (int a = 0; a <= b; ++a) s += p[a] * m[a][b];
        return s;
    }
};

// Runtime dispatch (CMake defines MIMFAST_TARGET_CLONES where the compiler and C library
// support it: GCC/Clang on x86-64 ELF with ifunc): the hot loop is compiled once per x86-64
// ISA level and the loader picks the best one for the CPU; everything else stays baseline.
#ifdef MIMFAST_TARGET_CLONES
#define MIMFAST_DISPATCH \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MIMFAST_DISPATCH
#endif
#if defined(__GNUC__)
#define MIMFAST_INLINE inline __attribute__((always_inline))
#else
#define MIMFAST_INLINE inline
#endif

// The ten moments over the points j in [first, stop) at offsets x = xw(j).first with weights
// xw(j).second: the one hot loop, inlined into the grid and the point-set walkers below.
template <class XW>
MIMFAST_INLINE Moments accumulate(int64_t first, int64_t stop, double d0, double d1, XW xw) {
    double m00 = 0, m01 = 0, m11 = 0, m02 = 0, m12 = 0, m22 = 0, m03 = 0, m13 = 0, m23 = 0,
           m33 = 0;
#pragma omp simd reduction(+ : m00, m01, m11, m02, m12, m22, m03, m13, m23, m33)
    for (int64_t j = first; j < stop; ++j) {
        const auto [x, w] = xw(j);
        const double i = 1.0 / (d0 + d1 * x);
        const double p1 = w * i, p2 = p1 * i, p3 = p2 * i;
        const double x2 = x * x;
        m00 += w;
        m01 += p1;
        m11 += p1 * x;
        m02 += p2;
        m12 += p2 * x;
        m22 += p2 * x2;
        m03 += p3;
        m13 += p3 * x;
        m23 += p3 * x2;
        m33 += p3 * x2 * x;
    }
    Moments mo;
    mo.m[0][0] = m00;
    mo.m[0][1] = m01;
    mo.m[1][1] = m11;
    mo.m[0][2] = m02;
    mo.m[1][2] = m12;
    mo.m[2][2] = m22;
    mo.m[0][3] = m03;
    mo.m[1][3] = m13;
    mo.m[2][3] = m23;
    mo.m[3][3] = m33;
    return mo;
}

MIMFAST_DISPATCH
Moments block_moments_grid(const Grid& g, int64_t row, int64_t first, int64_t stop, int64_t x0,
                     double d0, double d1) {
    const double rw = g.row_weight[row];
    const int64_t rest = g.rest[row];
    const double* tin = g.t_inner - g.off_inner;
    const double* tlast = g.t_last - g.off_last;
    return accumulate(first, stop, d0, d1, [=](int64_t j) {
        return std::pair<double, double>(static_cast<double>(j - x0),
                                         rw * tin[j] * tlast[rest - j]);
    });
}

MIMFAST_DISPATCH
Moments block_moments_points(const double* nx, const double* nw, int64_t first, int64_t stop,
                      double d0, double d1) {
    return accumulate(first, stop, d0, d1,
                      [=](int64_t j) { return std::pair<double, double>(nx[j], nw[j]); });
}

Moments block_moments(const Grid& g, int64_t row, int64_t first, int64_t stop, double x0,
                      double d0, double d1) {
    if (g.node_x) return block_moments_points(g.node_x, g.node_w, first, stop, d0, d1);
    return block_moments_grid(g, row, first, stop, static_cast<int64_t>(x0), d0, d1);
}

constexpr double EPS = 0x1p-53;
// Below the least normal double (2^-1022) a product keeps only an absolute precision: it is
// rounded to a multiple of 2^-1074 = EPS TINY_MAG. Each such rounding adds TINY_MAG to a
// magnitude (docs/model.md §3, rounding estimate).
constexpr double TINY_MAG = 0x1p-1021;

// The largest factor by which a line multiplies a product formed before it: 2 z_own (dA_own
// = 2 z alpha loss) or z_c (dA_c), at least 1 (docs/model.md §3).
double underflow_gain(const Inputs& in, int n) {
    double z = 1.0;
    for (int c = 0; c < n; ++c) z = std::max(z, std::fabs(in.z[c]));
    return 2.0 * z;
}

// The offset x (from x0) and weight w of point j of a block of row `row`.
MIMFAST_INLINE std::pair<double, double> point_at(const Grid& g, int64_t row, int64_t j,
                                                  double x0) {
    if (g.node_x) return {g.node_x[j], g.node_w[j]};
    return {static_cast<double>(j) - x0,
            g.row_weight[row] * g.t_inner[j - g.off_inner] * g.t_last[g.rest[row] - j - g.off_last]};
}

// Block b: its row, its points [first, stop), and the inner count x0 its offsets x refer to.
struct BlockView {
    int64_t row, first, stop;
    double x0;
};

// Block b, with the counts U_c(x) = u[c] + a[c] x of its points into u and a (grid: x0 the
// block's middle value; point set: the row's centre).
MIMFAST_INLINE BlockView block_counts(const Grid& g, int64_t b, double* u, double* a) {
    const int n = g.n_cat;
    const int64_t row = g.blocks[3 * b], first = g.blocks[3 * b + 1], stop = g.blocks[3 * b + 2];
    double x0;
    if (g.node_x) {
        const double* cnt = g.counts_f + row * n;
        for (int c = 0; c < n; ++c) u[c] = cnt[c];
        x0 = g.centre[row];
        u[g.last] = g.rest_f[row] - x0;
    } else {
        const int64_t* cnt = g.counts + row * n;
        for (int c = 0; c < n; ++c) u[c] = static_cast<double>(cnt[c]);
        const int64_t ix0 = (first + stop - 1) / 2;
        x0 = static_cast<double>(ix0);
        u[g.last] = static_cast<double>(g.rest[row] - ix0);
    }
    for (int c = 0; c < n; ++c) a[c] = 0.0;
    u[g.inner] = x0;
    a[g.inner] = 1.0;
    a[g.last] = -1.0;
    return {row, first, stop, x0};
}

// The sums of blocks [b0, b1) together, point by point (the lines of block_sums below at every
// point): for short blocks (SHORT_BLOCK), and the fallback for a block whose moments are
// ill-conditioned. Consecutive short blocks are summed together (class_sums: POINT_CHUNK), so
// that a rule of many rows of 2-3 nodes pays the set-up and the accumulation of the sums once
// per chunk rather than once per row.
// mag gets sum w (|t1| + |t2|) of each line's terms and, if that is not 0, per point TINY_MAG
// times the underflow gain (products below 2^-1022), times the operations of a line. Products
// are ordered so that no line multiplies an underflowed one by more than that gain. (A line
// whose every term is 0 has underflowed entirely: its value is below what a double holds.)
// A block whose points have no unmasked own-area key uses the weights scaled for them.
// NC > 0: compiled for that many categories (loops unrolled), else for g.n_cat.
template <int NC>
void point_sums_n(const Grid& g, const Inputs& in, int64_t b0, int64_t b1, double* out,
                  double* mag) {
    const int n = NC > 0 ? NC : g.n_cat;
    const int ns = n_sums(n);
    // sums in local arrays: the compiler need not assume they alias the inputs
    double o[3 + 3 * MAX_CAT], m[3 + 3 * MAX_CAT];
    for (int s = 0; s < ns; ++s) o[s] = m[s] = 0.0;
    double U[MAX_CAT], un[MAX_CAT], ms[MAX_CAT], Y[MAX_CAT], X[MAX_CAT], e[MAX_CAT];
    double z2[MAX_CAT];
    for (int c = 0; c < n; ++c) z2[c] = in.z[c] * in.z[c];
    const double z0 = in.z[0], z02 = z2[0];
    double u[MAX_CAT], a[MAX_CAT];
    int64_t npts = 0;
    for (int64_t b = b0; b < b1; ++b) {
        const auto [row, first, stop, x0] = block_counts(g, b, u, a);
        npts += stop - first;
        const bool none_own = in.wu0 && u[0] == 0.0 && a[0] == 0.0;
        const double* wu = none_own ? in.wu0 : in.wu;
        const double* wm = none_own ? in.wm0 : in.wm;
        const double wself = none_own ? in.wself0 : in.wself;
        for (int64_t j = first; j < stop; ++j) {
            const auto [x, w] = point_at(g, row, j, x0);
            for (int c = 0; c < n; ++c) {
                U[c] = u[c] + a[c] * x;
                un[c] = wu[c] * U[c];
                ms[c] = wm[c] * (in.sizes[c] - U[c]);
            }
            for (int c = 0; c < n; ++c) {
                double y = wself;
                for (int k = 0; k < n; ++k)
                    if (k != c) y += un[k] + ms[k];
                Y[c] = y;
                X[c] = y + ms[c];
            }
            const double D = X[0] + un[0], iD = 1.0 / D;
            const double beta = X[0] * iD, alpha0 = un[0] * iD;
            e[0] = -z02 * alpha0 * beta;
            double groups = 0.0;
            for (int c = 1; c < n; ++c) {
                const double s2 = in.s_a[c] * U[c] * (in.sizes[c] - U[c]) +
                                  in.s_b[c] * U[c] * U[c];
                const double r = wu[c] * iD;
                e[c] = z2[c] * s2 * r * r;
                groups += e[c];
            }
            const double loss = 0.5 * (z02 * beta * beta + groups);
            const double gbar = e[0] + groups;
            o[0] += w;
            m[0] += w;
            o[1] += w * loss;
            m[1] += w * loss;
            const double sD = wself * iD;
            o[2] += -w * gbar * sD;
            m[2] += w * (std::fabs(e[0]) + groups) * sD;
            for (int c = 0; c < n; ++c) {
                double rest = 0.0, rabs = 0.0;
                for (int k = 0; k < n; ++k)
                    if (k != c) {
                        rest += e[k];
                        rabs += std::fabs(e[k]);
                    }
                const double al = un[c] * iD, am = (un[c] + ms[c]) * iD;
                o[3 + c] += w * al;
                m[3 + c] += w * al;
                if (c == 0) {
                    const double v = 2.0 * z0 * alpha0 * loss;
                    o[3 + n] -= w * v;
                    m[3 + n] += w * std::fabs(v);
                } else {
                    const double t1 = e[c] * (X[c] * iD), t2 = rest * al;
                    o[3 + n + c] += w * in.z[c] * (t1 - t2) * in.inv_areas[c];
                    m[3 + n + c] +=
                        w * in.z[c] * (std::fabs(t1) + rabs * al) * in.inv_areas[c];
                }
                const double t1 = e[c] * (Y[c] * iD), t2 = rest * am;
                o[3 + 2 * n + c] += w * (t1 - t2) * in.inv_sizes[c];
                m[3 + 2 * n + c] += w * (std::fabs(t1) + rabs * am) * in.inv_sizes[c];
            }
        }
    }
    const double floor = static_cast<double>(npts) * underflow_gain(in, n) * TINY_MAG;
    for (int s = 0; s < ns; ++s) {
        out[s] = o[s];
        mag[s] = (m[s] > 0 ? m[s] + floor : 0.0) * (8.0 + 2.0 * n);
    }
}

void point_sums(const Grid& g, const Inputs& in, int64_t b0, int64_t b1, double* out,
                double* mag) {
    switch (g.n_cat) {
        case 2: return point_sums_n<2>(g, in, b0, b1, out, mag);
        case 3: return point_sums_n<3>(g, in, b0, b1, out, mag);
        case 4: return point_sums_n<4>(g, in, b0, b1, out, mag);
        default: return point_sums_n<0>(g, in, b0, b1, out, mag);
    }
}

// The areas of a class with named areas as *units* of its key categories
// (mimfast/model.py, units): unit 0 the query's own area, then in order of
// first category the other named areas and the categories of one-tile areas.
struct Units {
    enum Kind { own, named, tiles };
    int n = 0;
    int of[MAX_CAT];            // unit of each category
    Kind kind[MAX_CAT];         // kind of each unit
    int lead[MAX_CAT];          // first category of each unit (its latent, its 1 / areas)
    int start[MAX_CAT + 1];     // unit u's categories: cats[start[u] .. start[u + 1])
    int cats[MAX_CAT];
    Units(const int64_t* map, int n_cat) {
        int unit_of_first[MAX_CAT];
        for (int c = 0; c < n_cat; ++c) unit_of_first[c] = -1;
        for (int c = 0; c < n_cat; ++c) {
            const int64_t a = map[c];
            if (a >= 0 && unit_of_first[a] >= 0) {
                of[c] = unit_of_first[a];
                continue;
            }
            of[c] = n;
            lead[n] = c;
            kind[n] = a < 0 ? tiles : a == 0 ? own : named;
            if (a >= 0) unit_of_first[a] = n;
            ++n;
        }
        int k = 0;
        for (int u = 0; u < n; ++u) {
            start[u] = k;
            for (int c = 0; c < n_cat; ++c)
                if (of[c] == u) cats[k++] = c;
        }
        start[n] = k;
    }
};

// A class with named areas is summed point by point, NAMED_CHUNK points at a time: each line of
// the per-point formulas runs across the chunk's points (rows [category or unit][point], so the
// loops over points vectorise, and the loops over units and categories run once per chunk),
// and the points' terms are then added to the sums point after point. Every point's operations
// and the order of the additions are those of a loop over the points, and no product is
// contracted into a fused multiply-add, so the sums are the same bytes at every ISA level. (The
// lines run over the chunk's points rounded up to a multiple of 8; the points past its end
// repeat its last point with weight 0 and are not added.)
constexpr int NAMED_CHUNK = 64;

// acc[s] += rows[s][p] for p in [0, np) in order, G sums at a time (G independent chains)
template <int G>
MIMFAST_INLINE void add_rows(const double* rows, int np, double* acc) {
    double a[G];
    for (int s = 0; s < G; ++s) a[s] = acc[s];
    for (int p = 0; p < np; ++p)
        for (int s = 0; s < G; ++s) a[s] += rows[s * NAMED_CHUNK + p];
    for (int s = 0; s < G; ++s) acc[s] = a[s];
}

MIMFAST_INLINE void add_terms(const double* rows, int nr, int np, double* acc) {
    int s = 0;
    for (; s + 8 <= nr; s += 8) add_rows<8>(rows + s * NAMED_CHUNK, np, acc + s);
    const double* r = rows + s * NAMED_CHUNK;
    switch (nr - s) {
        case 7: return add_rows<7>(r, np, acc + s);
        case 6: return add_rows<6>(r, np, acc + s);
        case 5: return add_rows<5>(r, np, acc + s);
        case 4: return add_rows<4>(r, np, acc + s);
        case 3: return add_rows<3>(r, np, acc + s);
        case 2: return add_rows<2>(r, np, acc + s);
        case 1: return add_rows<1>(r, np, acc + s);
        default: return;
    }
}

// out[i][p] = the sum of v[k][p] (ABS: of |v[k][p]|) over k != i, for rows i, k < n, from a
// prefix and a suffix sum: O(n), and, for positive terms, a sum of positive terms (no
// difference of nearly equal numbers).
template <bool ABS>
MIMFAST_INLINE void rows_but_one(const double* __restrict v, int n, double* __restrict out,
                                 double* __restrict tmp, int npad) {
    constexpr int CH = NAMED_CHUNK;
    const auto get = [](double t) { return ABS ? std::fabs(t) : t; };
#pragma omp simd
    for (int p = 0; p < npad; ++p) tmp[p] = 0.0;
    for (int i = 0; i < n; ++i)
#pragma omp simd
        for (int p = 0; p < npad; ++p) {
            out[i * CH + p] = tmp[p];
            tmp[p] += get(v[i * CH + p]);
        }
#pragma omp simd
    for (int p = 0; p < npad; ++p) tmp[p] = 0.0;
    for (int i = n - 1; i >= 0; --i)
#pragma omp simd
        for (int p = 0; p < npad; ++p) {
            out[i * CH + p] += tmp[p];
            tmp[p] += get(v[i * CH + p]);
        }
}

// The sums of blocks [b0, b1) of a class with named areas, point by point: the per-point
// formulas of mimfast/backends/numpy_backend.py (kernel) over the units of `un_`, each line's
// rounding magnitude as in point_sums (|t1| + |t2|, rest's terms taken by absolute value). A
// point without an unmasked own-area key (U_0 = 0) takes the weights wu0, wm0, wself0 when
// given.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off", "no-tree-loop-distribute-patterns")
#endif
MIMFAST_DISPATCH
void named_sums(const Grid& g, const Inputs& in, const Units& un_, int64_t b0, int64_t b1,
                double* out, double* mag) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    constexpr int CH = NAMED_CHUNK;
    const int n = g.n_cat, nu = un_.n, ns = n_sums(n);
    // term rows, added point after point: mass, loss, dB_self and its magnitude, then per
    // category alpha, dB and its magnitude, per unit dA and its magnitude
    const int t_al = 4, t_dB = t_al + n, t_mB = t_dB + n, t_dA = t_mB + n, t_mA = t_dA + nu;
    const int nt = t_mA + nu;
    // rows per category, per unit, per point, then the terms
    const size_t need = static_cast<size_t>(4 * n + 7 * nu + 7 + nt) * CH;
    // (kept per thread between calls, its rows aligned to 64 bytes: a vector register's width)
    thread_local std::vector<double> buf;
    if (buf.size() < need + 8) buf.resize(need + 8);
    double* r = buf.data() + (-reinterpret_cast<std::uintptr_t>(buf.data()) / sizeof(double) & 7);
    const auto rows = [&r](int k) {
        double* p = r;
        r += k * CH;
        return p;
    };
    double* __restrict U = rows(n);
    double* __restrict un = rows(n);
    double* __restrict ms = rows(n);
    double* __restrict ms_ex = rows(n);
    double* __restrict ua = rows(nu);
    double* __restrict ua_ex = rows(nu);
    double* __restrict xu = rows(nu);
    double* __restrict au = rows(nu);
    double* __restrict e = rows(nu);
    double* __restrict rest = rows(nu);
    double* __restrict rabs = rows(nu);
    double* __restrict w = rows(1);
    double* __restrict ws = rows(1);
    double* __restrict msum = rows(1);
    double* __restrict iD = rows(1);
    double* __restrict loss = rows(1);
    double* __restrict others = rows(1);
    double* __restrict tmp = rows(1);
    double* __restrict T = rows(nt);

    double acc[4 + 5 * MAX_CAT];
    for (int s = 0; s < nt; ++s) acc[s] = 0.0;
    double zl[MAX_CAT], z2[MAX_CAT];  // the latent of each unit (its first category's), squared
    for (int i = 0; i < nu; ++i) {
        zl[i] = in.z[un_.lead[i]];
        z2[i] = zl[i] * zl[i];
    }
    const double z0 = zl[0], z02 = z2[0];
    // whether point p takes the weights of the points without an unmasked own-area key
    const bool has_alt = in.wu0 != nullptr;
    const double* wu0 = has_alt ? in.wu0 : in.wu;
    const double* wm0 = has_alt ? in.wm0 : in.wm;
    const double wself = in.wself, wself0 = has_alt ? in.wself0 : in.wself;
    const auto alt = [&](int p) { return has_alt && U[p] == 0.0; };

    double u[MAX_CAT], a[MAX_CAT];
    int64_t npts = 0, b = b0, j = 0, stop = 0, row = 0;
    double x0 = 0.0;
    for (;;) {
        // the blocks' next points, up to CH: their weights w and counts U
        int np = 0;
        while (np < CH) {
            if (j == stop) {
                if (b == b1) break;
                const BlockView v = block_counts(g, b++, u, a);
                row = v.row;
                j = v.first;
                stop = v.stop;
                x0 = v.x0;
                npts += stop - j;
            }
            const auto [x, wj] = point_at(g, row, j++, x0);
            w[np] = wj;
            for (int c = 0; c < n; ++c) U[c * CH + np] = u[c] + a[c] * x;
            ++np;
        }
        if (np == 0) break;
        const int npad = (np + 7) & ~7;
        for (int p = np; p < npad; ++p) {
            w[p] = 0.0;
            for (int c = 0; c < n; ++c) U[c * CH + p] = U[c * CH + np - 1];
        }

        // the terms of D: unmasked keys per category and per unit, masked keys and wself
#pragma omp simd
        for (int p = 0; p < npad; ++p) msum[p] = ws[p] = alt(p) ? wself0 : wself;
        for (int i = 0; i < nu; ++i)
#pragma omp simd
            for (int p = 0; p < npad; ++p) ua[i * CH + p] = 0.0;
        for (int c = 0; c < n; ++c) {
            const double wuc = in.wu[c], wu0c = wu0[c], wmc = in.wm[c], wm0c = wm0[c];
            const double size = in.sizes[c];
            const double* __restrict Uc = U + c * CH;
            double* __restrict uac = ua + un_.of[c] * CH;
#pragma omp simd
            for (int p = 0; p < npad; ++p) {
                const bool a0 = alt(p);
                const double uv = (a0 ? wu0c : wuc) * Uc[p];
                const double mv = (a0 ? wm0c : wmc) * (size - Uc[p]);
                un[c * CH + p] = uv;
                ms[c * CH + p] = mv;
                uac[p] += uv;
                msum[p] += mv;
            }
        }
        // D without the unmasked keys of a unit (X = xu D), and without them and the masked
        // keys of one category of it (Y): sums of positive terms
        rows_but_one<false>(ua, nu, ua_ex, tmp, npad);
        rows_but_one<false>(ms, n, ms_ex, tmp, npad);
#pragma omp simd
        for (int p = 0; p < npad; ++p) iD[p] = 1.0 / ((msum[p] + ua_ex[p]) + ua[p]);
        for (int i = 0; i < nu; ++i) {
            double* __restrict xi = xu + i * CH;
            double* __restrict ai = au + i * CH;
            double* __restrict ei = e + i * CH;
            const double* __restrict uai = ua + i * CH;
            const double* __restrict uxi = ua_ex + i * CH;
#pragma omp simd
            for (int p = 0; p < npad; ++p) {
                xi[p] = (msum[p] + uxi[p]) * iD[p];
                ai[p] = uai[p] * iD[p];
            }
            if (un_.kind[i] == Units::own) {
#pragma omp simd
                for (int p = 0; p < npad; ++p) ei[p] = -z02 * ai[p] * xi[p];
            } else if (un_.kind[i] == Units::named) {
#pragma omp simd
                for (int p = 0; p < npad; ++p) ei[p] = z2[i] * ai[p] * ai[p];
            } else {
                const int c = un_.lead[i];
                const double* __restrict Uc = U + c * CH;
                const double wuc = in.wu[c], wu0c = wu0[c];
                const double sa = in.s_a[c], sb = in.s_b[c], size = in.sizes[c], zz = z2[i];
#pragma omp simd
                for (int p = 0; p < npad; ++p) {
                    const double s2 = sa * Uc[p] * (size - Uc[p]) + sb * Uc[p] * Uc[p];
                    const double rr = (alt(p) ? wu0c : wuc) * iD[p];
                    ei[p] = zz * s2 * rr * rr;
                }
            }
        }
        rows_but_one<false>(e, nu, rest, tmp, npad);
        rows_but_one<true>(e, nu, rabs, tmp, npad);
#pragma omp simd
        for (int p = 0; p < npad; ++p) {
            loss[p] = 0.5 * (z02 * xu[p] * xu[p] + rest[p]);
            const double gbar = e[p] + rest[p];
            T[p] = w[p];
            T[CH + p] = w[p] * loss[p];
            T[2 * CH + p] = -w[p] * gbar * ws[p] * iD[p];
            T[3 * CH + p] = w[p] * (std::fabs(e[p]) + rabs[p]) * ws[p] * iD[p];
        }
        for (int i = 0; i < nu; ++i) {
            const int I = i * CH, A = (t_dA + i) * CH, M = (t_mA + i) * CH;  // rows of unit i
            if (un_.kind[i] == Units::own) {
#pragma omp simd
                for (int p = 0; p < npad; ++p) {
                    const double dA = -2.0 * z0 * au[p] * loss[p];
                    T[A + p] = w[p] * dA;
                    T[M + p] = w[p] * std::fabs(dA);
                }
            } else {
                const double inv = un_.kind[i] == Units::tiles ? in.inv_areas[un_.lead[i]] : 1.0;
                const double zi = zl[i];
#pragma omp simd
                for (int p = 0; p < npad; ++p) {
                    const double t1 = e[I + p] * xu[I + p], t2 = rest[I + p] * au[I + p];
                    T[A + p] = w[p] * (zi * (t1 - t2) * inv);
                    T[M + p] = w[p] * (zi * (std::fabs(t1) + rabs[I + p] * au[I + p]) * inv);
                }
            }
            // the area's gradient goes to every member column (tied columns, docs/model.md §3);
            // dB of each member category c: for a named area, c's share of its attention term
            // (f its factor, `others` the attention of the area's other categories)
            const bool tiles = un_.kind[i] == Units::tiles, own = un_.kind[i] == Units::own;
            for (int k = un_.start[i]; k < un_.start[i + 1]; ++k) {
                const int c = un_.cats[k], C = c * CH;  // rows of category c
                const double inv = in.inv_sizes[c];
                // its al and mu, y = 1 - al - mu, and its terms from its line t1 - t2 and
                // magnitude m1 + rabs (al + mu)
                const auto at = [&](int p, double& al, double& mu, double& y) {
                    al = un[C + p] * iD[p];
                    mu = ms[C + p] * iD[p];
                    y = ((ws[p] + ms_ex[C + p]) + ua_ex[I + p]) * iD[p];
                };
                const auto terms = [&](int p, double al, double am, double t1, double m1) {
                    T[(t_al + c) * CH + p] = w[p] * al;
                    T[(t_dB + c) * CH + p] = w[p] * (t1 - rest[I + p] * am) * inv;
                    T[(t_mB + c) * CH + p] = w[p] * (m1 + rabs[I + p] * am) * inv;
                };
                if (tiles) {
#pragma omp simd
                    for (int p = 0; p < npad; ++p) {
                        double al, mu, y;
                        at(p, al, mu, y);
                        const double t1 = e[I + p] * y;
                        terms(p, al, al + mu, t1, std::fabs(t1));
                    }
                    continue;
                }
#pragma omp simd
                for (int p = 0; p < npad; ++p) others[p] = 0.0;
                for (int l = un_.start[i]; l < un_.start[i + 1]; ++l) {
                    if (l == k) continue;
                    const int L = un_.cats[l] * CH;
#pragma omp simd
                    for (int p = 0; p < npad; ++p) others[p] += un[L + p] * iD[p];
                }
                const double fz = own ? -z02 : z2[i];
                const double* fx = own ? xu : au + I;
#pragma omp simd
                for (int p = 0; p < npad; ++p) {
                    double al, mu, y;
                    at(p, al, mu, y);
                    const double f = fz * fx[p];
                    terms(p, al, al + mu, f * (al * y - others[p] * mu),
                          std::fabs(f) * (al * y + others[p] * mu));
                }
            }
        }
        add_terms(T, nt, np, acc);
    }
    // mass, loss and attention are sums of non-negative terms: their magnitudes are their
    // sums; an area's gradient is the same in every member column (tied columns)
    double o[3 + 3 * MAX_CAT], m[3 + 3 * MAX_CAT];
    o[0] = m[0] = acc[0];
    o[1] = m[1] = acc[1];
    o[2] = acc[2];
    m[2] = acc[3];
    for (int c = 0; c < n; ++c) {
        o[3 + c] = m[3 + c] = acc[t_al + c];
        o[3 + n + c] = acc[t_dA + un_.of[c]];
        m[3 + n + c] = acc[t_mA + un_.of[c]];
        o[3 + 2 * n + c] = acc[t_dB + c];
        m[3 + 2 * n + c] = acc[t_mB + c];
    }
    const double floor = static_cast<double>(npts) * underflow_gain(in, n) * TINY_MAG;
    for (int s = 0; s < ns; ++s) {
        out[s] = o[s];
        mag[s] = (m[s] > 0 ? m[s] + floor : 0.0) * (8.0 + 2.0 * n);
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// A block is summed again point by point when its combination's rounding estimate exceeds this
// share of a part's norm (docs/model.md §3, conditioning).
constexpr double BLOCK_SHARE = 0x1p-48;
constexpr double D_COND = 0x1p10;  // largest (|d0| + |d1| h) / min D of a moment block
constexpr double ILL = 0x1p5;
// Blocks of at most this many points are summed point by point from the start: for so few
// points the lines of point_sums cost less than forming the moment combinations, and they are
// as well conditioned as the points.
constexpr int64_t SHORT_BLOCK = 16;

// Bounds M[b][a] >= sum w |x|^a i^b from the moments: Cauchy-Schwarz for a = 1, h = max |x|
// for a = 3 and for b = 1; then E over the block of |P(x)| i^b <= sum_a |p_a| M[b][a].
struct AbsMoments {
    double M[4][4];
    AbsMoments(const Moments& mo, double h) {
        M[1][0] = mo.m[0][1];
        M[1][1] = h * M[1][0];
        for (int b = 2; b < 4; ++b) {
            M[b][0] = mo.m[0][b];
            M[b][2] = mo.m[2][b];
            M[b][1] = std::sqrt(M[b][0] * M[b][2]);
            M[b][3] = h * M[b][2];
        }
    }
    double operator()(const Poly& p, int b) const {
        double s = 0.0;
        for (int a = 0; a <= b; ++a) s += std::fabs(p[a]) * M[b][a];
        return s;
    }
};

// Whether block b is summed point by point from the start: a short block, or any block of a
// class with named areas.
bool by_points(const Grid& g, const Units* units, int64_t b) {
    return units || g.blocks[3 * b + 2] - g.blocks[3 * b + 1] <= SHORT_BLOCK;
}

// The sums of blocks [b0, b1) into out and, into mag, for each sum a magnitude whose EPS
// multiple estimates its rounding: point by point when `points` is set or by_points holds
// (several blocks only then), else block b0 by moments. Returns whether the moments lose much
// more than point-by-point evaluation would: D is ill-conditioned on the block, or a line's
// magnitude exceeds ILL times the magnitude of its terms' values.
bool block_sums(const Grid& g, const Inputs& in, const Units* units, int64_t b0, int64_t b1,
                double* out, double* mag, bool points) {
    if (units) {  // named areas: point by point on every block
        named_sums(g, in, *units, b0, b1, out, mag);
        return false;
    }
    if (points || by_points(g, units, b0)) {
        point_sums(g, in, b0, b1, out, mag);
        return false;
    }
    const int n = g.n_cat;
    const int64_t b = b0;
    // counts U_c(x) = u[c] + a[c] x and free keys V_c(x) = C_c - U_c(x); the inner count is
    // x0 + x (grid: x0 the block's middle value; point set: the row's centre)
    double u[MAX_CAT], a[MAX_CAT];
    const auto [row, first, stop, x0] = block_counts(g, b, u, a);
    // a block whose points have no unmasked own-area key uses the weights scaled for them
    const bool none_own = in.wu0 && u[0] == 0.0 && a[0] == 0.0;
    const double* wu = none_own ? in.wu0 : in.wu;
    const double* wm = none_own ? in.wm0 : in.wm;
    const double wself = none_own ? in.wself0 : in.wself;

    // Al_c, Mu_c: the unmasked and masked keys' terms of D (alpha_c = Al_c i, mu_c = Mu_c i).
    // D without the unmasked keys of c (X_c: X_c / D = 1 - alpha_c) and without all keys of c
    // (Y_c: Y_c / D = 1 - alpha_c - mu_c) are summed from the other, positive terms, so that
    // neither is a difference of nearly equal numbers when c takes nearly all attention.
    Poly Al[MAX_CAT], Mu[MAX_CAT], X[MAX_CAT], Y[MAX_CAT], E[MAX_CAT], Rest[MAX_CAT];
    for (int c = 0; c < n; ++c) {
        Al[c] = affine(wu[c] * u[c], wu[c] * a[c]);
        Mu[c] = affine(wm[c] * (in.sizes[c] - u[c]), -wm[c] * a[c]);
    }
    for (int c = 0; c < n; ++c) {
        Y[c] = affine(wself, 0.0);
        for (int k = 0; k < n; ++k)
            if (k != c) Y[c] = axpy(1.0, axpy(1.0, Al[k], Mu[k]), Y[c]);
        X[c] = axpy(1.0, Mu[c], Y[c]);
    }
    const Poly Dp = axpy(1.0, Al[0], X[0]);  // D = d0 + d1 x
    const Moments mo = block_moments(g, row, first, stop, x0, Dp[0], Dp[1]);
    // h = max |x|; D's conditioning over the block (D is affine: its least value is at an end)
    double h = 0.0;
    if (g.node_x)
        for (int64_t j = first; j < stop; ++j) h = std::max(h, std::fabs(g.node_x[j]));
    else
        h = static_cast<double>(std::max(x0 - first, stop - 1 - x0));
    const double dmin = std::min(Dp[0] - std::fabs(Dp[1]) * h, Dp[0] + std::fabs(Dp[1]) * h);
    const double dcond = (std::fabs(Dp[0]) + std::fabs(Dp[1]) * h) / dmin;
    const int ns = n_sums(n);
    if (!(dmin > 0) || !(dcond <= D_COND)) {
        for (int s = 0; s < ns; ++s) mag[s] = HUGE_VAL;
        return true;
    }
    const double grow = 16.0 + 3.0 * dcond;  // combination, and i^b through D's rounding
    // Fast path: when every affine factor (counts, the terms of D and their partial sums)
    // varies by at most 1/8 of its centre value over the block, a product of up to three of
    // them varies by less than a factor 2.2, so the moments are as well conditioned as the
    // points and a line's magnitude is 2 grow times its terms' values.
    bool fast = true;
    const auto flat = [&](double f0, double f1) { return std::fabs(f1) * h <= 0.125 * std::fabs(f0); };
    for (int c = 0; c < n && fast; ++c)
        fast = flat(u[c], a[c]) && flat(in.sizes[c] - u[c], a[c]) && flat(X[c][0], X[c][1]) &&
               flat(Y[c][0], Y[c][1]);
    const AbsMoments amo(mo, fast ? 0.0 : h), amo_h(mo, h);
    // Underflow (products below 2^-1022, each off by up to 2^-1074 = EPS TINY_MAG): in the
    // moments, each point's w i^b (b + 1 products, the earlier ones multiplied by i <= ig)
    // and its x^a, all multiplied by |p_a| <= sum |p_a| h^a; in the coefficients p_a (up to
    // 8 + 2n products each), multiplied by sum w |x|^a i^b; and in the combination itself.
    // Nothing for a term whose values have underflowed entirely (as in point_sums).
    const double ig = std::max(1.0, 1.0 / dmin), npts = static_cast<double>(stop - first);
    const auto underflow = [&](const Poly& p, int bb, double f) {
        if (!(std::fabs(f) * amo_h(p, bb) > 0)) return 0.0;
        double ph = 0.0, hp = 1.0, grow_i = 1.0, m = 0.0;
        for (int a = 0; a <= bb; ++a, hp *= h) {
            ph += std::fabs(p[a]) * hp;
            m += amo_h.M[bb][a];
        }
        for (int k = 1; k < bb; ++k) grow_i *= ig;
        return (1.0 + std::fabs(f)) *
               (npts * (bb + 1) * grow_i * ph + (8.0 + 2.0 * n) * m + bb + 1) * TINY_MAG;
    };
    double val = 0.0, big = 0.0;  // magnitudes of the lines' terms, and of their moment sums
    const auto term = [&](const Poly& p, int bb, double f) {
        const double v = std::fabs(f * mo(p, bb)), u = underflow(p, bb, f);
        if (fast) return 2.0 * grow * v + u;
        val += v;
        const double m = std::fabs(f) * grow * amo(p, bb);
        big += m;
        return m + u;
    };

    // e_c = E_c i^2: own -z0^2 alpha beta (beta = X_0 i), group z_c^2 sigma_c; 2 loss = L i^2.
    // The latents and the counts multiply the small weights first: a product that underflows
    // is not multiplied by them afterwards.
    const double z0 = in.z[0], z02 = z0 * z0;
    Poly zX0 = X[0], zAl0 = Al[0];
    for (int k = 0; k < 4; ++k) {
        zX0[k] *= z0;
        zAl0[k] *= -z02;
    }
    Poly L = mul(zX0, zX0);
    E[0] = mul(zAl0, X[0]);
    for (int c = 1; c < n; ++c) {
        const Poly U = affine(u[c], a[c]);
        const Poly V = affine(in.sizes[c] - u[c], -a[c]);
        const Poly S2 = axpy(in.s_a[c], mul(U, V), mul(affine(in.s_b[c], 0.0), mul(U, U)));
        const double zw = in.z[c] * wu[c];
        for (int k = 0; k < 4; ++k) E[c][k] = S2[k] * zw * zw;
        L = axpy(1.0, E[c], L);
    }
    Poly Gb{};  // gbar = Gb i^2; Rest_c = gbar - e_c, summed without e_c
    for (int c = 0; c < n; ++c) {
        Gb = axpy(1.0, E[c], Gb);
        Rest[c] = Poly{};
        for (int k = 0; k < n; ++k)
            if (k != c) Rest[c] = axpy(1.0, E[k], Rest[c]);
    }
    out[0] = mo.m[0][0];
    out[1] = 0.5 * mo(L, 2);
    out[2] = -wself * mo(Gb, 3);
    mag[0] = grow * mo.m[0][0];  // (not in any part)
    mag[1] = term(L, 2, 0.5);
    mag[2] = term(Gb, 3, wself);
    for (int c = 0; c < n; ++c) {
        out[3 + c] = mo(Al[c], 1);
        mag[3 + c] = term(Al[c], 1, 1.0);
        if (c == 0) {  // own: dA = -2 z alpha l = -z Al L i^3
            const Poly p = mul(Al[0], L);
            out[3 + n] = -z0 * mo(p, 3);
            mag[3 + n] = term(p, 3, z0);
        } else {  // group: z (e - gbar alpha) / n' = z (e (1 - alpha) - (gbar - e) alpha) / n'
            const Poly p = mul(E[c], X[c]), q = mul(Rest[c], Al[c]);
            const double f = in.z[c] * in.inv_areas[c];
            out[3 + n + c] = f * (mo(p, 3) - mo(q, 3));
            mag[3 + n + c] = term(p, 3, f) + term(q, 3, f);
        }
        // e - gbar (alpha + mu) = e (1 - alpha - mu) - (gbar - e)(alpha + mu)
        const Poly p = mul(E[c], Y[c]), q = mul(Rest[c], axpy(1.0, Al[c], Mu[c]));
        out[3 + 2 * n + c] = (mo(p, 3) - mo(q, 3)) * in.inv_sizes[c];
        mag[3 + 2 * n + c] = term(p, 3, in.inv_sizes[c]) + term(q, 3, in.inv_sizes[c]);
    }
    return !fast && !(big <= ILL * val);
}

}  // namespace

void validate(const Grid& g) {
    auto fail = [](const std::string& what) { throw std::invalid_argument("count grid: " + what); };
    if (g.n_cat < 2 || g.n_cat > MAX_CAT)
        fail("the number of key categories must be in [2, " + std::to_string(MAX_CAT) + "]");
    if (g.inner < 0 || g.inner >= g.n_cat || g.last < 0 || g.last >= g.n_cat || g.inner == g.last)
        fail("inner and last categories must be two different categories");
    if (g.node_x) {
        for (int64_t b = 0; b < g.n_blocks; ++b) {
            const int64_t r = g.blocks[3 * b], a = g.blocks[3 * b + 1], s = g.blocks[3 * b + 2];
            if (r < 0 || r >= g.n_rows || a < 0 || s > g.n_nodes || a >= s)
                fail("block " + std::to_string(b) + " leaves the point set");
        }
        return;
    }
    for (int64_t r = 0; r < g.n_rows; ++r) {
        if (g.lo[r] > g.hi[r]) fail("row " + std::to_string(r) + " has lo > hi");
        if (g.lo[r] < g.off_inner || g.hi[r] - g.off_inner >= g.n_inner)
            fail("row " + std::to_string(r) + " leaves the inner table");
        if (g.rest[r] - g.hi[r] < g.off_last || g.rest[r] - g.lo[r] - g.off_last >= g.n_last)
            fail("row " + std::to_string(r) + " leaves the last table");
    }
    for (int64_t b = 0; b < g.n_blocks; ++b) {
        const int64_t r = g.blocks[3 * b], a = g.blocks[3 * b + 1], s = g.blocks[3 * b + 2];
        if (r < 0 || r >= g.n_rows || a < g.lo[r] || s > g.hi[r] + 1 || a >= s)
            fail("block " + std::to_string(b) + " is not inside its row");
    }
}

void validate_named(const int64_t* named, int n) {
    auto fail = [](const std::string& what) { throw std::invalid_argument("named areas: " + what); };
    if (n < 1 || n > MAX_CAT) fail("the number of key categories must be in [1, " + std::to_string(MAX_CAT) + "]");
    if (named[0] != 0) fail("category 0 (the own area) must map to 0");
    for (int c = 1; c < n; ++c) {
        const int64_t a = named[c];
        if (a < -1 || a > c || (a >= 0 && named[a] != a))
            fail("category " + std::to_string(c) + " maps to " + std::to_string(a) +
                 ", not -1 or the first category of its area");
    }
}

// The magnitudes of a block's sums gathered by part: loss, attention, gradient (dB_self, dA, dB),
// as the error estimate reads them (fused.cpp).
void part_sums(const double* v, int n, double* p) {
    p[0] = v[1];
    p[1] = 0.0;
    for (int c = 0; c < n; ++c) p[1] += v[3 + c];
    p[2] = v[2];
    for (int s = 3 + n; s < 3 + 3 * n; ++s) p[2] += v[s];
}

// The 2-norm of each part of the sums, scaled so that sums near the least double keep one.
void part_norms(const double* v, int n, double* norm) {
    const auto scaled = [](const double* x, int k, double top, double s2) {
        for (int i = 0; i < k; ++i) top = std::max(top, std::fabs(x[i]));
        if (top == 0) return 0.0;
        s2 = s2 / top / top;  // the extra entry (dB_self), if any, came in scaled by 1
        for (int i = 0; i < k; ++i) s2 += (x[i] / top) * (x[i] / top);
        return top * std::sqrt(s2);
    };
    norm[0] = std::fabs(v[1]);
    norm[1] = scaled(v + 3, n, 0.0, 0.0);
    const double top = std::fabs(v[2]);
    norm[2] = scaled(v + 3 + n, 2 * n, top, v[2] * v[2]);
}

// Consecutive blocks summed point by point are summed together, up to this many points: the
// point sets of a quadrature have rows of a few nodes, whose per-block set-up and accumulation
// would otherwise cost as much as their points.
constexpr int64_t POINT_CHUNK = 256;

void class_sums(const Grid& g, const Inputs& in, int threads, double* out) {
    const int n = g.n_cat;
    const int ns = n_sums(n);
    std::optional<Units> named;
    if (in.named) named.emplace(in.named, n);
    const Units* units = named ? &*named : nullptr;
    // tasks: a block summed by moments, or a run of consecutive blocks summed point by point
    // (fixed by the grid alone, so the result does not depend on the thread count)
    // (buffers kept per calling thread between calls: a quadrature step makes many calls on
    // small point sets, where allocating them would cost as much as a row of points; the
    // OpenMP threads below reach the caller's through these references)
    thread_local std::vector<int64_t> task_buf;
    thread_local std::vector<double> part_buf;
    std::vector<int64_t>& task = task_buf;  // first block of each task, then n_blocks
    std::vector<double>& part = part_buf;
    task.clear();
    int64_t chunk = 0, n_points = 0;
    bool chained = false;
    for (int64_t b = 0; b < g.n_blocks; ++b) {
        const int64_t len = g.blocks[3 * b + 2] - g.blocks[3 * b + 1];
        const bool pts = by_points(g, units, b);
        n_points += len;
        if (!(pts && chained && chunk + len <= POINT_CHUNK)) {
            task.push_back(b);
            chunk = 0;
        }
        chunk += len;
        chained = pts;
    }
    task.push_back(g.n_blocks);
    const int64_t n_tasks = static_cast<int64_t>(task.size()) - 1;
    const int stride = ns + 4;  // a task's sums, its magnitudes by part, and whether ill
    part.assign(static_cast<size_t>(n_tasks) * stride, 0.0);
    // A thread earns its start-up and the risk of waiting on a descheduled peer only with
    // enough points; the result does not depend on the count (fixed blocks, fixed order).
    threads = static_cast<int>(
        std::max<int64_t>(1, std::min<int64_t>(threads, n_points / MIN_POINTS_PER_THREAD)));
    (void)threads;
    const auto run = [&](int64_t t, bool points) {
        double mag[3 + 3 * MAX_CAT];
        double* o = &part[t * stride];
        const bool ill = block_sums(g, in, units, task[t], task[t + 1], o, mag, points);
        part_sums(mag, n, o + ns);
        o[ns + 3] = ill ? 1.0 : 0.0;
    };
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
    for (int64_t t = 0; t < n_tasks; ++t) run(t, false);
    const auto total = [&]() {
        std::fill(out, out + ns + 3, 0.0);
        for (int64_t t = 0; t < n_tasks; ++t)
            for (int s = 0; s < ns + 3; ++s) out[s] += part[t * stride + s];
    };
    total();
    double norm[3];
    part_norms(out, n, norm);
    // blocks summed again point by point: ill-conditioned, and their rounding estimate above
    // BLOCK_SHARE of a part's norm
    std::vector<int64_t> redo;
    for (int64_t t = 0; t < n_tasks; ++t) {
        const double* o = &part[t * stride];
        if (o[ns + 3] == 0.0) continue;
        for (int p = 0; p < 3; ++p)
            if (o[ns + p] > 0 && !(EPS * o[ns + p] <= BLOCK_SHARE * norm[p])) {
                redo.push_back(t);
                break;
            }
    }
    if (!redo.empty()) {
        const int64_t nr = static_cast<int64_t>(redo.size());
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1 && nr > 1)
#endif
        for (int64_t i = 0; i < nr; ++i) run(redo[i], true);
        total();
        part_norms(out, n, norm);
    }
    // the rounding estimate of each part relative to its norm
    for (int p = 0; p < 3; ++p) {
        const double m = out[ns + p];
        out[ns + p] = m > 0 ? (norm[p] > 0 ? EPS * (m / norm[p]) : HUGE_VAL) : 0.0;
    }
}

bool openmp_enabled() {
#ifdef _OPENMP
    return true;
#else
    return false;
#endif
}

int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace mimfast
