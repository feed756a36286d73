"""The compiled functions of the numba backend (imported by it on first use).

Whether numba caches the compiled code on disk is decided before this module is imported
(:data:`mimfast.backends._numba_cache.CACHE`): without a writable cache location numba
refuses ``cache=True`` at decoration time, and the backend then imports this module again
with caching off.
"""

from __future__ import annotations

import numba
import numpy as np

from ._numba_cache import CACHE

njit = numba.njit(cache=CACHE)

# polynomials c0 + c1 x + c2 x^2 + c3 x^3 as 4-tuples: no allocation per block
@njit
def mul(p, q):
    return (p[0] * q[0], p[0] * q[1] + p[1] * q[0],
            p[0] * q[2] + p[1] * q[1] + p[2] * q[0],
            p[0] * q[3] + p[1] * q[2] + p[2] * q[1] + p[3] * q[0])

@njit
def add(p, q, s):  # p + s q
    return (p[0] + s * q[0], p[1] + s * q[1], p[2] + s * q[2], p[3] + s * q[3])

@njit
def moment(m, p, b):
    """E[P(x) i^b] from the moments (m00, m01, m11, m02, m12, m22, m03, m13, m23, m33)."""
    if b == 1:
        return p[0] * m[1] + p[1] * m[2]
    if b == 2:
        return p[0] * m[3] + p[1] * m[4] + p[2] * m[5]
    return p[0] * m[6] + p[1] * m[7] + p[2] * m[8] + p[3] * m[9]

FAST = {"reassoc", "contract"}


@numba.njit(cache=CACHE, fastmath=FAST, inline="always")
def accumulate(m, x, w, d0, d1):
    """The ten moments m = (m00, m01, m11, m02, m12, m22, m03, m13, m23, m33) with one more
    point at offset x and weight w: m_ab += w x^a i^b, i = 1 / (d0 + d1 x). The hot loop."""
    i = 1.0 / (d0 + d1 * x)
    p1 = w * i
    p2 = p1 * i
    p3 = p2 * i
    x2 = x * x
    return (m[0] + w, m[1] + p1, m[2] + p1 * x, m[3] + p2, m[4] + p2 * x, m[5] + p2 * x2,
            m[6] + p3, m[7] + p3 * x, m[8] + p3 * x2, m[9] + p3 * x2 * x)

# reassociation lets LLVM vectorise the ten sums; the order is fixed by the compiled code,
# so results still do not depend on the thread count
@numba.njit(cache=CACHE, fastmath=FAST, error_model="numpy")
def moments(first, stop, x0, d0, d1, rw, r_rest, t_in, off_in, t_last, off_last):
    """The moments of a grid block: counts first..stop-1 at offsets from x0, weights from the
    row weight and the inner and last tables."""
    m = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    n = stop - first
    tin = t_in[first - off_in: stop - off_in]
    tlast = t_last[r_rest - stop + 1 - off_last: r_rest - first + 1 - off_last]
    top = np.uint64(n - 1)
    for k in range(n):
        # unsigned indices spare numba's negative-index fix-up, which blocks vectorising
        m = accumulate(m, float(first + k - x0), rw * tin[np.uint64(k)] * tlast[top - np.uint64(k)],
                       d0, d1)
    return m

@numba.njit(cache=CACHE, fastmath=FAST, error_model="numpy")
def point_moments(first, stop, d0, d1, node_x, node_w):
    """The same moments over the nodes of a point-set row (offsets node_x)."""
    m = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for k in range(first, stop):
        m = accumulate(m, node_x[k], node_w[k], d0, d1)
    return m

@njit
def count(counts, rest, row, c, ci, cl, x0):
    """(u, a): the count of category c is u + a x in the block."""
    if c == ci:
        return float(x0), 1.0
    if c == cl:
        return float(rest[row] - x0), -1.0
    return float(counts[row, c]), 0.0

