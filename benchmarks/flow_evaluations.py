"""Gradient evaluations of a gradient-flow run to T_eps, P = 10^3 ... 10^18 (docs/performance.md).

    python benchmarks/flow_evaluations.py            # the table, ~10 s
    python benchmarks/flow_evaluations.py --rtol 1e-8

Runs :func:`mimfast.flow` on the paper-positive and paper-negative settings (kappa_c = 0.9 and
0.6, kappa_s = 0.3) from Q = 0 until every class's own-area attention reaches 0.95, on one
thread, and prints a Markdown table: accepted steps, gradient evaluations (six per accepted
step, seven per rejected one, and those spent locating the events), flow time reached, and
the wall time of the run.
"""

from __future__ import annotations

import argparse
import time

import mimfast as mf

SETTINGS = {"paper-positive": (0.9, 0.3), "paper-negative": (0.6, 0.3)}


def rows(rtol, exponents):
    for name, (kappa_c, kappa_s) in SETTINGS.items():
        for e in exponents:
            s = mf.Setting.paper(10**e, kappa_c, kappa_s)
            t0 = time.perf_counter()
            r = mf.flow(s, 1e300, rtol=rtol, stop_at="T_eps", threads=1)
            wall = time.perf_counter() - t0
            yield (name, f"10^{e}", r.method, len(r.steps) - 1, r.evaluations,
                   f"{r.tau[-1]:.3g}", f"{wall:.2f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rtol", type=float, default=1e-10)
    p.add_argument("--exponents", type=int, nargs="+", default=[3, 4, 6, 9, 12, 15, 18])
    args = p.parse_args(argv)
    cols = ["setting", "P", "method", "accepted steps", "gradient evaluations", "tau at T_eps",
            "wall s (1 thread)"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows(args.rtol, args.exponents):
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
