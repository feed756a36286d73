// Minimal hand-written loops over a paper-shaped grid (3 key categories): the ceiling the
// library kernel is compared with. No grid object, no blocks, no validation.
//   direct : SPEC 3's formulas evaluated at every point (the straightforward kernel)
//   moments: the ten moment sums the library kernel accumulates (its hot loop, bare)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
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
#pragma omp parallel for reduction(+ : c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11) schedule(static)
            for (long row = 0; row < rows; ++row) {
                const double U0 = 150 + row % 200, rw = 1e-9;
                const double* tl = tlast.data() + row;
                if (mode == 0) {
#pragma omp simd reduction(+ : c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11)
                    for (long j = 0; j < cols; ++j) {
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
                        c0 += w; c1 += w * l; c2 += w * (-g * ws * i);
                        c3 += w * a0; c4 += w * a1; c5 += w * a2;
                        c6 += w * (-2 * z0 * a0 * l); c7 += w * z1 * (e1 - g * a1); c8 += w * z2 * (e2 - g * a2) * 1e-6;
                        c9 += w * (e0 - g * (a0 + m0)) / C0; c10 += w * (e1 - g * (a1 + m1)) / C1; c11 += w * (e2 - g * (a2 + m2)) / C2;
                    }
                } else {
                    const double d0 = 1e9, d1 = 0.9;
#pragma omp simd reduction(+ : c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11)
                    for (long j = 0; j < cols; ++j) {
                        const double x = double(j - cols / 2);
                        const double w = rw * tin[j] * tl[cols - 1 - j];
                        const double i = 1.0 / (d0 + d1 * x);
                        const double p1 = w * i, p2 = p1 * i, p3 = p2 * i, x2 = x * x;
                        c0 += w; c1 += p1; c2 += p1 * x; c3 += p2; c4 += p2 * x;
                        c5 += p2 * x2; c6 += p3; c7 += p3 * x; c8 += p3 * x2; c9 += p3 * x2 * x;
                    }
                }
            }
            double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (dt < best) best = dt;
            check += c1;
        }
        std::printf("%s threads=%d points=%ld ns/point=%.3f (check %g)\n", mode == 0 ? "direct " : "moments",
                    omp_get_max_threads(), rows * cols, best / (rows * cols) * 1e9, check);
    }
}
