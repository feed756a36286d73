// Minimal hand-written loops over a paper-shaped grid (3 key categories): the ceiling the
// library kernel is compared with. No grid object, no validation, no per-block set-up; the
// points are visited in chunks of 2048 along a row, as the library does, for cache reuse.
//   direct : the formulas of docs/model.md §3 evaluated at every point (the straightforward kernel)
//   moments: the ten moment sums the library kernel accumulates (its hot loop, bare)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <omp.h>

int main(int argc, char** argv) {
    const long rows = argc > 1 ? atol(argv[1]) : 180, cols = argc > 2 ? atol(argv[2]) : 86000;
    const int reps = argc > 3 ? atoi(argv[3]) : 5;
    std::vector<double> tin(cols), tlast(cols + rows);
    for (long j = 0; j < cols; ++j) tin[j] = std::exp(-0.5 * (j - cols / 2.0) * (j - cols / 2.0) / (cols * cols / 64.0));
    for (long j = 0; j < cols + rows; ++j) tlast[j] = std::exp(-0.5 * (j - cols / 2.0) * (j - cols / 2.0) / (cols * cols / 64.0));
    const double C0 = 500, C1 = 1.26e8, C2 = 8.74e8, wu0 = 3.1, wu1 = 0.2, wu2 = 1.1, wm0 = 1.0, wm1 = 1.0, wm2 = 1.0, ws = 1.0;
    const double z0 = 1, z1 = 1, z2 = 1, sa2 = 1.0 / C2, sb2 = 1e-6;
    for (int mode = 0; mode < 2; ++mode) {
        double best = 1e9, check = 0;
        for (int r = 0; r < reps; ++r) {
            double acc[12] = {};
            double c0 = 0, c1 = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, c6 = 0, c7 = 0, c8 = 0, c9 = 0, c10 = 0, c11 = 0;
            auto t0 = std::chrono::steady_clock::now();
            const long chunks = (cols + 2047) / 2048;
#pragma omp parallel for reduction(+ : c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11) schedule(static)
            for (long blk = 0; blk < rows * chunks; ++blk) {
                const long row = blk / chunks, j0 = (blk % chunks) * 2048, j1 = std::min(cols, j0 + 2048);
                double l0 = 0, l1 = 0, l2 = 0, l3 = 0, l4 = 0, l5 = 0, l6 = 0, l7 = 0, l8 = 0, l9 = 0, l10 = 0, l11 = 0;
                const double U0 = 150 + row % 200, rw = 1e-9;
                const double* tl = tlast.data() + row;
                if (mode == 0) {
#pragma omp simd reduction(+ : l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11)
                    for (long j = j0; j < j1; ++j) {
                        const double w = rw * tin[j] * tl[cols - 1 - j];
                        const double U1 = 6.3e7 + j, U2 = 4.37e8 - j;
                        const double D = ws + U0 * wu0 + (C0 - U0) * wm0 + U1 * wu1 + (C1 - U1) * wm1 + U2 * wu2 + (C2 - U2) * wm2;
                        const double i = 1.0 / D;
                        const double a0 = U0 * wu0 * i, a1 = U1 * wu1 * i, a2 = U2 * wu2 * i;
                        const double m0 = (C0 - U0) * wm0 * i, m1 = (C1 - U1) * wm1 * i, m2 = (C2 - U2) * wm2 * i;
                        const double b = 1.0 - a0;
                        const double s1 = U1 * U1 * wu1 * wu1 * i * i, s2 = (sa2 * U2 * (C2 - U2) + sb2 * U2 * U2) * wu2 * wu2 * i * i;
                        const double e0 = -z0 * z0 * a0 * b, e1 = z1 * z1 * s1, e2 = z2 * z2 * s2;
                        const double l = 0.5 * (z0 * z0 * b * b + e1 + e2), g = e0 + e1 + e2;
                        l0 += w; l1 += w * l; l2 += w * (-g * ws * i);
                        l3 += w * a0; l4 += w * a1; l5 += w * a2;
                        l6 += w * (-2 * z0 * a0 * l); l7 += w * z1 * (e1 - g * a1); l8 += w * z2 * (e2 - g * a2) * 1e-6;
                        l9 += w * (e0 - g * (a0 + m0)) / C0; l10 += w * (e1 - g * (a1 + m1)) / C1; l11 += w * (e2 - g * (a2 + m2)) / C2;
                    }
                } else {
                    const double d0 = 1e9, d1 = 0.9;
#pragma omp simd reduction(+ : l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11)
                    for (long j = j0; j < j1; ++j) {
                        const double x = double(j - cols / 2);
                        const double w = rw * tin[j] * tl[cols - 1 - j];
                        const double i = 1.0 / (d0 + d1 * x);
                        const double p1 = w * i, p2 = p1 * i, p3 = p2 * i, x2 = x * x;
                        l0 += w; l1 += p1; l2 += p1 * x; l3 += p2; l4 += p2 * x;
                        l5 += p2 * x2; l6 += p3; l7 += p3 * x; l8 += p3 * x2; l9 += p3 * x2 * x;
                    }
                }
                c0 += l0; c1 += l1; c2 += l2; c3 += l3; c4 += l4; c5 += l5;
                c6 += l6; c7 += l7; c8 += l8; c9 += l9; c10 += l10; c11 += l11;
            }
            double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (dt < best) best = dt;
            check += c1;
        }
        std::printf("%s threads=%d points=%ld ns/point=%.3f (check %g)\n", mode == 0 ? "direct " : "moments",
                    omp_get_max_threads(), rows * cols, best / (rows * cols) * 1e9, check);
    }
}
