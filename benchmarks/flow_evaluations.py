"""Gradient evaluations of a gradient-flow run to T_eps, P = 10^3 ... 10^18 (docs/performance.md).

    python benchmarks/flow_evaluations.py            # the table, ~30 s
    python benchmarks/flow_evaluations.py --rtol 1e-8

Runs :func:`mimfast.flow` on the paper-positive and paper-negative settings (kappa_c = 0.9 and
0.6, kappa_s = 0.3) from Q = 0 until every class's own-area attention reaches 0.95, on one
thread, and prints a Markdown table: accepted and rejected steps, events located and the
gradient evaluations spent locating them, all gradient evaluations (two to choose the first
step, six per accepted or rejected step: Dormand-Prince 5(4) reuses its last stage, and
those locating the events), flow time reached, and the wall time of the run with backend
cpp's compiled step loop (cpp/flow.hpp) and with the Python step loop around the same kernel
(the loop of the other backends), which takes the same steps; each the best of
``--repeats`` runs. The steps tried are counted on the Python loop (each calls the error
norm once), the events and their evaluations on both (both locate them in Python).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager

import mimfast as mf

flow_module = sys.modules["mimfast.flow"]  # (mf.flow is the function)

SETTINGS = {"paper-positive": (0.9, 0.3), "paper-negative": (0.6, 0.3)}


def run(setting, rtol, compiled, repeats):
    """The run, its best wall time, with the compiled or the Python step loop, and its counts
    of the last run: steps tried (error norms; Python loop only), events located and
    evaluations locating them."""
    saved, best = flow_module.FUSED, float("inf")
    flow_module.FUSED = {"cpp"} if compiled else set()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = mf.flow(setting, 1e300, rtol=rtol, stop_at="T_eps", threads=1)
            best = min(best, time.perf_counter() - t0)
        with counting() as counts:  # not timed
            again = mf.flow(setting, 1e300, rtol=rtol, stop_at="T_eps", threads=1)
        if again.evaluations != r.evaluations:
            raise SystemExit("a counted run took other steps")
    finally:
        flow_module.FUSED = saved
    return r, best, counts


@contextmanager
def counting():
    """Count the error norms (one per step tried by the Python loop), the events located and
    the gradient evaluations locating them."""
    counts = {"tried": 0, "events": 0, "locating": 0}
    norm, locate = flow_module._error_norm, flow_module._locate_events

    def error_norm(*args):
        counts["tried"] += 1
        return norm(*args)

    def locate_events(field, events, found, crossed, *args):
        before = field.count
        locate(field, events, found, crossed, *args)
        counts["events"] += len(crossed)
        counts["locating"] += field.count - before

    flow_module._error_norm, flow_module._locate_events = error_norm, locate_events
    try:
        yield counts
    finally:
        flow_module._error_norm, flow_module._locate_events = norm, locate


def rows(rtol, exponents, repeats):
    for name, (kappa_c, kappa_s) in SETTINGS.items():
        for e in exponents:
            s = mf.Setting.paper(10**e, kappa_c, kappa_s)
            r, compiled, counts = run(s, rtol, True, repeats)
            stepped, python, tried = run(s, rtol, False, repeats)
            if (stepped.evaluations != r.evaluations or len(stepped) != len(r)
                    or counts["locating"] != tried["locating"]):
                raise SystemExit(f"P=10^{e}: the two step loops took different steps")
            accepted = len(r.steps) - 1
            rejected = tried["tried"] - accepted
            if r.evaluations != 2 + 6 * (accepted + rejected) + counts["locating"]:
                raise SystemExit(f"P=10^{e}: the evaluations do not add up")
            yield (name, f"10^{e}", r.method, accepted, rejected, counts["events"],
                   counts["locating"], r.evaluations, f"{r.tau[-1]:.3g}", f"{compiled:.3f}",
                   f"{python:.3f}", f"{python / compiled:.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rtol", type=float, default=1e-10)
    p.add_argument("--exponents", type=int, nargs="+", default=[3, 4, 6, 9, 12, 15, 18])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    cols = ["setting", "P", "method", "accepted steps", "rejected steps", "events",
            "evaluations locating them", "gradient evaluations", "tau at T_eps",
            "wall s, compiled loop", "wall s, Python loop", "Python / compiled"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for row in rows(args.rtol, args.exponents, args.repeats):
        print("| " + " | ".join(str(v) for v in row) + " |", flush=True)


if __name__ == "__main__":
    main()
