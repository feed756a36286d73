"""What checkpoints cost a long `mimfast run`: prints the table of docs/performance.md.

    python benchmarks/doc_tables.py checkpoint-cost     # runs this script, rewrites its section
    python benchmarks/checkpoint_cost.py --steps 5000 --rule-steps 100   # printed only

Each configuration is the same command (``python -m mimfast run --P 1e4 --steps N --no-plots
--threads 1``) with its own checkpoint options, run in a fresh process; the configurations are
interleaved round by round and the best wall time of each is kept, so the ratios come from one
machine state. A checkpoint rewrites the whole record so far (the record grows with the run),
which is why a rule by steps costs a long run more and more; the default rule is by wall time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(steps, P, extra):
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "mimfast", "run", "--P", P, "--steps", str(steps),
               "--no-plots", "--threads", "1", "--out", str(Path(tmp) / "run"), *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--P", default="1e4")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rule-steps", type=int, default=0,
                    help="also time --checkpoint-every N (checkpoints by steps only)")
    args = ap.parse_args()
    configs = {"none (--checkpoint-seconds 0)": ["--checkpoint-seconds", "0"],
               "default (at most one per 30 s)": [],
               "at most one per 3 s (--checkpoint-seconds 3)": ["--checkpoint-seconds", "3"]}
    if args.rule_steps:
        configs[f"every {args.rule_steps} steps (--checkpoint-seconds 0 --checkpoint-every "
                f"{args.rule_steps})"] = ["--checkpoint-seconds", "0", "--checkpoint-every",
                                          str(args.rule_steps)]
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(args.rounds):
        for name, extra in configs.items():
            best[name] = min(best[name], run_once(args.steps, args.P, extra))
    base = best["none (--checkpoint-seconds 0)"]
    lines = [(f"each run: `mimfast run --P {args.P} --steps {args.steps:,} --no-plots "
              f"--threads 1` plus the options below; best of {args.rounds}"),
             "",
             "| checkpoints | wall time (s) | / none |",
             "|---|---|---|"]
    lines += [f"| {name} | {t:.1f} | {t / base:.2f}x |" for name, t in best.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
