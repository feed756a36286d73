"""Whole quadrature trajectories against whole exact ones, step by step (docs/theorem.md).

    python benchmarks/full_trajectory.py                  # P = 10^8 and 10^9, both regimes
    python benchmarks/full_trajectory.py --P 1e8 --record-every 5

A one-off validation at sizes where the tests compare the two engines only at states along a
quadrature run (tests/test_quadrature.py): for each P, regime (paper setting kappa_c 0.9 and
0.6) and kappa_s, both engines run the presets' eta, 100 (P / 10^6)^(1 - kappa_s), from Q = 0
through the phase change to saturated attention, and every recorded step is compared class by
class: the state (FP and PP correlations), the FP gradient, the attention vector, the patch
loss (each normwise relative), and the loss: these include how far the two runs drift apart.
"same state" is the largest difference at the quadrature run's own recorded states (its record
against the exact engine at that state: the quadrature's error alone), and "est >= err"
counts the recorded steps whose error estimate (``Result.error``) is at least that
difference, and at least it or 1e-14 (the exact engine's rounding is ~1e-14 and more).
A run that fails (for example a NaN gradient) is reported with its error.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import mimfast as mf
from mimfast.cli import PRESET_ETA, PRESET_P


def rel(a, b):
    """Normwise relative difference of each row (inf where anything is not finite)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    d = np.linalg.norm(a - b, axis=1)
    n = np.linalg.norm(b, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(d == 0, 0.0, d / n)
    bad = ~(np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1))
    return np.where(bad, math.inf, out)


def compare(q, e):
    """Per recorded step: the largest difference of state, gradient, attention, patch loss
    over classes, and of the loss."""
    s = q.setting
    worst = {"state": 0.0, "gradient": 0.0, "attention": 0.0, "patch loss": 0.0}
    per_step = np.zeros(len(q.steps))
    for k, h in s.classes():
        keys = ["own"] + list(range(len(s.clusters[k].groups)))
        for name, get in (("state", q.fp), ("gradient", q.fp_grad), ("attention", q.attention)):
            other = {"state": e.fp, "gradient": e.fp_grad, "attention": e.attention}[name]
            r = rel(np.stack([get(k, h, key) for key in keys], axis=1),
                    np.stack([other(k, h, key) for key in keys], axis=1))
            worst[name] = max(worst[name], r.max())
            if name != "state":
                per_step = np.maximum(per_step, r)
        r = rel(q.patch_loss(k, h), e.patch_loss(k, h))
        worst["patch loss"] = max(worst["patch loss"], r.max())
        per_step = np.maximum(per_step, r)
    if s.pp == "exact":
        keys = ["self", "own"] + list(range(len(s.clusters[0].groups)))
        for h in range(len(s.clusters[0].groups)):
            r = rel(np.stack([q.pp(h, key) for key in keys], axis=1),
                    np.stack([e.pp(h, key) for key in keys], axis=1))
            worst["state"] = max(worst["state"], r.max())
    r = rel(q.loss[:, None], e.loss[:, None])
    worst["loss"] = r.max()
    per_step = np.maximum(per_step, r)
    return worst, per_step


def same_state(q, threads):
    """Per recorded step: the largest difference between the quadrature run's record and the
    exact engine at the same (recorded) state: FP gradient, attention, patch loss per class,
    and the loss."""
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import evaluate

    s = q.setting
    grids, kernel = build_grids(s), get_kernel("cpp")
    out = np.zeros(len(q.steps))
    for i in range(len(q.steps)):
        g = evaluate(s, grids, q.recorded_state(i), kernel, threads)
        worst = rel([q.loss[i]], [g.loss])[0]
        for k, h in s.classes():
            keys = ["own"] + list(range(len(s.clusters[k].groups)))
            for get, want in ((q.fp_grad, g.fp[k][h]), (q.attention, g.attention[k][h])):
                worst = max(worst, rel([[get(k, h, key)[i] for key in keys]], [want])[0])
            worst = max(worst, rel([q.patch_loss(k, h)[i]], [g.patch_loss[k][h]])[0])
        out[i] = worst
    return out


def one(P, kappa_c, kappa_s, steps, record_every, threads):
    s = mf.Setting.paper(P, kappa_c, kappa_s)
    eta = PRESET_ETA * max(1.0, P / PRESET_P) ** (1 - kappa_s)
    t0 = time.perf_counter()
    q = mf.simulate(s, eta, steps, record_every=record_every, method="quadrature",
                    threads=threads)
    tq = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        e = mf.simulate(s, eta, steps, record_every=record_every, method="exact",
                        threads=threads)
    except Exception as exc:  # noqa: BLE001 - reported in the table, not hidden
        return (f"| 10^{round(math.log10(P))} | {kappa_c} | {kappa_s} | {steps} | "
                f"exact run failed after {time.perf_counter() - t0:.0f} s: "
                f"{type(exc).__name__}: {exc} |")
    te = time.perf_counter() - t0
    worst, per_step = compare(q, e)
    same = same_state(q, threads)
    first = min(int(np.argmax(q.attention(k, h, "own") >= 0.99)) for k, h in s.classes()
                if (q.attention(k, h, "own") >= 0.99).any())
    att = min(q.attention(k, h, "own")[-1] for k, h in s.classes())
    ok = int(np.sum(q.error >= np.minimum(same, 1e300)))
    ok14 = int(np.sum(np.maximum(q.error, 1e-14) >= same))
    return (f"| 10^{round(math.log10(P))} | {kappa_c} | {kappa_s} | {steps} | {att:.6f} | "
            + " | ".join(f"{worst[n]:.1e}" for n in
                         ("state", "gradient", "attention", "patch loss", "loss"))
            + f" | {same.max():.1e} | {q.error.max():.1e} | {ok}, {ok14}/{len(q.steps)}"
            + f" | {tq:.1f} | {te:.0f} |"
            + f"  <!-- phase change by step {int(q.steps[first])}; worst step "
            + f"{int(q.steps[int(np.argmax(per_step))])} -->")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", default="1e8,1e9", help="comma-separated P values")
    parser.add_argument("--record-every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    print("| P | kappa_c | kappa_s | steps | final own attention | state | gradient | "
          "attention | patch loss | loss | same state | largest estimate | est >= err | "
          "quadrature s | exact s |")
    print("|---" * 15 + "|")
    for P in (int(float(v)) for v in args.P.split(",")):
        for kappa_c in (0.9, 0.6):
            for kappa_s, steps in ((0.3, 700), (0.5, 100)):
                print(one(P, kappa_c, kappa_s, steps, args.record_every, args.threads),
                      flush=True)


if __name__ == "__main__":
    main()
