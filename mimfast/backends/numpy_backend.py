"""The readable kernel: SPEC §3 at every grid point, vectorised over one grid row at a time.

This is the contract every backend kernel implements. Inputs are a :class:`~mimfast.grid.ClassGrid`
and a :class:`~mimfast.model.ClassInputs` (per-category constants and the current key weights);
the output is the vector of expectations laid out by :func:`mimfast.model.sum_layout`::

    [mass, loss, dB_self, alpha[0..n), dA[0..n), dB[0..n)]

At a grid point with unmasked counts U (n = number of key categories):

    D       = w_self + sum_c (U_c wu_c + (C_c - U_c) wm_c)
    alpha_c = U_c wu_c / D                       attention on unmasked keys of c
    mu_c    = (C_c - U_c) wm_c / D               attention on masked keys of c
    sigma_c = E[S2_c | U_c] (wu_c / D)^2,        E[S2 | r] = s_a r (C - r) + s_b r^2
    e_c     = z_c^2 (sigma_c - delta_c alpha_c)  (delta_c = 1 for the own area only)
    loss    = 1/2 sum_c z_c^2 (sigma_c - 2 delta_c alpha_c + delta_c)
    gbar    = sum_c e_c
    dA_c    = z_c (e_c - gbar alpha_c) / areas_c
    dB_self = -gbar w_self / D
    dB_c    = (e_c - gbar (alpha_c + mu_c)) / C_c

(1 / areas_c and 1 / C_c are 0 for an empty category.) Each quantity is weighted by the
point's probability and summed.
"""

from __future__ import annotations

import numpy as np

from ..model import sum_layout

NAME = "numpy"


def available():
    """The numpy backend is always available; it runs single-threaded."""
    return True, {}


def kernel(grid, inputs, threads=None):
    """Expectations of SPEC §3 over one class grid (see the module docstring)."""
    n = grid.n_cat
    lay = sum_layout(n)
    out = np.zeros(lay.size)
    C = inputs.sizes[:, None]
    wu = inputs.wu[:, None]
    wm = inputs.wm[:, None]
    z2 = (inputs.z**2)[:, None]
    delta = inputs.delta[:, None]
    for counts, prob in grid.rows():
        U = counts.T.astype(np.float64)
        D = inputs.wself + np.sum(U * wu + (C - U) * wm, axis=0)
        alpha = U * wu / D
        mu = (C - U) * wm / D
        sigma = (inputs.s_a[:, None] * U * (C - U) + inputs.s_b[:, None] * U**2) * (wu / D) ** 2
        e = z2 * (sigma - delta * alpha)
        loss = 0.5 * np.sum(z2 * (sigma - 2 * delta * alpha + delta), axis=0)
        gbar = np.sum(e, axis=0)
        dA = inputs.z[:, None] * (e - gbar * alpha) * inputs.inv_areas[:, None]
        dB_self = -gbar * inputs.wself / D
        dB = (e - gbar * (alpha + mu)) * inputs.inv_sizes[:, None]
        out[lay.mass] += prob.sum()
        out[lay.loss] += prob @ loss
        out[lay.dB_self] += prob @ dB_self
        out[lay.alpha] += alpha @ prob
        out[lay.dA] += dA @ prob
        out[lay.dB] += dB @ prob
    return out
