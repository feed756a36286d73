"""Phase-I observables of the gradient flow from P = 10^4 to 10^18 (docs/theorem.md).

    python benchmarks/phase_one.py        # the tables, ~15 s

For the paper's two regimes (kappa_c = 0.9 and 0.6, kappa_s = 0.3) runs :func:`mimfast.flow`
from Q = 0 to T_eps (rtol 1e-10) and prints, for the local query class, the measurements of
:func:`mimfast.analysis.analyze` in flow time: R(0), the switch, the global and own FP
correlations at the switch, T_eps of both classes and A_global at the local T_eps; then the
slope (with a 95 % interval) of log R(0), log tau_switch, log T_eps and A_global at the
switch against ln P beside the leading-order values (Delta for R(0), 1 - kappa_s for the
local times, -Delta / 2 for A_global), and beside the switch and
A_global the leading-order values of docs/theorem.md: 1 / (2 |dL/dA_own| at Q = 0) and
-ln R(0) / 2.
"""

from __future__ import annotations

import math

import numpy as np

import mimfast as mf
from mimfast.analysis import analyze

SETTINGS = {"Delta = +0.5": (0.9, 0.3), "Delta = -0.1": (0.6, 0.3)}
EXPONENTS = (4, 6, 9, 12, 15, 18)


def fmt(v):
    return "-" if v is None else f"{v:.4g}"


def fit(x, y):
    """Least-squares slope of y against x and the half-width of its 95 % Student-t interval."""
    from scipy.stats import t

    (slope, _), cov = np.polyfit(x, y, 1, cov=True)
    return slope, t.ppf(0.975, len(x) - 2) * math.sqrt(cov[0, 0])


def main():
    for name, (kappa_c, kappa_s) in SETTINGS.items():
        cols = ["P", "R(0)", "switch tau", "1 / (2 g_own(0))", "A_global at switch",
                "-ln R(0) / 2", "A_own at switch", "global T_eps", "local T_eps",
                "A_global at T_eps"]
        print(f"\n{name} (kappa_c = {kappa_c}, kappa_s = {kappa_s})\n")
        print("| " + " | ".join(cols) + " |")
        print("|" + "|".join("---" for _ in cols) + "|")
        logs = []
        for e in EXPONENTS:
            s = mf.Setting.paper(10**e, kappa_c, kappa_s)
            r = mf.flow(s, 1e300, stop_at="T_eps", threads=1)
            glob, local = analyze(r).classes
            g_own = abs(float(r.fp_grad(0, 1, "own")[0]))
            two = local.grad_ratio0 > 1  # the predictions are those of a decoupling phase
            print("| " + " | ".join([f"10^{e}", fmt(local.grad_ratio0), fmt(local.switch_tau),
                                     fmt(1 / (2 * g_own)) if two else "-",
                                     fmt(local.fp_global_at_switch),
                                     fmt(-math.log(local.grad_ratio0) / 2) if two else "-",
                                     fmt(local.fp_own_at_switch),
                                     fmt(glob.convergence_tau), fmt(local.convergence_tau),
                                     fmt(local.fp_global)]) + " |")
            logs.append((e * math.log(10), math.log(local.grad_ratio0),
                         math.log(local.switch_tau) if local.switch_tau else math.nan,
                         math.log(local.convergence_tau),
                         local.fp_global_at_switch if local.switch_tau else math.nan))
        x, *ys = np.array(logs).T
        delta = (1 - kappa_s) - 2 * (1 - kappa_c)
        print()
        for label, y, want in (("log R(0)", ys[0], delta), ("log switch tau", ys[1], 1 - kappa_s),
                               ("log local T_eps", ys[2], 1 - kappa_s),
                               ("A_global at switch", ys[3], -delta / 2)):
            if np.all(np.isfinite(y)):
                slope, half = fit(x, y)
                print(f"- slope of {label} against ln P: {slope:.4f} [{slope - half:.4f}, "
                      f"{slope + half:.4f}] (leading order {want:.4f})")


if __name__ == "__main__":
    main()
