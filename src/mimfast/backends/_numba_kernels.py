"""The compiled functions of the numba backend (imported by it on first use).

Whether numba caches the compiled code on disk is decided before this module is imported
(:data:`mimfast.backends._numba_cache.CACHE`): without a writable cache location numba
refuses ``cache=True`` at decoration time, and the backend then imports this module again
with caching off.
"""

from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from ..model import (
    OWN_LEAD,
    TINY_MAG,  # a product's underflow as a magnitude (cpp/kernel.cpp)
)
from ..model import key_weights as _key_weights
from ..model import rounding_estimate as _rounding_estimate
from ._numba_cache import CACHE

njit = numba.njit(cache=CACHE)
# without reference counting: for functions that allocate nothing, called many times per step
# with many arrays (numba counts a reference to each on entry and exit, atomic operations that
# cost more than the sums of a short block)
njit_bare = numba.njit(cache=CACHE, _nrt=False)

# polynomials c0 + c1 x + c2 x^2 + c3 x^3 as 4-tuples: no allocation per block
@njit
def mul(p, q):
    return (p[0] * q[0], p[0] * q[1] + p[1] * q[0],
            p[0] * q[2] + p[1] * q[1] + p[2] * q[0],
            p[0] * q[3] + p[1] * q[2] + p[2] * q[1] + p[3] * q[0])

@njit
def add(p, q, s):  # p + s q
    return (p[0] + s * q[0], p[1] + s * q[1], p[2] + s * q[2], p[3] + s * q[3])

EPS = 2.0**-53
BLOCK_SHARE = 2.0**-48  # cpp/kernel.cpp: when a block is summed again point by point
D_COND = 2.0**10
ILL = 2.0**5
SHORT_BLOCK = 16  # blocks this short are summed point by point (cpp/kernel.cpp)
WORK_PER_CAT = 22  # scratch of a block per category (block_sums)


@njit
def underflow_gain(z):
    """The largest factor a line applies to a product formed before it (cpp/kernel.cpp;
    :func:`mimfast.model.underflow_gain`)."""
    g = 1.0
    for v in z:
        g = max(g, abs(v))
    return 2.0 * g


@njit
def abs_moments(m, h):
    """Bounds M[b][a] >= sum w |x|^a i^b from the moments (cpp/kernel.cpp, AbsMoments)."""
    M1 = (m[1], h * m[1], 0.0, 0.0)
    M2 = (m[3], np.sqrt(m[3] * m[5]), m[5], h * m[5])
    M3 = (m[6], np.sqrt(m[6] * m[8]), m[8], h * m[8])
    return (M1, M2, M3)


@njit
def abs_moment(am, p, b):
    M = am[b - 1]
    s = 0.0
    for a in range(b + 1):
        s += abs(p[a]) * M[a]
    return s


@njit
def flat(f0, f1, h):
    return abs(f1) * h <= 0.125 * abs(f0)


@njit
def underflow(amh, p, b, f, h, ig, points, n):
    """The underflow magnitude of one term f E[P i^b] (cpp/kernel.cpp, block_sums)."""
    if not abs(f) * abs_moment(amh, p, b) > 0:
        return 0.0
    ph, hp, grow_i, mh = 0.0, 1.0, 1.0, 0.0
    M = amh[b - 1]
    for a in range(b + 1):
        ph += abs(p[a]) * hp
        mh += M[a]
        hp *= h
    for _ in range(1, b):
        grow_i *= ig
    return (1.0 + abs(f)) * (points * (b + 1) * grow_i * ph + (8.0 + 2.0 * n) * mh
                             + b + 1) * TINY_MAG


@njit
def term(m, am, p, b, f, grow, fast, acc, uf):
    """The magnitude of one term f E[P i^b] of a line (cpp/kernel.cpp, block_sums); acc
    gathers its value's and its moments' magnitudes; uf: (amh, h, ig, points, n) for its
    underflow."""
    v = abs(f * moment(m, p, b))
    u = underflow(uf[0], p, b, f, uf[1], uf[2], uf[3], uf[4])
    if fast:
        return 2.0 * grow * v + u
    acc[0] += v
    mg = abs(f) * grow * abs_moment(am, p, b)
    acc[1] += mg
    return mg + u


@njit
def tup(r):  # a row of 4 coefficients as a polynomial
    return (r[0], r[1], r[2], r[3])

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

