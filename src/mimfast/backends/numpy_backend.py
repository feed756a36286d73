"""The readable kernel: docs/model.md §3 at every grid point, vectorised over one grid row at a time.

This is the contract every backend kernel implements: from a
:class:`~mimfast.grid.ClassGrid` (counts, probabilities and per-category constants) and a
:class:`~mimfast.model.ClassInputs` (latents and key weights at the current state) it returns
the expectations laid out by :func:`mimfast.model.sum_layout`::

    [mass, loss, dB_self, alpha[0..n), dA[0..n), dB[0..n)]

At a grid point with unmasked counts U (category 0 is the query's own area, 1.. the groups):

    D       = w_self + sum_c (U_c wu_c + (C_c - U_c) wm_c)
    alpha_c = U_c wu_c / D                   attention on the unmasked keys of c
    mu_c    = (C_c - U_c) wm_c / D           attention on the masked keys of c
    1 - alpha_c, 1 - alpha_c - mu_c          (formed from the other, positive terms of D)
    sigma_c = E[S2_c | U_c] (wu_c / D)^2,    E[S2 | r] = s_a r (C - r) + s_b r^2   (c >= 1)
    e_0     = -z_0^2 alpha_0 (1 - alpha_0),  e_c = z_c^2 sigma_c
    rest_c  = sum_{k != c} e_k               (gbar - e_c, without e_c)
    loss    = 1/2 (z_0^2 (1 - alpha_0)^2 + rest_0)
    gbar    = e_0 + rest_0
    dA_0    = -2 z_0 alpha_0 loss
    dA_c    = z_c (e_c (1 - alpha_c) - rest_c alpha_c) / areas_c
    dB_self = -gbar w_self / D
    dB_c    = (e_c (1 - alpha_c - mu_c) - rest_c (alpha_c + mu_c)) / C_c

(1 / areas_c and 1 / C_c are 0 for an empty category.) When a named area spans several
categories (``inputs.named``, docs/model.md §3 "Areas of several categories"), the own-area
lines and those of the area hold for the area as a whole (its attention the sum of its
categories'), :func:`units` groups the categories, and dB_c takes the category's share. These are docs/model.md §3's formulas
rearranged so that nothing cancels when one category takes nearly all attention. Each quantity
is weighted by the point's probability and summed.
"""

from __future__ import annotations

import numpy as np

from ..model import TINY_MAG, rounding_parts, sum_layout, underflow_gain, units

NAME = "numpy"


def available():
    """The numpy backend is always available; it runs single-threaded."""
    return True, {}


