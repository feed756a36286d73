"""The numba backend: the C++ kernel's moment method (``cpp/kernel.cpp``) compiled by numba.

It walks the same fixed blocks as the C++ kernel (``prange`` over blocks, per-block partial
sums added in block order), so its result does not depend on the number of threads.
Install with ``pip install mimfast[numba]``.
"""

from __future__ import annotations

import numpy as np

NAME = "numba"

try:
    import numba
except ImportError:  # pragma: no cover - depends on the environment
    numba = None


def available():
    """Whether numba is importable, and its thread count."""
    if numba is None:
        return False, (
            "numba is not installed; install it with `pip install mimfast[numba]` "
            "(or `pip install numba`)"
        )
    return True, {"version": numba.__version__, "max_threads": int(numba.config.NUMBA_NUM_THREADS)}


_compiled = None


def _build():
    njit = numba.njit(cache=True)

    @njit
    def mul(p, q):
        r = np.zeros(4)
        for a in range(4):
            for b in range(4 - a):
                r[a + b] += p[a] * q[b]
        return r

    @njit
    def moment(m, p, b):
        s = 0.0
        for a in range(b + 1):
            s += p[a] * m[a, b]
        return s

    @njit
    def block_sums(b, counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl, blocks,
                   C, z, sa, sb, ia, isz, wu, wm, wself, out):
        n = C.shape[0]
        row, first, stop = blocks[b, 0], blocks[b, 1], blocks[b, 2]
        x0 = (first + stop - 1) // 2
        u = np.empty(n)
        a = np.zeros(n)
        for c in range(n):
            u[c] = counts[row, c]
        u[ci], a[ci] = x0, 1.0
        u[cl], a[cl] = rest[row] - x0, -1.0
        r0 = wself + wm[0] * (C[0] - u[0])
        r1 = -a[0] * wm[0]
        for c in range(1, n):
            r0 += wu[c] * u[c] + wm[c] * (C[c] - u[c])
            r1 += a[c] * (wu[c] - wm[c])
        d0 = r0 + wu[0] * u[0]
        d1 = r1 + a[0] * wu[0]

        m = np.zeros((4, 4))
        rw = row_weight[row]
        r_rest = rest[row]
        for j in range(first, stop):
            x = float(j - x0)
            w = rw * t_in[j - off_in] * t_last[r_rest - j - off_last]
            i = 1.0 / (d0 + d1 * x)
            p1 = w * i
            p2 = p1 * i
            p3 = p2 * i
            x2 = x * x
            m[0, 0] += w
            m[0, 1] += p1
            m[1, 1] += p1 * x
            m[0, 2] += p2
            m[1, 2] += p2 * x
            m[2, 2] += p2 * x2
            m[0, 3] += p3
            m[1, 3] += p3 * x
            m[2, 3] += p3 * x2
            m[3, 3] += p3 * x2 * x

        R = np.array([r0, r1, 0.0, 0.0])
        z02 = z[0] * z[0]
        L = z02 * mul(R, R)
        Al = np.zeros((n, 4))
        Mu = np.zeros((n, 4))
        E = np.zeros((n, 4))
        for c in range(n):
            Al[c, 0], Al[c, 1] = wu[c] * u[c], wu[c] * a[c]
            Mu[c, 0], Mu[c, 1] = wm[c] * (C[c] - u[c]), -wm[c] * a[c]
        E[0] = -z02 * mul(Al[0], R)
        Gb = E[0].copy()
        for c in range(1, n):
            U = np.array([u[c], a[c], 0.0, 0.0])
            V = np.array([C[c] - u[c], -a[c], 0.0, 0.0])
            S2 = sa[c] * mul(U, V) + sb[c] * mul(U, U)
            E[c] = (z[c] * z[c] * wu[c] * wu[c]) * S2
            L += E[c]
            Gb += E[c]
        out[0] = m[0, 0]
        out[1] = 0.5 * moment(m, L, 2)
        out[2] = -wself * moment(m, Gb, 3)
        for c in range(n):
            out[3 + c] = moment(m, Al[c], 1)
            ga = moment(m, mul(Gb, Al[c]), 3)
            if c == 0:
                out[3 + n] = -z[0] * moment(m, mul(Al[0], L), 3)
            else:
                out[3 + n + c] = z[c] * (moment(m, E[c], 2) - ga) * ia[c]
            out[3 + 2 * n + c] = (moment(m, E[c], 2) - ga - moment(m, mul(Gb, Mu[c]), 3)) * isz[c]

    @numba.njit(cache=True, parallel=True)
    def all_sums(counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl, blocks,
                 C, z, sa, sb, ia, isz, wu, wm, wself):
        n_blocks = blocks.shape[0]
        ns = 3 + 3 * C.shape[0]
        part = np.zeros((n_blocks, ns))
        for b in numba.prange(n_blocks):
            block_sums(b, counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl,
                       blocks, C, z, sa, sb, ia, isz, wu, wm, wself, part[b])
        out = np.zeros(ns)
        for b in range(n_blocks):
            for s in range(ns):
                out[s] += part[b, s]
        return out

    return all_sums


def kernel(grid, inputs, threads=None):
    """SPEC §3 sums over one class grid, compiled by numba (first call compiles or loads cache).

    The same moment method as the C++ kernel (see ``cpp/kernel.cpp``): per block, the ten
    moments sum w x^a i^b, turned into the SPEC sums with the row's polynomial coefficients.
    """
    global _compiled
    from .cpp_backend import check_threads

    if _compiled is None:
        _compiled = _build()
    threads = min(check_threads(threads), numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _compiled(
            grid.counts, grid.rest, grid.row_weight, grid.t_inner, grid.off_inner, grid.t_last,
            grid.off_last, grid.inner, grid.last, grid.blocks, grid.fsizes, inputs.z, grid.s_a,
            grid.s_b, grid.inv_areas, grid.inv_sizes, inputs.wu, inputs.wm, inputs.wself,
        )
    finally:
        numba.set_num_threads(previous)