# without reference counting (_nrt=False: it allocates nothing): a call passes some thirty
# arrays, and counting a reference to each on entry and exit, atomic operations, costs more
# than the sums of a short block
@numba.njit(cache=CACHE, error_model="numpy", _nrt=False)
def block_sums(b, b_end, counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl,
               blocks, C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0, alt, centre,
               node_x, node_w, out, mag, by_points, ws, units):
    """docs/model.md §3 sums of block b (of blocks b .. b_end - 1 together, all summed point
    by point: :func:`_all_sums`' tasks): of a count grid, or of a point set when
    ``node_x`` is non-empty (float counts, inner count ``centre[row] + node_x[k]``). With
    ``alt``, a block without unmasked own-area keys takes the weights wu0, wm0, wself0.
    ``units`` (:func:`units`): the class's named areas, empty for a class without.

    By moments, or point by point with ``by_points``; ``mag`` gets each sum's rounding
    magnitude and the result says whether the moments were ill-conditioned
    (``cpp/kernel.cpp``, block_sums). ``ws``: scratch of WORK_PER_CAT n + 2 values (no
    allocation per block)."""
    n = C.shape[0]
    row, first, stop = blocks[b, 0], blocks[b, 1], blocks[b, 2]
    points = node_x.shape[0] > 0
    if units[1].shape[0] == 0 and (by_points or stop - first <= SHORT_BLOCK):
        point_sums(b, b_end, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                   off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm,
                   wself, wu0, wm0, wself0, alt, out, mag, ws)
        return False
    x0 = centre[row] if points else float((first + stop - 1) // 2)
    u0, a0 = count(counts, rest, row, 0, ci, cl, x0)
    if alt and u0 == 0.0 and a0 == 0.0:
        wu, wm, wself = wu0, wm0, wself0
    # Al_c, Mu_c (rows of al, mu): the unmasked and masked keys' terms of D. D without the
    # unmasked keys of c (X_c = D (1 - alpha_c)) and without all keys of c
    # (Y_c = D (1 - alpha_c - mu_c)) are summed from the other, positive terms; E_c i^2 = e_c,
    # rest_c = gbar - e_c summed without e_c (cpp/kernel.cpp, block_sums)
    for c in range(n):  # the counts u + a x: u in ws[0:n], a in ws[n:2n]
        ws[c], ws[n + c] = count(counts, rest, row, c, ci, cl, x0)
    if units[1].shape[0] > 0:  # named areas: point by point on every block
        named_sums(first, stop, x0, row, points, row_weight, rest, t_in, off_in, t_last,
                   off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0,
                   wself0, alt, units, out, mag, ws)
        return False
    zero = (0.0, 0.0, 0.0, 0.0)
    al = ws[2 * n:6 * n].reshape((n, 4))
    mu = ws[6 * n:10 * n].reshape((n, 4))
    for c in range(n):
        u, a = count(counts, rest, row, c, ci, cl, x0)
        al[c] = (wu[c] * u, wu[c] * a, 0.0, 0.0)
        mu[c] = (wm[c] * (C[c] - u), -wm[c] * a, 0.0, 0.0)
    xs = ws[10 * n:14 * n].reshape((n, 4))
    ys = ws[14 * n:18 * n].reshape((n, 4))
    for c in range(n):
        Y = (wself, 0.0, 0.0, 0.0)
        for k in range(n):
            if k != c:
                Y = add(Y, add(tup(al[k]), tup(mu[k]), 1.0), 1.0)
        ys[c] = Y
        xs[c] = add(Y, tup(mu[c]), 1.0)
    X0, Al0 = tup(xs[0]), tup(al[0])
    D = add(X0, Al0, 1.0)
    if points:
        m = point_moments(first, stop, D[0], D[1], node_x, node_w)
        h = 0.0
        for j in range(first, stop):
            h = max(h, abs(node_x[j]))
    else:
        m = moments(first, stop, int(x0), D[0], D[1],
                    row_weight[row], rest[row], t_in, off_in, t_last, off_last)
        h = float(max(x0 - first, stop - 1 - x0))
    dmin = min(D[0] - abs(D[1]) * h, D[0] + abs(D[1]) * h)
    if not dmin > 0 or not (abs(D[0]) + abs(D[1]) * h) <= D_COND * dmin:
        mag[:] = np.inf
        return True
    grow = 16.0 + 3.0 * (abs(D[0]) + abs(D[1]) * h) / dmin
    # fast path (cpp/kernel.cpp): every affine factor varies by at most 1/8 over the block
    fast = True
    for c in range(n):
        fast = (fast and flat(ws[c], ws[n + c], h) and flat(C[c] - ws[c], ws[n + c], h)
                and flat(xs[c, 0], xs[c, 1], h) and flat(ys[c, 0], ys[c, 1], h))
    am = abs_moments(m, 0.0 if fast else h)
    uf = (abs_moments(m, h), h, max(1.0, 1.0 / dmin), float(stop - first), n)
    acc = ws[22 * n:22 * n + 2]  # magnitudes of the lines' terms' values, and of their moment sums
    acc[:] = 0.0
    z02 = z[0] * z[0]
    # the latents and counts multiply the small weights first (cpp/kernel.cpp)
    zX0 = add(zero, X0, z[0])
    L = mul(zX0, zX0)  # 2 loss = L i^2
    es = ws[18 * n:22 * n].reshape((n, 4))
    es[0] = mul(add(zero, Al0, -z02), X0)  # e_own
    for c in range(1, n):
        u, a = count(counts, rest, row, c, ci, cl, x0)
        U, V = (u, a, 0.0, 0.0), (C[c] - u, -a, 0.0, 0.0)
        S2 = add(add(zero, mul(U, V), sa[c]), mul(U, U), sb[c])
        zw = z[c] * wu[c]
        es[c] = (S2[0] * zw * zw, S2[1] * zw * zw, S2[2] * zw * zw, S2[3] * zw * zw)
        L = add(L, tup(es[c]), 1.0)
    Gb = zero  # gbar = Gb i^2
    for c in range(n):
        Gb = add(Gb, tup(es[c]), 1.0)
    out[0] = m[0]
    mag[0] = grow * m[0]
    out[1] = 0.5 * moment(m, L, 2)
    mag[1] = term(m, am, L, 2, 0.5, grow, fast, acc, uf)
    out[2] = -wself * moment(m, Gb, 3)
    mag[2] = term(m, am, Gb, 3, wself, grow, fast, acc, uf)
    for c in range(n):
        Rest = zero
        for k in range(n):
            if k != c:
                Rest = add(Rest, tup(es[k]), 1.0)
        Al, Ec = tup(al[c]), tup(es[c])
        out[3 + c] = moment(m, Al, 1)
        mag[3 + c] = term(m, am, Al, 1, 1.0, grow, fast, acc, uf)
        if c == 0:  # -2 z alpha l
            p = mul(Al0, L)
            out[3 + n] = -z[0] * moment(m, p, 3)
            mag[3 + n] = term(m, am, p, 3, z[0], grow, fast, acc, uf)
        else:  # z (e (1 - alpha) - (gbar - e) alpha) / n'
            p, q = mul(Ec, tup(xs[c])), mul(Rest, Al)
            f = z[c] * ia[c]
            out[3 + n + c] = f * (moment(m, p, 3) - moment(m, q, 3))
            mag[3 + n + c] = (term(m, am, p, 3, f, grow, fast, acc, uf)
                              + term(m, am, q, 3, f, grow, fast, acc, uf))
        # e (1 - alpha - mu) - (gbar - e)(alpha + mu)
        p, q = mul(Ec, tup(ys[c])), mul(Rest, add(Al, tup(mu[c]), 1.0))
        out[3 + 2 * n + c] = (moment(m, p, 3) - moment(m, q, 3)) * isz[c]
        mag[3 + 2 * n + c] = (term(m, am, p, 3, isz[c], grow, fast, acc, uf)
                              + term(m, am, q, 3, isz[c], grow, fast, acc, uf))
    return not fast and not acc[1] <= ILL * acc[0]


@numba.njit(cache=CACHE, inline="always")
def point_at(j, x0, row, points, row_weight, rest, t_in, off_in, t_last, off_last, node_x,
             node_w, u, a, U, n):
    """The weight of point j of a block of row ``row``; its counts u + a x into U."""
    if points:
        x, w = node_x[j], node_w[j]
    else:
        x = float(j) - x0
        w = row_weight[row] * t_in[j - off_in] * t_last[int(rest[row]) - j - off_last]
    for c in range(n):
        U[c] = u[c] + a[c] * x
    return w


@intrinsic
def local_array(typingctx, size):
    """A float64 array of ``size`` (a compile-time constant) on the calling function's stack:
    once its loops are unrolled, LLVM keeps its values in registers."""
    if not isinstance(size, nbtypes.IntegerLiteral):
        return None
    n = size.literal_value
    arr = nbtypes.Array(nbtypes.float64, 1, "C")

    def codegen(context, builder, sig, args):
        data = cgutils.alloca_once(builder, context.get_value_type(nbtypes.float64), size=n)
        ary = make_array(arr)(context, builder)
        intp = context.get_value_type(nbtypes.intp)
        populate_array(ary, data=data, shape=[intp(n)], strides=[intp(8)], itemsize=intp(8),
                       meminfo=None)
        return ary._getvalue()

    return arr(size), codegen


# the category count that _point_sums is compiled for (0: any) and its number of sums; each
# copy (_point_sums_for) has its own
NC, NS = 0, 3


def _point_sums(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu1, wm1,
                wself1, wu0, wm0, wself0, alt, out, mag, ws):
    """The sums of blocks b0 .. b1 - 1 together, point by point (cpp/kernel.cpp, point_sums);
    a block without unmasked own-area keys takes the weights wu0, wm0, wself0 with ``alt``.
    ``ws``: for a category count not compiled in (:data:`POINT_SUMS`), the scratch of the
    per-category values and sums."""
    n = C.shape[0] if NC == 0 else NC
    if NC == 0:
        u, a, U, un, ms = ws[:n], ws[n:2 * n], ws[2 * n:3 * n], ws[3 * n:4 * n], ws[4 * n:5 * n]
        Y, X, e = ws[5 * n:6 * n], ws[6 * n:7 * n], ws[7 * n:8 * n]
        o, m = out, mag
    else:  # on the stack, so that the values stay in registers
        u, a, U, un, ms = (local_array(NC), local_array(NC), local_array(NC), local_array(NC),
                           local_array(NC))
        Y, X, e = local_array(NC), local_array(NC), local_array(NC)
        o, m = local_array(NS), local_array(NS)
    o[:] = 0.0
    m[:] = 0.0
    z02 = z[0] * z[0]
    npts = 0
    for b in range(b0, b1):
        row, first, stop = blocks[b, 0], blocks[b, 1], blocks[b, 2]
        npts += stop - first
        x0 = centre[row] if points else float((first + stop - 1) // 2)
        for c in range(n):  # the block's counts u + a x
            u[c], a[c] = count(counts, rest, row, c, ci, cl, x0)
        wu, wm, wself = wu1, wm1, wself1
        if alt and u[0] == 0.0 and a[0] == 0.0:
            wu, wm, wself = wu0, wm0, wself0
        for j in range(first, stop):
            w = point_at(j, x0, row, points, row_weight, rest, t_in, off_in, t_last, off_last,
                         node_x, node_w, u, a, U, n)
            for c in range(n):
                un[c] = wu[c] * U[c]
                ms[c] = wm[c] * (C[c] - U[c])
            for c in range(n):
                y = wself
                for k in range(n):
                    if k != c:
                        y += un[k] + ms[k]
                Y[c] = y
                X[c] = y + ms[c]
            D = X[0] + un[0]
            iD = 1.0 / D
            beta, alpha0 = X[0] * iD, un[0] * iD
            e[0] = -z02 * alpha0 * beta
            groups = 0.0
            for c in range(1, n):
                s2 = sa[c] * U[c] * (C[c] - U[c]) + sb[c] * U[c] * U[c]
                r = wu[c] * iD
                e[c] = z[c] * z[c] * s2 * r * r
                groups += e[c]
            loss = 0.5 * (z02 * beta * beta + groups)
            gbar = e[0] + groups
            o[0] += w
            m[0] += w
            o[1] += w * loss
            m[1] += w * loss
            sD = wself * iD
            o[2] += -w * gbar * sD
            m[2] += w * (abs(e[0]) + groups) * sD
            for c in range(n):
                rst, rabs = 0.0, 0.0
                for k in range(n):
                    if k != c:
                        rst += e[k]
                        rabs += abs(e[k])
                al = un[c] * iD
                amu = (un[c] + ms[c]) * iD
                o[3 + c] += w * al
                m[3 + c] += w * al
                if c == 0:
                    v = 2.0 * z[0] * alpha0 * loss
                    o[3 + n] -= w * v
                    m[3 + n] += w * abs(v)
                else:
                    t1, t2 = e[c] * (X[c] * iD), rst * al
                    o[3 + n + c] += w * z[c] * (t1 - t2) * ia[c]
                    m[3 + n + c] += w * z[c] * (abs(t1) + rabs * al) * ia[c]
                t1, t2 = e[c] * (Y[c] * iD), rst * amu
                o[3 + 2 * n + c] += w * (t1 - t2) * isz[c]
                m[3 + 2 * n + c] += w * (abs(t1) + rabs * amu) * isz[c]
    floor = float(npts) * underflow_gain(z) * TINY_MAG
    for s in range(3 + 3 * n):
        out[s] = o[s]
        mag[s] = (m[s] + floor if m[s] > 0 else 0.0) * (8.0 + 2.0 * n)


def _point_sums_for(nc):
    """:func:`_point_sums` compiled for ``nc`` categories (0: any), without reference
    counting (it allocates nothing); a renamed copy per count, which numba's cache keeps
    apart."""
    name = f"point_sums_{nc}"
    func = types.FunctionType(_point_sums.__code__, {**_point_sums.__globals__, "NC": nc,
                                                       "NS": 3 + 3 * nc}, name)
    func.__qualname__ = name
    return numba.njit(cache=CACHE, error_model="numpy", _nrt=False)(func)


# the category counts whose point sums are compiled with their loops unrolled (cpp/kernel.cpp,
# point_sums_n); any other count takes the general function
POINT_SUMS = (2, 3, 4)
point_sums_2, point_sums_3, point_sums_4, point_sums_any = (
    _point_sums_for(nc) for nc in (*POINT_SUMS, 0))


@njit_bare
def point_sums(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in, off_in,
               t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm, wself, wu0,
               wm0, wself0, alt, out, mag, ws):
    """:func:`_point_sums` compiled for the blocks' category count."""
    n = C.shape[0]
    if n == 3:
        point_sums_3(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                     off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm,
                     wself, wu0, wm0, wself0, alt, out, mag, ws)
    elif n == 2:
        point_sums_2(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                     off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm,
                     wself, wu0, wm0, wself0, alt, out, mag, ws)
    elif n == 4:
        point_sums_4(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                     off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm,
                     wself, wu0, wm0, wself0, alt, out, mag, ws)
    else:
        point_sums_any(b0, b1, blocks, counts, rest, ci, cl, centre, points, row_weight, t_in,
                       off_in, t_last, off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu, wm,
                       wself, wu0, wm0, wself0, alt, out, mag, ws)


@njit_bare
def units(named, ib):
    """The areas of a class with named areas as units of its categories
    (:func:`mimfast.model.units`), into ``ib`` (4 n values): ``of`` in ib[0:n], the unit of each
    category, and per unit its kind (0 own, 1 named, 2 tiles) in ib[n:2n] and its first
    category in ib[2n:3n]; returns the number of units (0 for ``named`` empty). (It returns
    no array: a function compiled without reference counts cannot hand one back.)"""
    n = named.shape[0]
    of, kind, lead, first = ib[:n], ib[n:2 * n], ib[2 * n:3 * n], ib[3 * n:4 * n]
    first[:] = -1
    nu = 0
    for c in range(n):
        a = named[c]
        if a >= 0 and first[a] >= 0:
            of[c] = first[a]
            continue
        of[c] = nu
        lead[nu] = c
        kind[nu] = 2 if a < 0 else 0 if a == 0 else 1
        if a >= 0:
            first[a] = nu
        nu += 1
    return nu


@numba.njit(cache=CACHE, error_model="numpy")
def named_sums(first, stop, x0, row, points, row_weight, rest, t_in, off_in, t_last,
               off_last, node_x, node_w, C, z, sa, sb, ia, isz, wu1, wm1, wself1, wu0, wm0,
               wself0, alt, units, out, mag, ws):
    """The sums of one block of a class with named areas point by point (cpp/kernel.cpp,
    named_sums_n): the per-point formulas of ``numpy_backend.kernel`` over the units; a point
    without an unmasked own-area key takes the weights wu0, wm0, wself0 with ``alt``."""
    of, kind, lead = units
    n = C.shape[0]
    nu = kind.shape[0]
    out[:] = 0.0
    mag[:] = 0.0
    # scratch in ws (block_sums allocates nothing): the block's u, a in ws[0:2n], then per
    # category the counts U of a point (point_at) and un, ms, al, mu, y, then per unit (at
    # most n) ua, au, xu, e, rst, rabs
    u, a, U, un, ms = ws[:n], ws[n:2 * n], ws[2 * n:3 * n], ws[3 * n:4 * n], ws[4 * n:5 * n]
    al, mu, y = ws[5 * n:6 * n], ws[6 * n:7 * n], ws[7 * n:8 * n]
    ua, au, xu = ws[8 * n:8 * n + nu], ws[9 * n:9 * n + nu], ws[10 * n:10 * n + nu]
    e, rst, rabs = ws[11 * n:11 * n + nu], ws[12 * n:12 * n + nu], ws[13 * n:13 * n + nu]
    z02 = z[0] * z[0]
    for j in range(first, stop):
        w = point_at(j, x0, row, points, row_weight, rest, t_in, off_in, t_last, off_last,
                     node_x, node_w, u, a, U, n)
        wu, wm, wself = wu1, wm1, wself1
        if alt and U[0] == 0.0:
            wu, wm, wself = wu0, wm0, wself0
        for c in range(n):
            un[c] = wu[c] * U[c]
            ms[c] = wm[c] * (C[c] - U[c])
        ua[:] = 0.0
        for c in range(n):
            ua[of[c]] += un[c]
        msum = wself
        for c in range(n):
            msum += ms[c]
        for i in range(nu):
            v = msum
            for k in range(nu):
                if k != i:
                    v += ua[k]
            xu[i] = v
        D = xu[0] + ua[0]
        iD = 1.0 / D
        for c in range(n):
            v = wself
            for k in range(n):
                if k != c:
                    v += ms[k]
            for k in range(nu):
                if k != of[c]:
                    v += ua[k]
            y[c] = v * iD
            al[c] = un[c] * iD
            mu[c] = ms[c] * iD
        for i in range(nu):
            au[i] = ua[i] * iD
            xu[i] *= iD
            c = lead[i]
            if kind[i] == 0:
                e[i] = -z02 * au[0] * xu[0]
            elif kind[i] == 1:
                e[i] = z[c] * z[c] * au[i] * au[i]
            else:
                s2 = sa[c] * U[c] * (C[c] - U[c]) + sb[c] * U[c] * U[c]
                r = wu[c] * iD
                e[i] = z[c] * z[c] * s2 * r * r
        for i in range(nu):
            rst[i] = 0.0
            rabs[i] = 0.0
            for k in range(nu):
                if k != i:
                    rst[i] += e[k]
                    rabs[i] += abs(e[k])
        loss = 0.5 * (z02 * xu[0] * xu[0] + rst[0])
        gbar = e[0] + rst[0]
        out[0] += w
        mag[0] += w
        out[1] += w * loss
        mag[1] += w * loss
        out[2] += -w * gbar * wself * iD
        mag[2] += w * (abs(e[0]) + rabs[0]) * wself * iD
        for c in range(n):
            out[3 + c] += w * al[c]
            mag[3 + c] += w * al[c]
        for c in range(n):
            i = of[c]
            c0 = lead[i]
            if kind[i] == 0:
                dA = -2.0 * z[0] * au[0] * loss
                mA = abs(dA)
            else:
                inv = ia[c0] if kind[i] == 2 else 1.0
                t1, t2 = e[i] * xu[i], rst[i] * au[i]
                dA = z[c0] * (t1 - t2) * inv
                mA = z[c0] * (abs(t1) + rabs[i] * au[i]) * inv
            # the area's gradient in every member column (tied columns)
            out[3 + n + c] += w * dA
            mag[3 + n + c] += w * mA
            t2 = rst[i] * (al[c] + mu[c])
            if kind[i] == 2:
                t1 = e[i] * y[c]
                m1 = abs(t1)
            else:  # category c's share of its area's attention term
                f = -z02 * xu[0] if kind[i] == 0 else z[c0] * z[c0] * au[i]
                others = 0.0
                for k in range(n):
                    if k != c and of[k] == i:
                        others += al[k]
                t1 = f * (al[c] * y[c] - others * mu[c])
                m1 = abs(f) * (al[c] * y[c] + others * mu[c])
            out[3 + 2 * n + c] += w * (t1 - t2) * isz[c]
            mag[3 + 2 * n + c] += w * (m1 + rabs[i] * (al[c] + mu[c])) * isz[c]
    floor = float(stop - first) * underflow_gain(z) * TINY_MAG
    for s in range(out.shape[0]):
        mag[s] = (mag[s] + floor if mag[s] > 0 else 0.0) * (8.0 + 2.0 * n)


@njit_bare
def _part_norms(out, n):
    """Norms of the loss, attention and gradient parts of a sum vector."""
    return abs(out[1]), _scaled_norm(out, 3, 3 + n, -1), _scaled_norm(out, 3 + n, 3 + 3 * n, 2)


@njit_bare
def _scaled_norm(v, first, stop, extra):
    """The 2-norm of v[extra] (when ``extra`` >= 0) and v[first:stop], in that order, scaled so
    that values near the least double keep a norm."""
    top = abs(v[extra]) if extra >= 0 else 0.0
    for i in range(first, stop):
        top = max(top, abs(v[i]))
    if top == 0:
        return 0.0
    s = 0.0
    if extra >= 0:
        s += (v[extra] / top) ** 2
    for i in range(first, stop):
        s += (v[i] / top) ** 2
    return top * np.sqrt(s)


@njit_bare
def _part_mags(mag, n):
    """The magnitudes of the loss, attention and gradient parts."""
    m1 = 0.0
    for c in range(n):
        m1 += mag[3 + c]
    m2 = mag[2]
    for s in range(3 + n, 3 + 3 * n):
        m2 += mag[s]
    return mag[1], m1, m2


@njit_bare
def _share(mag, norm, n):
    """A block's rounding estimate relative to each part's norm, the largest."""
    m = _part_mags(mag, n)
    worst = 0.0
    for p in range(3):
        if m[p] > 0:
            r = EPS * m[p] / norm[p] if norm[p] > 0 else np.inf
            worst = max(worst, r if np.isfinite(r) else np.inf)
    return worst


def scratch(n_blocks, n):
    """The sizes of the float and the integer scratch of :func:`_all_sums` for an evaluator of
    ``n_blocks`` blocks and ``n`` categories."""
    ns = 3 + 3 * n
    return n_blocks * (2 * ns + WORK_PER_CAT * n + 2) + ns, 2 * n_blocks + 1 + 4 * n


# cpp/kernel.cpp: consecutive blocks summed point by point are summed together, up to this many
# points (a quadrature's rows of a few nodes would otherwise cost as much set-up as points)
POINT_CHUNK = 256


def _all_sums(counts, rest, row_weight, t_in, off_in, t_last, off_last, ci, cl, blocks,
              C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0, alt, centre, node_x,
              node_w, named, fb, ib, res):
    """The sums of every block, by moments (point by point if short, consecutive short blocks
    together up to POINT_CHUNK points), and again point by point for the blocks that are
    ill-conditioned and whose rounding estimate exceeds
    BLOCK_SHARE of a part's norm (cpp/kernel.cpp, class_sums), into ``res[:3 + 3 n]``; then
    the rounding estimates of their loss, attention and gradient into the last three entries
    of ``res`` (:func:`mimfast.model.rounding_parts`, each part's norm scaled as there), from
    each sum's rounding magnitude summed over the blocks. ``named``: the class's named areas
    (``ClassInputs.named``), empty for a class without. ``fb``, ``ib``: float and integer
    scratch (:func:`scratch`): the function allocates nothing."""
    n_blocks = blocks.shape[0]
    n = C.shape[0]
    ns = 3 + 3 * n
    wk = WORK_PER_CAT * n + 2
    part = fb[:n_blocks * ns].reshape((n_blocks, ns))
    mag = fb[n_blocks * ns:2 * n_blocks * ns].reshape((n_blocks, ns))
    ws = fb[2 * n_blocks * ns:n_blocks * (2 * ns + wk)].reshape((n_blocks, wk))
    total = fb[n_blocks * (2 * ns + wk):n_blocks * (2 * ns + wk) + ns]
    ill, task = ib[:n_blocks], ib[n_blocks:2 * n_blocks + 1]
    iu, nn = ib[2 * n_blocks + 1:], named.shape[0]
    nu = units(named, iu)
    un = (iu[:nn], iu[nn:nn + nu], iu[2 * nn:2 * nn + nu])  # of, kind, lead (named_sums)
    # tasks: a block, or consecutive blocks summed point by point (fixed by the evaluator
    # alone, so the result does not depend on the thread count)
    n_tasks, chunk, chained = 0, 0, False
    for b in range(n_blocks):
        size = blocks[b, 2] - blocks[b, 1]
        pts = nu == 0 and size <= SHORT_BLOCK
        if not (pts and chained and chunk + size <= POINT_CHUNK):
            task[n_tasks] = b
            n_tasks += 1
            chunk = 0
        chunk += size
        chained = pts
    task[n_tasks] = n_blocks
    part[:n_tasks] = 0.0  # an ill-conditioned block leaves its sums unset
    for t in numba.prange(n_tasks):
        ill[t] = block_sums(task[t], task[t + 1], counts, rest, row_weight, t_in, off_in,
                            t_last, off_last, ci, cl, blocks, C, z, sa, sb, ia, isz, wu, wm,
                            wself, wu0, wm0, wself0, alt, centre, node_x, node_w, part[t],
                            mag[t], False, ws[t], un)
    out = res[:ns]
    out[:] = 0.0
    for t in range(n_tasks):
        for s in range(ns):
            out[s] += part[t, s]
    norm = _part_norms(out, n)
    redo = False
    for t in range(n_tasks):  # ill becomes: to be summed again
        if ill[t] and not _share(mag[t], norm, n) <= BLOCK_SHARE:
            redo = True
        else:
            ill[t] = 0
    if redo:
        for t in numba.prange(n_tasks):
            if ill[t]:
                block_sums(task[t], task[t + 1], counts, rest, row_weight, t_in, off_in, t_last,
                           off_last, ci, cl, blocks, C, z, sa, sb, ia, isz, wu, wm, wself, wu0,
                           wm0, wself0, alt, centre, node_x, node_w, part[t], mag[t], True,
                           ws[t], un)
        out[:] = 0.0
        for t in range(n_tasks):
            for s in range(ns):
                out[s] += part[t, s]
        norm = _part_norms(out, n)
    total[:] = 0.0
    for t in range(n_tasks):
        for s in range(ns):
            total[s] += mag[t, s]
    m = _part_mags(total, n)
    for p in range(3):
        res[ns + p] = rounding_estimate(m[p], norm[p])


rounding_estimate = njit(_rounding_estimate)


# the same function compiled without threads (prange runs as range), for the classes too small
# to earn a thread; a renamed copy, so that numba's cache keeps the two apart
def _renamed(func, name):
    copy = types.FunctionType(func.__code__, func.__globals__, name)
    copy.__qualname__ = name  # the name numba's cache files go by
    return copy


all_sums = numba.njit(cache=CACHE, parallel=True)(_renamed(_all_sums, "all_sums"))
all_sums_serial = njit_bare(_renamed(_all_sums, "all_sums_serial"))

# cpp/kernel.cpp: a thread only per this many points (on a busy machine a parallel region can
# wait a whole scheduler slice for a descheduled thread)
MIN_POINTS_PER_THREAD = 50_000

# The arrays of an evaluator (a count grid or a point set), each packed with those of the other
# evaluators of a run into one flat array (see numba_backend.pack): row e of the offsets holds
# where evaluator e's part of each starts. Scalars per evaluator: off_inner, off_last, inner,
# last, points, n_cat.
FIELDS = ("counts", "rest", "row_weight", "t_inner", "t_last", "blocks", "fsizes", "s_a", "s_b",
          "inv_areas", "inv_sizes", "centre", "node_x", "node_w")


@njit
def threaded(points, threads):
    """Whether an evaluator of ``points`` points is summed on threads: points for at least two
    (``threads`` > 1 is numba's thread count, which the caller sets)."""
    return threads > 1 and points >= 2 * MIN_POINTS_PER_THREAD


@njit_bare
def class_sums(fa, off, scal, e, z, wu, wm, wself, wu0, wm0, wself0, alt, named, threads, fb,
               ib, res):
    """The sums of evaluator e of packed arrays ``fa`` and their rounding estimates into
    ``res`` (:func:`_all_sums`, scratch ``fb``, ``ib``): threaded (on numba's thread count,
    which the caller sets) when ``threads`` > 1 and the evaluator has points for at least two
    threads (MIN_POINTS_PER_THREAD each), else in the calling thread. The result does not
    depend on it."""
    n = scal[e, 5]
    counts = fa[0][off[e, 0]:off[e + 1, 0]].reshape((-1, n))
    rest = fa[1][off[e, 1]:off[e + 1, 1]]
    rw = fa[2][off[e, 2]:off[e + 1, 2]]
    t_in = fa[3][off[e, 3]:off[e + 1, 3]]
    t_last = fa[4][off[e, 4]:off[e + 1, 4]]
    blocks = fa[5][off[e, 5]:off[e + 1, 5]].reshape((-1, 3))
    C = fa[6][off[e, 6]:off[e + 1, 6]]
    sa = fa[7][off[e, 7]:off[e + 1, 7]]
    sb = fa[8][off[e, 8]:off[e + 1, 8]]
    ia = fa[9][off[e, 9]:off[e + 1, 9]]
    isz = fa[10][off[e, 10]:off[e + 1, 10]]
    centre = fa[11][off[e, 11]:off[e + 1, 11]]
    node_x = fa[12][off[e, 12]:off[e + 1, 12]]
    node_w = fa[13][off[e, 13]:off[e + 1, 13]]
    if threaded(scal[e, 4], threads):
        all_sums(counts, rest, rw, t_in, scal[e, 0], t_last, scal[e, 1], scal[e, 2],
                 scal[e, 3], blocks, C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0, wself0,
                 alt, centre, node_x, node_w, named, fb, ib, res)
    else:
        all_sums_serial(counts, rest, rw, t_in, scal[e, 0], t_last, scal[e, 1], scal[e, 2],
                        scal[e, 3], blocks, C, z, sa, sb, ia, isz, wu, wm, wself, wu0, wm0,
                        wself0, alt, centre, node_x, node_w, named, fb, ib, res)


def threads_for(scal, threads):
    """numba's thread count for evaluators with scalars ``scal``: ``threads``, or fewer where
    no evaluator has MIN_POINTS_PER_THREAD points per thread (cpp/kernel.cpp's rule)."""
    most = int(scal[:, 4].max()) // MIN_POINTS_PER_THREAD if len(scal) else 0
    return max(1, min(threads, most))


key_weights = njit(_key_weights)


@njit
def _difference_part(a, b, first, stop, extra):
    """|a - b| / |a| over sums first..stop-1 (and ``extra`` when >= 0), scaled by the
    largest |a| (mimfast.quadrature.sums_error, cpp/fused.cpp difference)."""
    top = abs(a[extra]) if extra >= 0 else 0.0
    for i in range(first, stop):
        top = max(top, abs(a[i]))
    if top == 0:
        top = 1.0
    d = r = 0.0
    if extra >= 0:
        e, f = (a[extra] - b[extra]) / top, a[extra] / top
        d += e * e
        r += f * f
    for i in range(first, stop):
        e, f = (a[i] - b[i]) / top, a[i] / top
        d += e * e
        r += f * f
    if d > 0:
        return math.sqrt(d) / math.sqrt(r) if r > 0 else np.inf
    return 0.0


@njit
def error_estimate(n, s, check, has_check):
    """A class's error estimate: the kernel's rounding of the sums ``s`` and, with a check
    evaluator, their difference from its sums ``check`` (gradient, attention, loss)."""
    ns = 3 + 3 * n
    err = max(s[ns], max(s[ns + 1], s[ns + 2]))
    if has_check:
        diff = max(_difference_part(s, check, 3 + n, 3 + 3 * n, 2),
                   max(_difference_part(s, check, 3, 3 + n, -1),
                       _difference_part(s, check, 1, 2, -1)))
        err = max(diff, err)
    return err


@njit_bare
def evaluate_classes(fa, off, scal, ev, chk, n_cat, c_off, z, live, named, has_named, a_off,
                     p_off, coef, coef_loss, state, grad, att, ploss, err, max_err, work,
                     fb, ib, sums, threads):
    """One gradient of the whole state (mimfast/model.py evaluate, cpp/fused.cpp evaluate):
    per class its key weights, its evaluator's sums (and its check's), the gradient rows;
    returns the loss. ``named`` (per category, like ``z``) holds the named areas of the
    classes with ``has_named``. ``work``: scratch rows wu, wm, wu0, wm0 and zeros; ``fb``,
    ``ib``: the kernel's scratch (:func:`scratch`) for the largest evaluator; ``sums``: two
    rows for the sums of a class and of its check."""
    grad[:] = 0.0
    loss = 0.0
    wu, wm, wu0, wm0, zeros = work[0], work[1], work[2], work[3], work[4]
    for i in range(n_cat.shape[0]):
        n = n_cat[i]
        A = state[a_off[i]:a_off[i] + n]
        if p_off[i] >= 0:
            b_self = state[p_off[i]]
            B = state[p_off[i] + 1:p_off[i] + 1 + n]
        else:
            b_self = 0.0
            B = zeros[:n]
        zi = z[c_off[i]:c_off[i] + n]
        nm = named[c_off[i]:c_off[i] + n] if has_named[i] else named[:0]
        wself, lead, wself0 = key_weights(zi, A, B, b_self, live[c_off[i]:c_off[i] + n], wu,
                                          wm, wu0, wm0)
        alt = lead > OWN_LEAD
        u0, m0 = (wu0, wm0) if alt else (wu, wm)
        s = sums[0, :3 * n + 6]
        class_sums(fa, off, scal, ev[i], zi, wu, wm, wself, u0, m0, wself0, alt, nm, threads,
                   fb, ib, s)
        check = s
        if chk[i] >= 0:
            check = sums[1, :3 * n + 6]
            class_sums(fa, off, scal, chk[i], zi, wu, wm, wself, u0, m0, wself0, alt, nm,
                       threads, fb, ib, check)
        err[i] = error_estimate(n, s, check, chk[i] >= 0)
        max_err[i] = max(max_err[i], err[i])
        for k in range(n):
            grad[a_off[i] + k] = coef[i] * s[3 + n + k]
            att[c_off[i] + k] = s[3 + k]
        ploss[i] = s[1]
        loss += coef_loss[i] * s[1]
        if p_off[i] >= 0:
            grad[p_off[i]] += coef[i] * s[2]
            for k in range(n):
                grad[p_off[i] + 1 + k] += coef[i] * s[3 + 2 * n + k]
    return loss


# run_steps' statuses: those of cpp/fused.hpp, and BUDGET when its steps are used up
DONE, CHUNK, NONFINITE, TOLERANCE, BUDGET = 0, 1, 2, 3, 5


@njit
def run_steps(fa, off, scal, ev, chk, n_cat, c_off, z, live, named, has_named, a_off, p_off,
              coef, coef_loss, tol, accept, state, nxt, grad, att, ploss, err, max_err, last,
              work, fb, ib, sums, ctr, rec, rec_steps, steps, record_every, eta, threads,
              stop_every, budget):
    """GD steps of a run (cpp/fused.cpp, FusedLoop::run), at most ``budget``.

    ``ctr``: the step t, the last recorded step and the records held; ``rec`` rows loss,
    state, grad, attention, patch loss and error of each record (room for ``budget`` more),
    ``last[0]`` the loss of the last evaluation."""
    for _ in range(budget):
        t = ctr[0]
        last[0] = evaluate_classes(fa, off, scal, ev, chk, n_cat, c_off, z, live, named,
                                   has_named, a_off, p_off, coef, coef_loss, state, grad, att,
                                   ploss, err, max_err, work, fb, ib, sums, threads)
        for i in range(n_cat.shape[0]):
            if tol[i] > 0 and accept[i] != t and not err[i] <= tol[i]:
                return TOLERANCE
        if (t % record_every == 0 or t == steps) and t > ctr[1]:
            j = ctr[2]
            rec_steps[j] = t
            parts = ((last, 0), (state, 1), (grad, 1 + state.shape[0]),
                     (att, 1 + 2 * state.shape[0]), (ploss, 1 + 2 * state.shape[0] + att.shape[0]),
                     (err, 1 + 2 * state.shape[0] + att.shape[0] + ploss.shape[0]))
            for v, at in parts:
                rec[j, at:at + v.shape[0]] = v
            ctr[2] = j + 1
            ctr[1] = t
        if t >= steps:
            return DONE
        finite = True
        for i in range(state.shape[0]):
            nxt[i] = state[i] - eta * grad[i]
            finite = finite and np.isfinite(nxt[i])
        if not finite:
            return NONFINITE
        stop = stop_every > 0 and t % stop_every == 0
        state[:] = nxt
        ctr[0] = t + 1
        if t + 1 == steps or stop:
            return CHUNK
    return BUDGET