@njit
def block_sums(b, counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl, blocks,
               C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0, alt, centre, node_x,
               node_w, out):
    """docs/model.md §3 sums of one block: of a count grid, or of a point set when
    ``node_x`` is non-empty (float counts, inner count ``centre[row] + node_x[k]``). With
    ``alt``, a block without unmasked own-area keys takes the weights wu0, wm0, wself0."""
    n = C.shape[0]
    row, first, stop = blocks[b, 0], blocks[b, 1], blocks[b, 2]
    points = node_x.shape[0] > 0
    x0 = centre[row] if points else float((first + stop - 1) // 2)
    u0, a0 = count(counts, rest, row, 0, ci, cl, x0)
    if alt and u0 == 0.0 and a0 == 0.0:
        wu, wm, wself = wu0, wm0, wself0
    q0, q1 = wself, 0.0  # Q = D - alpha_own, mu_own terms: Q / D = 1 - alpha_own - mu_own
    for c in range(1, n):
        u, a = count(counts, rest, row, c, ci, cl, x0)
        q0 += wu[c] * u + wm[c] * (C[c] - u)
        q1 += a * (wu[c] - wm[c])
    r0 = q0 + wm[0] * (C[0] - u0)
    r1 = q1 - a0 * wm[0]
    if points:
        m = point_moments(first, stop, r0 + wu[0] * u0, r1 + a0 * wu[0], node_x, node_w)
    else:
        m = moments(first, stop, int(x0), r0 + wu[0] * u0, r1 + a0 * wu[0],
                    row_weight[row], rest[row], t_in, off_in, t_last, off_last)

    zero = (0.0, 0.0, 0.0, 0.0)
    R = (r0, r1, 0.0, 0.0)
    z02 = z[0] * z[0]
    Al0 = (wu[0] * u0, wu[0] * a0, 0.0, 0.0)
    L = add(zero, mul(R, R), z02)  # 2 loss = L i^2
    E0 = add(zero, mul(Al0, R), -z02)  # e_own = E0 i^2
    Gs = zero  # the groups' part of gbar
    for c in range(1, n):
        u, a = count(counts, rest, row, c, ci, cl, x0)
        U, V = (u, a, 0.0, 0.0), (C[c] - u, -a, 0.0, 0.0)
        S2 = add(add(zero, mul(U, V), sa[c]), mul(U, U), sb[c])
        Ec = add(zero, S2, z[c] * z[c] * wu[c] * wu[c])
        L = add(L, Ec, 1.0)
        Gs = add(Gs, Ec, 1.0)
    Gb = add(Gs, E0, 1.0)  # gbar = Gb i^2
    out[0] = m[0]
    out[1] = 0.5 * moment(m, L, 2)
    out[2] = -wself * moment(m, Gb, 3)
    for c in range(n):
        u, a = count(counts, rest, row, c, ci, cl, x0)
        Al = (wu[c] * u, wu[c] * a, 0.0, 0.0)
        Mu = (wm[c] * (C[c] - u), -wm[c] * a, 0.0, 0.0)
        if c == 0:
            Ec = E0
        else:
            U, V = (u, a, 0.0, 0.0), (C[c] - u, -a, 0.0, 0.0)
            S2 = add(add(zero, mul(U, V), sa[c]), mul(U, U), sb[c])
            Ec = add(zero, S2, z[c] * z[c] * wu[c] * wu[c])
        ga = moment(m, mul(Gb, Al), 3)
        out[3 + c] = moment(m, Al, 1)
        if c == 0:
            out[3 + n] = -z[0] * moment(m, mul(Al0, L), 3)
        else:
            out[3 + n + c] = z[c] * (moment(m, Ec, 2) - ga) * ia[c]
        if c == 0:  # e Q i - (gbar - e)(alpha + mu): nothing cancels as alpha_own nears 1
            out[3 + 2 * n] = (moment(m, mul(E0, (q0, q1, 0.0, 0.0)), 3)
                              - moment(m, mul(Gs, add(Al, Mu, 1.0)), 3)) * isz[0]
        else:
            out[3 + 2 * n + c] = (moment(m, Ec, 2) - ga - moment(m, mul(Gb, Mu), 3)) * isz[c]

@numba.njit(cache=CACHE, parallel=True)
def all_sums(counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl, blocks,
             C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0, alt, centre, node_x,
             node_w):
    n_blocks = blocks.shape[0]
    ns = 3 + 3 * C.shape[0]
    part = np.zeros((n_blocks, ns))
    for b in numba.prange(n_blocks):
        block_sums(b, counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl,
                   blocks, C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0, alt, centre,
                   node_x, node_w, part[b])
    out = np.zeros(ns)
    for b in range(n_blocks):
        for s in range(ns):
            out[s] += part[b, s]
    return out