def kernel(grid, inputs, threads=None):
    """Expectations of docs/model.md §3 over one class grid (see the module docstring)."""
    lay = sum_layout(grid.n_cat)
    n = grid.n_cat
    out = np.zeros(lay.size)
    mag = np.zeros(lay.size)  # sum of |terms| of each line: its rounding is EPS (8 + 2n) mag
    # per point, a product's underflow as a magnitude, times the most a line multiplies it by
    # (products below 2^-1022 are rounded to a multiple of 2^-1074)
    floor = underflow_gain(inputs.z) * TINY_MAG
    C = grid.fsizes[:, None]
    z = inputs.z
    parts = units(n, inputs.named)
    unit_of = np.zeros(n, dtype=np.int64)
    for i, (members, _) in enumerate(parts):
        unit_of[members] = i
    for counts, prob in grid.rows():
        U = counts.T.astype(np.float64)
        wu, wm, wself = inputs.wu[:, None], inputs.wm[:, None], inputs.wself
        if inputs.wu0 is not None:  # points without an unmasked own-area key: own weights
            none_own = U[0] == 0
            wu = np.where(none_own, inputs.wu0[:, None], wu)
            wm = np.where(none_own, inputs.wm0[:, None], wm)
            wself = np.where(none_own, inputs.wself0, wself)
        unmasked, masked = U * wu, (C - U) * wm
        # D without the unmasked keys of a unit (X), and without them and the masked keys of
        # one category of it (Y), summed from the other terms, all positive
        X = [wself + sum(masked[k] for k in range(n))
             + sum(unmasked[k] for k in range(n) if k not in members) for members, _ in parts]
        Y = [wself + sum(masked[k] for k in range(n) if k != c)
             + sum(unmasked[k] for k in range(n) if k not in parts[unit_of[c]][0])
             for c in range(n)]
        D = X[0] + sum(unmasked[k] for k in parts[0][0])
        alpha, mu = unmasked / D, masked / D
        x = [v / D for v in X]
        y = np.array([v / D for v in Y])
        a_unit = [sum(alpha[k] for k in members) for members, _ in parts]
        # latents and counts multiply the small weights first: an underflowed product is
        # multiplied afterwards by at most the floor's gain
        e = []
        for i, (members, kind) in enumerate(parts):
            c = members[0]
            if kind == "own":
                e.append(-z[0] ** 2 * a_unit[0] * x[0])
            elif kind == "named":
                e.append((z[c] * a_unit[i]) ** 2)
            else:
                s2 = grid.s_a[c] * U[c] * (C[c] - U[c]) + grid.s_b[c] * U[c] ** 2
                r = wu[c] / D
                e.append((z[c] ** 2 * s2) * r * r)
        rest = [sum(e[k] for k in range(len(parts)) if k != i) for i in range(len(parts))]
        rabs = [sum(abs(e[k]) for k in range(len(parts)) if k != i) for i in range(len(parts))]
        loss = 0.5 * ((z[0] * x[0]) ** 2 + rest[0])
        gbar = e[0] + rest[0]
        dA, mA = np.zeros_like(U), np.zeros_like(U)
        dB, mB = np.zeros_like(U), np.zeros_like(U)
        for i, (members, kind) in enumerate(parts):
            c = members[0]
            if kind == "own":
                dA[members] = -2 * z[0] * a_unit[0] * loss
                mA[members] = 2 * z[0] * a_unit[0] * loss
            else:
                inv = grid.inv_areas[c] if kind == "tiles" else 1.0
                dA[members] = z[c] * (e[i] * x[i] - rest[i] * a_unit[i]) * inv
                mA[members] = z[c] * (abs(e[i] * x[i]) + rabs[i] * a_unit[i]) * inv
            if kind == "tiles":
                t1, t2 = e[i] * y[c], rest[i] * (alpha[c] + mu[c])
                dB[c], mB[c] = t1 - t2, abs(t1) + abs(t2)
                continue
            # an area of several categories: the share of category k of its attention term
            f = -z[0] ** 2 * x[0] if kind == "own" else z[c] ** 2 * a_unit[i]
            for k in members:
                others = sum(alpha[j] for j in members if j != k)
                t1 = f * (alpha[k] * y[k] - others * mu[k])
                t2 = rest[i] * (alpha[k] + mu[k])
                dB[k] = t1 - t2
                mB[k] = abs(f) * (alpha[k] * y[k] + others * mu[k]) + abs(t2)
        inv_sizes = grid.inv_sizes[:, None]
        out[lay.mass] += prob.sum()
        out[lay.loss] += prob @ loss
        out[lay.dB_self] += prob @ (-gbar * (wself / D))
        out[lay.alpha] += alpha @ prob
        out[lay.dA] += dA @ prob
        out[lay.dB] += (dB * inv_sizes) @ prob
        m = np.zeros(lay.size)  # this row's magnitudes
        m[lay.loss] = prob @ loss
        m[lay.dB_self] = prob @ ((abs(e[0]) + rabs[0]) * (wself / D))
        m[lay.alpha] = alpha @ prob
        m[lay.dA] = mA @ prob
        m[lay.dB] = (mB * inv_sizes) @ prob
        # a line whose every term is 0 has underflowed entirely (cpp/kernel.cpp, point_sums)
        mag += m + np.where(m > 0, floor * len(prob), 0.0)
    out[lay.bound] = rounding_parts(out, (8 + 2 * grid.n_cat) * mag, grid.n_cat)
    return out
