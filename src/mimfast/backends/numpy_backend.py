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
    beta    = 1 - alpha_0                    (formed as (D - U_0 wu_0) / D from positive terms)
    rho     = 1 - alpha_0 - mu_0             (likewise)
    sigma_c = E[S2_c | U_c] (wu_c / D)^2,    E[S2 | r] = s_a r (C - r) + s_b r^2   (c >= 1)
    e_0     = -z_0^2 alpha_0 beta,  e_c = z_c^2 sigma_c
    loss    = 1/2 (z_0^2 beta^2 + sum_{c>=1} z_c^2 sigma_c)
    gbar    = sum_c e_c
    dA_0    = -2 z_0 alpha_0 loss,  dA_c = z_c (e_c - gbar alpha_c) / areas_c
    dB_self = -gbar w_self / D
    dB_c    = (e_c - gbar (alpha_c + mu_c)) / C_c
    dB_0    = (e_0 rho - (gbar - e_0)(alpha_0 + mu_0)) / C_0

(1 / areas_c and 1 / C_c are 0 for an empty category.) These are docs/model.md §3's formulas
with alpha_own - 1 written as -beta and dB_own rearranged, so that nothing cancels when
attention nears 1. Each quantity
is weighted by the point's probability and summed.
"""

from __future__ import annotations

import numpy as np

from ..model import sum_layout

NAME = "numpy"


def available():
    """The numpy backend is always available; it runs single-threaded."""
    return True, {}


def kernel(grid, inputs, threads=None):
    """Expectations of docs/model.md §3 over one class grid (see the module docstring)."""
    lay = sum_layout(grid.n_cat)
    out = np.zeros(lay.size)
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
        others = wself + np.sum(unmasked[1:] + masked[1:], axis=0)
        D = others + masked[0] + unmasked[0]
        alpha, mu = unmasked / D, masked / D
        beta, rho = (others + masked[0]) / D, others / D
        sigma = (grid.s_a[:, None] * U * (C - U) + grid.s_b[:, None] * U**2) * (wu / D) ** 2
        e = z**2 * sigma
        e[0] = -z[0] ** 2 * alpha[0] * beta
        groups = np.sum(e[1:], axis=0)
        loss = 0.5 * (z[0] ** 2 * beta**2 + groups)
        gbar = e[0] + groups
        dA = z * (e - gbar * alpha) * grid.inv_areas[:, None]
        dA[0] = -2 * z[0] * alpha[0] * loss
        dB = (e - gbar * (alpha + mu)) * grid.inv_sizes[:, None]
        dB[0] = (e[0] * rho - groups * (alpha[0] + mu[0])) * grid.inv_sizes[0]
        out[lay.mass] += prob.sum()
        out[lay.loss] += prob @ loss
        out[lay.dB_self] += prob @ (-gbar * wself / D)
        out[lay.alpha] += alpha @ prob
        out[lay.dA] += dA @ prob
        out[lay.dB] += dB @ prob
    return out
