"""The numba backend: the kernel of :mod:`mimfast.backends.numpy_backend` compiled by numba.

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
    @numba.njit(cache=True, fastmath=False)
    def block_sums(b, counts, rest, lo, hi, row_weight, t_in, off_in, t_last, off_last, ci, cl,
                   blocks, C, z, sa, sb, dl, ia, isz, wu, wm, wself, out):
        n = C.shape[0]
        row, first, stop = blocks[b, 0], blocks[b, 1], blocks[b, 2]
        r_rest = rest[row]
        rw = row_weight[row]
        U = np.empty(n)
        alpha = np.empty(n)
        mu = np.empty(n)
        e = np.empty(n)
        for c in range(n):
            U[c] = counts[row, c]
        for j in range(first, stop):
            w = rw * t_in[j - off_in] * t_last[r_rest - j - off_last]
            U[ci] = j
            U[cl] = r_rest - j
            D = wself
            for c in range(n):
                D += U[c] * wu[c] + (C[c] - U[c]) * wm[c]
            inv = 1.0 / D
            loss = 0.0
            gbar = 0.0
            for c in range(n):
                alpha[c] = U[c] * wu[c] * inv
                mu[c] = (C[c] - U[c]) * wm[c] * inv
                r = wu[c] * inv
                sigma = (sa[c] * U[c] * (C[c] - U[c]) + sb[c] * U[c] * U[c]) * r * r
                z2 = z[c] * z[c]
                e[c] = z2 * (sigma - dl[c] * alpha[c])
                loss += z2 * (sigma - 2.0 * dl[c] * alpha[c] + dl[c])
                gbar += e[c]
            out[0] += w
            out[1] += w * (0.5 * loss)
            out[2] += w * (-gbar * wself * inv)
            for c in range(n):
                out[3 + c] += w * alpha[c]
                out[3 + n + c] += w * (z[c] * (e[c] - gbar * alpha[c]) * ia[c])
                out[3 + 2 * n + c] += w * ((e[c] - gbar * (alpha[c] + mu[c])) * isz[c])

    @numba.njit(cache=True, parallel=True)
    def all_sums(counts, rest, lo, hi, row_weight, t_in, off_in, t_last, off_last, ci, cl,
                 blocks, C, z, sa, sb, dl, ia, isz, wu, wm, wself):
        n_blocks = blocks.shape[0]
        ns = 3 + 3 * C.shape[0]
        part = np.zeros((n_blocks, ns))
        for b in numba.prange(n_blocks):
            block_sums(b, counts, rest, lo, hi, row_weight, t_in, off_in, t_last, off_last, ci,
                       cl, blocks, C, z, sa, sb, dl, ia, isz, wu, wm, wself, part[b])
        out = np.zeros(ns)
        for b in range(n_blocks):
            for s in range(ns):
                out[s] += part[b, s]
        return out

    return all_sums


def kernel(grid, inputs, threads=None):
    """SPEC §3 sums over one class grid, compiled by numba (first call compiles or loads cache)."""
    global _compiled
    from .cpp_backend import check_threads

    if _compiled is None:
        _compiled = _build()
    threads = min(check_threads(threads), numba.config.NUMBA_NUM_THREADS)
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        return _compiled(
            grid.counts, grid.rest, grid.lo, grid.hi, grid.row_weight, grid.t_inner,
            grid.off_inner, grid.t_last, grid.off_last, grid.inner, grid.last, grid.blocks,
            inputs.sizes, inputs.z, inputs.s_a, inputs.s_b, inputs.delta, inputs.inv_areas,
            inputs.inv_sizes, inputs.wu, inputs.wm, inputs.wself,
        )
    finally:
        numba.set_num_threads(previous)
