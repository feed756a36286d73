"""Why the presets use eta = 100 and 1000 steps: the table of docs/theorem.md.

    python benchmarks/preset_eta.py                 # ~30 s on 2 cores
    python benchmarks/doc_tables.py preset-eta      # the same, rewriting docs/theorem.md

GD runs of ``Setting.paper(P, kappa_c, 0.3)`` from Q = 0 at several learning rates, analysed
with :func:`mimfast.analysis.analyze` (eps = 0.05): the local query's phase switch, each
class's T_eps and the local own-area attention at the last step, and whether the loss never
rose from one step to the next.
"""

from __future__ import annotations

import numpy as np

import mimfast as mf
from mimfast.analysis import analyze
from mimfast.cli import preset_eta

ETAS = (20, 50, 100, 200, 500, 1000)
# (kappa_c, P, eta, steps): P = 10^6 over 3000 steps, then the presets' eta at 10^7
RUNS = [(kc, 10**6, eta, 3000) for kc in (0.9, 0.6) for eta in ETAS]
RUNS += [(kc, 10**7, preset_eta(10**7, 0.3), 1000) for kc in (0.9, 0.6)]


def main():
    print("| κ_c (Δ) | P | η | local phase switch | global T_ε | local T_ε | "
          "local attention at the last step | loss never rose |")
    print("|---|---|---|---|---|---|---|---|")
    for kappa_c, P, eta, steps in RUNS:
        s = mf.Setting.paper(P, kappa_c, 0.3)
        r = mf.simulate(s, eta=float(eta), steps=steps, threads=1)
        glob, local = analyze(r).classes
        delta = (1 - 0.3) - 2 * (1 - kappa_c)
        fell = bool(np.all(np.diff(np.asarray(r.loss)) <= 0))
        t_eps = [c.convergence_time if c.convergence_time is not None else "never"
                 for c in (glob, local)]
        print(f"| {kappa_c} ({delta:+.1f}) | 10^{len(str(P)) - 1} | {eta:.0f} | "
              f"{local.phase_switch if local.phase_switch is not None else '-'} | {t_eps[0]} | "
              f"{t_eps[1]} | {local.attention:.4f} (step {steps}) | {'yes' if fell else 'no'} |",
              flush=True)


if __name__ == "__main__":
    main()
