#include "kernel.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mimfast {
namespace {

constexpr int LANES = 8;

// NC > 0: category count known at compile time, so the per-point loops unroll and the lane
// loop vectorises; NC = 0 reads it at run time (MAXC bounds it).
template <int NC, int MAXC>
void block_sums(const Grid& g, const Inputs& in, int64_t b, double* out) {
    const int n = NC ? NC : g.n_cat;
    const int64_t row = g.blocks[3 * b];
    const int64_t first = g.blocks[3 * b + 1];
    const int64_t stop = g.blocks[3 * b + 2];
    const int64_t rest = g.rest[row];
    const double rw = g.row_weight[row];
    const int64_t* cnt = g.counts + row * g.n_cat;

    double C[MAXC], z[MAXC], z2[MAXC], sa[MAXC], sb[MAXC], dl[MAXC], ia[MAXC], is[MAXC],
        wu[MAXC], wm[MAXC], base[MAXC];
    for (int c = 0; c < n; ++c) {
        C[c] = in.sizes[c];
        z[c] = in.z[c];
        z2[c] = z[c] * z[c];
        sa[c] = in.s_a[c];
        sb[c] = in.s_b[c];
        dl[c] = in.delta[c];
        ia[c] = in.inv_areas[c];
        is[c] = in.inv_sizes[c];
        wu[c] = in.wu[c];
        wm[c] = in.wm[c];
        base[c] = static_cast<double>(cnt[c]);
    }
    const double wself = in.wself;
    const int ci = g.inner, cl = g.last;

    double a_mass[LANES] = {}, a_loss[LANES] = {}, a_bself[LANES] = {};
    double a_alpha[MAXC][LANES] = {}, a_dA[MAXC][LANES] = {}, a_dB[MAXC][LANES] = {};

    for (int64_t j0 = first; j0 < stop; j0 += LANES) {
#pragma omp simd
        for (int l = 0; l < LANES; ++l) {
            const int64_t j = std::min<int64_t>(j0 + l, stop - 1);
            const double w = (j0 + l < stop)
                                 ? rw * g.t_inner[j - g.off_inner] * g.t_last[rest - j - g.off_last]
                                 : 0.0;
            double U[MAXC];
            for (int c = 0; c < n; ++c) U[c] = base[c];
            U[ci] = static_cast<double>(j);
            U[cl] = static_cast<double>(rest - j);
            double D = wself;
            for (int c = 0; c < n; ++c) D += U[c] * wu[c] + (C[c] - U[c]) * wm[c];
            const double inv = 1.0 / D;
            double alpha[MAXC], mu[MAXC], e[MAXC];
            double loss = 0.0, gbar = 0.0;
            for (int c = 0; c < n; ++c) {
                alpha[c] = U[c] * wu[c] * inv;
                mu[c] = (C[c] - U[c]) * wm[c] * inv;
                const double r = wu[c] * inv;
                const double sigma = (sa[c] * U[c] * (C[c] - U[c]) + sb[c] * U[c] * U[c]) * r * r;
                e[c] = z2[c] * (sigma - dl[c] * alpha[c]);
                loss += z2[c] * (sigma - 2.0 * dl[c] * alpha[c] + dl[c]);
                gbar += e[c];
            }
            a_mass[l] += w;
            a_loss[l] += w * (0.5 * loss);
            a_bself[l] += w * (-gbar * wself * inv);
            for (int c = 0; c < n; ++c) {
                a_alpha[c][l] += w * alpha[c];
                a_dA[c][l] += w * (z[c] * (e[c] - gbar * alpha[c]) * ia[c]);
                a_dB[c][l] += w * ((e[c] - gbar * (alpha[c] + mu[c])) * is[c]);
            }
        }
    }
    auto lanes = [](const double* a) {
        double s = 0.0;
        for (int l = 0; l < LANES; ++l) s += a[l];
        return s;
    };
    out[0] = lanes(a_mass);
    out[1] = lanes(a_loss);
    out[2] = lanes(a_bself);
    for (int c = 0; c < n; ++c) {
        out[3 + c] = lanes(a_alpha[c]);
        out[3 + n + c] = lanes(a_dA[c]);
        out[3 + 2 * n + c] = lanes(a_dB[c]);
    }
}

template <int NC, int MAXC>
void all_sums(const Grid& g, const Inputs& in, int threads, double* out) {
    const int ns = n_sums(g.n_cat);
    std::vector<double> part(static_cast<size_t>(g.n_blocks) * ns, 0.0);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
#endif
    for (int64_t b = 0; b < g.n_blocks; ++b) block_sums<NC, MAXC>(g, in, b, &part[b * ns]);
    (void)threads;
    std::fill(out, out + ns, 0.0);
    for (int64_t b = 0; b < g.n_blocks; ++b)
        for (int s = 0; s < ns; ++s) out[s] += part[b * ns + s];
}

}  // namespace

void validate(const Grid& g) {
    auto fail = [](const std::string& what) { throw std::invalid_argument("count grid: " + what); };
    if (g.n_cat < 2 || g.n_cat > 64) fail("number of key categories must be in [2, 64]");
    if (g.inner < 0 || g.inner >= g.n_cat || g.last < 0 || g.last >= g.n_cat || g.inner == g.last)
        fail("inner and last categories must be two different categories");
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
    switch (g.n_cat) {
        case 2: return all_sums<2, 2>(g, in, threads, out);
        case 3: return all_sums<3, 3>(g, in, threads, out);
        case 4: return all_sums<4, 4>(g, in, threads, out);
        case 5: return all_sums<5, 5>(g, in, threads, out);
        default: return all_sums<0, 64>(g, in, threads, out);
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
