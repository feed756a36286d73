// The expectations of docs/model.md §3 over one class count grid.
//
// Inside a block the inner count runs over consecutive values j = x0 + x (x centred on the
// block) and the last category takes rest - j, so every count is affine in x and so is the
// softmax denominator D(x). Every quantity of docs/model.md §3 is then a polynomial in x (degree <= 3)
// times a power of i = 1 / D(x) (power <= 3). The hot loop therefore only accumulates the ten
// moments  m[a][b] = sum_x w(x) x^a i^b  (b <= 3, a <= b), and each block turns its moments
// into the sums of docs/model.md §3 with the polynomial coefficients of its row. With beta = 1 - alpha_own
// and 1 - alpha_own - mu_own formed from the positive terms of D, no quantity is a difference
// of nearly equal sums when attention saturates.
#include "kernel.hpp"

#include <algorithm>
#include <array>
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

void block_sums(const Grid& g, const Inputs& in, int64_t b, double* out) {
    const int n = g.n_cat;
    const int64_t row = g.blocks[3 * b], first = g.blocks[3 * b + 1], stop = g.blocks[3 * b + 2];
    // counts U_c(x) = u[c] + a[c] x and free keys V_c(x) = C_c - U_c(x); the inner count is
    // x0 + x (grid: x0 the block's middle value; point set: the row's centre)
    double u[MAX_CAT], a[MAX_CAT];
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
    // a block whose points have no unmasked own-area key uses the weights scaled for them
    const bool none_own = in.wu0 && u[0] == 0.0 && a[0] == 0.0;
    const double* wu = none_own ? in.wu0 : in.wu;
    const double* wm = none_own ? in.wm0 : in.wm;
    const double wself = none_own ? in.wself0 : in.wself;

    // D = d0 + d1 x; Q = D - wu_0 U_0 - wm_0 V_0 = q0 + q1 x (Q / D = 1 - alpha_own - mu_own);
    // R = Q + wm_0 V_0 = r0 + r1 x (R / D = beta = 1 - alpha_own)
    double q0 = wself, q1 = 0.0;
    for (int c = 1; c < n; ++c) {
        q0 += wu[c] * u[c] + wm[c] * (in.sizes[c] - u[c]);
        q1 += a[c] * (wu[c] - wm[c]);
    }
    const double r0 = q0 + wm[0] * (in.sizes[0] - u[0]);
    const double r1 = q1 - a[0] * wm[0];
    const double d0 = r0 + wu[0] * u[0];
    const double d1 = r1 + a[0] * wu[0];
    const Moments mo = block_moments(g, row, first, stop, x0, d0, d1);

    // numerators: alpha_c = Al_c i, mu_c = Mu_c i, sigma_c = Sg_c i^2, beta = R i
    const double z0 = in.z[0], z02 = z0 * z0;
    Poly Al[MAX_CAT], Mu[MAX_CAT], E[MAX_CAT];
    const Poly R = affine(r0, r1);
    Poly L = mul(R, R);
    for (int c = 0; c < 4; ++c) L[c] *= z02;  // 2 loss = L i^2
    for (int c = 0; c < n; ++c) {
        Al[c] = affine(wu[c] * u[c], wu[c] * a[c]);
        Mu[c] = affine(wm[c] * (in.sizes[c] - u[c]), -wm[c] * a[c]);
    }
    // e_c = E_c i^2: own -z0^2 alpha beta, group z_c^2 sigma_c
    E[0] = mul(Al[0], R);
    for (int k = 0; k < 4; ++k) E[0][k] *= -z02;
    Poly Gs{};  // the groups' part of gbar: Gs i^2
    for (int c = 1; c < n; ++c) {
        const Poly U = affine(u[c], a[c]);
        const Poly V = affine(in.sizes[c] - u[c], -a[c]);
        const Poly S2 = axpy(in.s_a[c], mul(U, V), mul(affine(in.s_b[c], 0.0), mul(U, U)));
        const double k2 = in.z[c] * in.z[c] * wu[c] * wu[c];
        for (int k = 0; k < 4; ++k) E[c][k] = k2 * S2[k];
        L = axpy(1.0, E[c], L);
        Gs = axpy(1.0, E[c], Gs);
    }
    const Poly Gb = axpy(1.0, E[0], Gs);  // gbar = Gb i^2
    out[0] = mo.m[0][0];
    out[1] = 0.5 * mo(L, 2);
    out[2] = -wself * mo(Gb, 3);
    for (int c = 0; c < n; ++c) {
        out[3 + c] = mo(Al[c], 1);
        const double ga = mo(mul(Gb, Al[c]), 3);
        // own: dA = -2 z alpha l = -z Al L i^3 (no cancellation); group: z (e - gbar alpha) / n'
        out[3 + n + c] = (c == 0) ? -z0 * mo(mul(Al[0], L), 3)
                                  : in.z[c] * (mo(E[c], 2) - ga) * in.inv_areas[c];
        // own: e - gbar (alpha + mu) = e Q i - (gbar - e)(alpha + mu), nothing cancels as
        // alpha_own nears 1; group: as written
        out[3 + 2 * n + c] =
            (c == 0) ? (mo(mul(E[0], affine(q0, q1)), 3) -
                        mo(mul(Gs, axpy(1.0, Al[0], Mu[0])), 3)) * in.inv_sizes[0]
                     : (mo(E[c], 2) - ga - mo(mul(Gb, Mu[c]), 3)) * in.inv_sizes[c];
    }
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

void class_sums(const Grid& g, const Inputs& in, int threads, double* out) {
    const int ns = n_sums(g.n_cat);
    std::vector<double> part(static_cast<size_t>(g.n_blocks) * ns, 0.0);
    // A thread earns its start-up and the risk of waiting on a descheduled peer only with
    // enough points; the result does not depend on the count (fixed blocks, fixed order).
    int64_t points = 0;
    for (int64_t b = 0; b < g.n_blocks; ++b) points += g.blocks[3 * b + 2] - g.blocks[3 * b + 1];
    threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, points / MIN_POINTS_PER_THREAD)));
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (threads > 1)
#endif
    for (int64_t b = 0; b < g.n_blocks; ++b) block_sums(g, in, b, &part[b * ns]);
    (void)threads;
    std::fill(out, out + ns, 0.0);
    for (int64_t b = 0; b < g.n_blocks; ++b)
        for (int s = 0; s < ns; ++s) out[s] += part[b * ns + s];
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
