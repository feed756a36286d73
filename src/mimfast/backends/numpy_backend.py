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

(1 / areas_c and 1 / C_c are 0 for an empty category.) These are docs/model.md §3's formulas
rearranged so that nothing cancels when one category takes nearly all attention. Each quantity
is weighted by the point's probability and summed.
"""

from __future__ import annotations

import numpy as np

from ..model import TINY_MAG, rounding_parts, sum_layout, underflow_gain

NAME = "numpy"


def available():
    """The numpy backend is always available; it runs single-threaded."""
    return True, {}


def kernel(grid, inputs, threads=None):
    """Expectations of docs/model.md §3 over one class grid (see the module docstring)."""
    lay = sum_layout(grid.n_cat)
    out = np.zeros(lay.size)
    mag = np.zeros(lay.size)  # sum of |terms| of each line: its rounding is EPS (8 + 2n) mag
    # per point, a product's underflow as a magnitude, times the most a line multiplies it by
    # (products below 2^-1022 are rounded to a multiple of 2^-1074)
    floor = underflow_gain(inputs.z) * TINY_MAG
    C = grid.fsizes[:, None]
    z = inputs.z[:, None]
    for counts, prob in grid.rows():
        U = counts.T.astype(np.float64)
        wu, wm, wself = inputs.wu[:, None], inputs.wm[:, None], inputs.wself
        if inputs.wu0 is not None:  # points without an unmasked own-area key: own weights
            none_own = U[0] == 0
            wu = np.where(none_own, inputs.wu0[:, None], wu)
            wm = np.where(none_own, inputs.wm0[:, None], wm)
            wself = np.where(none_own, inputs.wself0, wself)
        unmasked, masked = U * wu, (C - U) * wm
        n = len(unmasked)
        # D without the unmasked keys of c (not_a * D) and without all keys of c (not_am * D),
        # summed from the other terms, all positive
        not_am = np.array([wself + sum(unmasked[k] + masked[k] for k in range(n) if k != c)
                           for c in range(n)])
        not_a = not_am + masked
        D = not_a[0] + unmasked[0]
        alpha, mu = unmasked / D, masked / D
        not_a, not_am = not_a / D, not_am / D
        # latents and counts multiply the small weights first: an underflowed product is
        # multiplied afterwards by at most the floor's gain
        r = wu / D
        e = (z**2 * (grid.s_a[:, None] * U * (C - U) + grid.s_b[:, None] * U**2)) * r * r
        e[0] = -z[0] ** 2 * alpha[0] * not_a[0]
        rest = np.array([sum(e[k] for k in range(n) if k != c) for c in range(n)])
        rabs = np.array([sum(abs(e[k]) for k in range(n) if k != c) for c in range(n)])
        loss = 0.5 * ((z[0] * not_a[0]) ** 2 + rest[0])
        gbar = e[0] + rest[0]
        dA = z * (e * not_a - rest * alpha) * grid.inv_areas[:, None]
        dA[0] = -2 * z[0] * alpha[0] * loss
        dB = (e * not_am - rest * (alpha + mu)) * grid.inv_sizes[:, None]
        out[lay.mass] += prob.sum()
        out[lay.loss] += prob @ loss
        out[lay.dB_self] += prob @ (-gbar * (wself / D))
        out[lay.alpha] += alpha @ prob
        out[lay.dA] += dA @ prob
        out[lay.dB] += dB @ prob
        m = np.zeros(lay.size)  # this row's magnitudes
        m[lay.loss] = prob @ loss
        m[lay.dB_self] = prob @ ((abs(e[0]) + rest[0]) * (wself / D))
        m[lay.alpha] = alpha @ prob
        mA = z * (abs(e * not_a) + rabs * alpha) * grid.inv_areas[:, None]
        mA[0] = 2 * z[0] * alpha[0] * loss
        m[lay.dA] = mA @ prob
        m[lay.dB] = ((abs(e * not_am) + rabs * (alpha + mu)) * grid.inv_sizes[:, None]) @ prob
        # a line whose every term is 0 has underflowed entirely (cpp/kernel.cpp, point_sums)
        mag += m + np.where(m > 0, floor * len(prob), 0.0)
    out[lay.bound] = rounding_parts(out, (8 + 2 * grid.n_cat) * mag, grid.n_cat)
    return out
