"""An extended-precision reference for the sums of docs/model.md §3, independent of the kernels.

Every count point of a class with non-negligible probability is enumerated (the whole support
at small P; at larger P a window of ``k_sd`` standard deviations around the mean of every
chain dimension, whose left-out tail is far below 1e-12, plus every own-area count down to
U_own = 0 while the own area is small enough for that point to matter). Probabilities are the
exact hypergeometric ones, by ratio recurrences from each conditional's mode, normalised over
what is enumerated; the §3 lines are evaluated point by point:

- :func:`ld_sums` in ``numpy.longdouble`` (64-bit significand, exponent range to 1e±4932, so
  no weight underflows at any logit spread met here), vectorised over the points. Where
  attention saturates, 1 - alpha_c and 1 - alpha_c - mu_c are formed from the positive
  terms of D (algebraic identities of §3, point by point), since 1 - alpha_own can be far
  below the precision of any fixed format.
- :func:`mp_sums` in mpmath at any number of digits, with the §3 lines exactly as written
  (no rearrangement): the check of :func:`ld_sums` on small classes.

Both return the sums in the layout of :func:`mimfast.model.sum_layout`:
``[mass, loss, dB_self, alpha[n], dA[n], dB[n]]``. :func:`reference_gradient` assembles
them into a whole gradient like :func:`mimfast.gradient`.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

from mimfast.grid import class_categories

LD = np.longdouble
#: Own areas up to this size are enumerated down to U_own = 0.
OWN_FULL = 4000


def _window(K, pool, left, k_sd, full):
    lo, hi = max(0, left - (pool - K)), min(K, left)
    if full:
        return lo, hi
    mean = K * left / pool
    sd = math.sqrt(max(mean * (1 - K / pool) * (pool - left) / max(pool - 1, 1), 0.0))
    return max(lo, int(mean - k_sd * sd) - 2), min(hi, int(mean + k_sd * sd) + 3)


def _pmf(K, pool, left, lo, hi):
    """Pr(X = x), x = lo..hi, for X ~ HG(pool, K, left), normalised over lo..hi (longdouble)."""
    x = np.arange(lo, hi, dtype=LD)  # ratio p(x + 1) / p(x)
    ratio = (LD(K) - x) * (LD(left) - x) / ((x + 1) * (LD(pool - K - left) + x + 1))
    logw = np.concatenate([[LD(0)], np.cumsum(np.log(ratio))])
    w = np.exp(logw - logw.max())
    return w / w.sum()


def points(sizes, u, k_sd=12.0):
    """Every enumerated count point of a class: counts (n_points, n_cat) and probabilities.

    The chain runs over the live categories, largest last (it takes the rest).
    """
    sizes = [int(s) for s in sizes]
    n = len(sizes)
    live = sorted((c for c in range(n) if sizes[c] > 0), key=lambda c: (sizes[c], c))
    last, dims = live[-1], live[:-1]
    counts = np.zeros((1, n), dtype=np.int64)
    prob = np.ones(1, dtype=LD)
    left = np.array([u], dtype=np.int64)
    pool = sum(sizes)
    for d in dims:
        K = sizes[d]
        new_c, new_p, new_l = [], [], []
        for i in range(len(prob)):
            lo, hi = _window(K, pool, int(left[i]), k_sd, d == 0 and K <= OWN_FULL)
            w = _pmf(K, pool, int(left[i]), lo, hi)
            xs = np.arange(lo, hi + 1)
            c = np.repeat(counts[i:i + 1], len(xs), axis=0)
            c[:, d] = xs
            new_c.append(c)
            new_p.append(prob[i] * w)
            new_l.append(left[i] - xs)
        counts, prob, left = np.concatenate(new_c), np.concatenate(new_p), np.concatenate(new_l)
        pool -= K
        keep = prob > 0
        counts, prob, left = counts[keep], prob[keep], left[keep]
    counts[:, last] = left
    return counts, prob


def ld_sums(sizes, areas, z, A, B, b_self, u, k_sd=12.0, at=None):
    """The §3 sums of one class in longdouble, point by point (module docstring); ``at``
    optionally gives the points and their probabilities instead of :func:`points`."""
    sizes = np.asarray(sizes, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    n = len(sizes)
    U, p = points(sizes, u, k_sd) if at is None else at
    U = U.T.astype(LD)
    C = sizes.astype(LD)[:, None]
    z = np.asarray(z, dtype=LD)[:, None]
    lu = z[:, 0] * np.asarray(A, dtype=LD) + np.asarray(B, dtype=LD)
    lm = np.asarray(B, dtype=LD)
    on = sizes > 0
    top = max([LD(b_self)] + list(lu[on]) + list(lm[on]))
    wu = np.where(on, np.exp(lu - top), 0)[:, None]
    wm = np.where(on, np.exp(lm - top), 0)[:, None]
    ws = np.exp(LD(b_self) - top)
    unm, msk = U * wu, (C - U) * wm
    D = ws + np.sum(unm + msk, axis=0)
    alpha, mu = unm / D, msk / D
    # 1 - alpha_c and 1 - alpha_c - mu_c from the positive terms of D
    not_a = np.stack([ws + np.sum(np.delete(unm, c, 0), 0) + np.sum(msk, 0) for c in range(n)]) / D
    not_am = np.stack([ws + np.sum(np.delete(unm + msk, c, 0), 0) for c in range(n)]) / D
    nA = areas.astype(LD)[:, None]
    s2 = np.where(nA == 1, U * U, 0)
    multi = (areas > 1)[:, None]
    f = np.where(multi, 1 / np.where(multi, nA, 1), 0)
    Cm1 = np.where(multi, C - 1, 1)
    s2 = np.where(multi, nA * (U * f * (1 - f) * (C - U) / Cm1 + (U * f) ** 2), s2)
    sigma = s2 * (wu / D) ** 2
    e = z**2 * sigma
    e[0] = -z[0] ** 2 * alpha[0] * not_a[0]
    gbar = np.sum(e, axis=0)
    loss = (z[0] ** 2 * not_a[0] ** 2 + np.sum(e[1:], axis=0)) / 2
    # e_c - gbar alpha_c = e_c (1 - alpha_c) - alpha_c (gbar - e_c), and likewise with mu
    rest = np.stack([np.sum(np.delete(e, c, 0), 0) for c in range(n)])
    inv_n = np.where(nA > 0, 1 / np.where(nA > 0, nA, 1), 0)
    inv_c = np.where(C > 0, 1 / np.where(C > 0, C, 1), 0)
    dA = z * (e * not_a - alpha * rest) * inv_n
    dA[0] = -2 * z[0, 0] * alpha[0] * loss
    dB = (e * not_am - (alpha + mu) * rest) * inv_c
    out = np.zeros(3 + 3 * n, dtype=LD)
    out[0] = p.sum()
    out[1] = p @ loss
    out[2] = p @ (-gbar * ws / D)
    out[3:3 + n] = alpha @ p
    out[3 + n:3 + 2 * n] = dA @ p
    out[3 + 2 * n:] = dB @ p
    return out


def mp_sums(sizes, areas, z, A, B, b_self, u, dps=60, k_sd=12.0):
    """The §3 sums of one class in mpmath at ``dps`` digits, each line exactly as written in
    docs/model.md §3 (module docstring); the same points as :func:`ld_sums`."""
    with mpmath.workdps(dps):
        mp = mpmath.mpf
        n = len(sizes)
        U_all, _ = points(sizes, u, k_sd)
        # exact probabilities (binomials), normalised over the enumerated points like ld_sums
        pool = sum(int(s) for s in sizes)
        prob = [mpmath.fprod(mpmath.binomial(int(sizes[c]), int(Ux[c])) for c in range(n))
                / mpmath.binomial(pool, u) for Ux in U_all]
        total = mpmath.fsum(prob)
        wu = [mpmath.exp(mp(z[c]) * mp(A[c]) + mp(B[c])) for c in range(n)]
        wm = [mpmath.exp(mp(B[c])) for c in range(n)]
        ws = mpmath.exp(mp(b_self))
        out = [mp(0)] * (3 + 3 * n)
        for Ux, w in zip(U_all, prob):
            vals = [mp(1)] + mp_point([int(v) for v in Ux], sizes, areas, z, wu, wm, ws)
            w = w / total
            out = [o + w * v for o, v in zip(out, vals)]
        return out


def mp_point(U, sizes, areas, z, wu, wm, ws):
    """The §3 lines at one count point ``U`` in mpmath, each exactly as written in
    docs/model.md §3, from the key weights ``wu``, ``wm``, ``ws``: ``[loss, dB_self,
    alpha..., dA..., dB...]``."""
    mp = mpmath.mpf
    n = len(sizes)
    Uc = [mp(int(v)) for v in U]
    D = ws + sum(Uc[c] * wu[c] + (int(sizes[c]) - Uc[c]) * wm[c] for c in range(n))
    alpha = [Uc[c] * wu[c] / D for c in range(n)]
    mu = [(int(sizes[c]) - Uc[c]) * wm[c] / D for c in range(n)]
    sigma = [mp(0)] * n
    for c in range(1, n):
        k, r = int(areas[c]), Uc[c]
        if k == 1:
            s2 = r * r
        elif k > 1:
            f, Cc = mp(1) / k, mp(int(sizes[c]))
            s2 = k * (r * f * (1 - f) * (Cc - r) / (Cc - 1) + (r * f) ** 2)
        else:
            s2 = mp(0)
        sigma[c] = s2 * (wu[c] / D) ** 2
    z2 = [mp(v) ** 2 for v in z]
    groups = sum(z2[c] * sigma[c] for c in range(1, n))
    loss = (z2[0] * (alpha[0] - 1) ** 2 + groups) / 2
    gbar = z2[0] * alpha[0] * (alpha[0] - 1) + groups
    dA = [z[0] * alpha[0] * (z2[0] * (alpha[0] - 1) - gbar)]
    dA += [z[c] * (z2[c] * sigma[c] - gbar * alpha[c]) / int(areas[c]) if areas[c]
           else mp(0) for c in range(1, n)]
    dB = [(z2[0] * alpha[0] * (alpha[0] - 1) - gbar * (alpha[0] + mu[0])) / int(sizes[0])
          if sizes[0] else mp(0)]
    dB += [(z2[c] * sigma[c] - gbar * (alpha[c] + mu[c])) / int(sizes[c]) if sizes[c]
           else mp(0) for c in range(1, n)]
    return [loss, -gbar * ws / D] + alpha + dA + dB


def grid_points(grid):
    """The points of a count grid (:class:`mimfast.grid.ClassGrid`) and their probabilities,
    as :func:`ld_sums` takes them: to check a kernel alone, without the grid's tail."""
    rows = list(grid.rows())
    return (np.concatenate([c for c, _ in rows]), np.concatenate([p for _, p in rows]).astype(LD))


def reference_gradient(setting, state, sums=ld_sums, grids=None, **kw):
    """The gradient of ``setting`` at ``state`` from reference class sums ``sums``: per class
    (k, h), its sums as float64 (``class_sums[k, h]``), and the gradient assembled as
    :func:`mimfast.model.evaluate` does (fp per cluster, pp, loss). With ``grids`` (count
    grids of every class), over their points only (:func:`grid_points`)."""
    scale = setting.masked / setting.P
    pp = None if state.pp is None else np.zeros(state.pp.shape, dtype=LD)
    fp, per_class, loss = [], {}, LD(0)
    for k, cluster in enumerate(setting.clusters):
        pi = setting.weights[k]
        G = len(cluster.groups)
        fp.append(np.zeros((G, 1 + G)))
        for h, group in enumerate(cluster.groups):
            sizes, areas = class_categories(setting, k, h)
            n = len(sizes)
            z = setting.class_z(k, h)
            B = np.zeros(n) if state.pp is None else state.pp[h, 1:]
            b_self = 0.0 if state.pp is None else state.pp[h, 0]
            if grids is not None:
                kw["at"] = grid_points(grids[k, h])
            s = np.asarray(sums(sizes, areas, z, state.fp[k][h], B, b_self, setting.unmasked,
                                **kw), dtype=LD)
            per_class[k, h] = s.astype(np.float64)
            fp[k][h] = (LD(pi * scale) * s[3 + n:3 + 2 * n]).astype(np.float64)
            loss += LD(pi * scale * group.patches) * s[1]
            if pp is not None:
                pp[h, 0] += LD(pi * scale) * s[2]
                pp[h, 1:] += LD(pi * scale) * s[3 + 2 * n:]
    return {"fp": fp, "pp": None if pp is None else pp.astype(np.float64),
            "loss": float(loss), "classes": per_class}


def gradient_error(g, ref):
    """Normwise relative difference of a :class:`mimfast.Gradient` to a reference gradient:
    the whole gradient vector (fp then pp) and the loss, the larger of the two."""
    got = np.concatenate([a.ravel() for a in g.fp] + ([] if g.pp is None else [g.pp.ravel()]))
    want = np.concatenate([a.ravel() for a in ref["fp"]]
                          + ([] if ref["pp"] is None else [ref["pp"].ravel()]))
    norm = np.linalg.norm(want)
    err = np.linalg.norm(got - want) / norm if norm > 0 else float(np.linalg.norm(got) > 0)
    lerr = abs(g.loss - ref["loss"]) / abs(ref["loss"]) if ref["loss"] else abs(g.loss)
    return max(err, lerr)
