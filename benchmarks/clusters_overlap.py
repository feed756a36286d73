"""Several clusters with learned PP across their global-area overlap (docs/theorem.md).

    mimfast sweep --preset paper-clusters-overlap --out runs/clusters-overlap   # ~12 min
    python benchmarks/clusters_overlap.py runs/clusters-overlap                 # tables, figure

Reads the results table of the ``paper-clusters-overlap`` sweep (gradient flow to T_eps of
``Setting.paper_clusters`` with K = 2, both regimes, overlap 0 ... 1, P = 10^4 ... 10^15) and
prints, as Markdown: the measurements at P = 10^6 and 10^12 for overlap 0, 0.5 and 1 beside
one cluster with learned PP (``Setting.paper``, K = 1: run here, as the same sweep task
without overlap), then max|PP| / max|FP| and the PP shares of the logit gap across P, and
how many phase verdicts agree with the paper. Writes the figure
docs/figures/clusters-overlap.png (``--figure``). Only the preset's own tasks are used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mimfast.sweeps import expand, preset, read_table, sweep, task_id

PRESET = "paper-clusters-overlap"
ROOT = Path(__file__).resolve().parent.parent
REGIMES = {0.9: "Delta = +0.5 (kappa_c = 0.9)", 0.6: "Delta = -0.1 (kappa_c = 0.6)"}
POINTS = (10**6, 10**12)
SHOWN = (0.0, 0.5, 1.0)
ACROSS = (4, 6, 8, 10, 12, 15)


def fmt(v, f=".3g"):
    return "-" if v is None or pd.isna(v) else format(v, f)


def table(cols, rows):
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def preset_rows(folder):
    """The done rows of the preset's tasks in the sweep folder (exits naming what is
    missing)."""
    df = read_table(folder)
    ids = [task_id(t) for t in expand(preset(PRESET))]
    df = df[df["task"].isin(ids) & (df["status"] == "done")]
    if len(df) < len(ids):
        sys.exit(f"{folder}: {len(ids) - len(df)} of the {len(ids)} tasks of {PRESET} are not "
                 f"done; run `mimfast sweep --preset {PRESET} --out {folder}` first")
    return df


def one_cluster():
    """The same measurements for one cluster with learned PP (Setting.paper, K = 1)."""
    grid = {k: v for k, v in preset(PRESET).items() if k not in ("K", "overlap")}
    grid["P"] = list(POINTS)
    with tempfile.TemporaryDirectory() as out:
        return sweep(out, grid, workers=1, progress=False)


def point_rows(df, ref):
    rows = []
    for kappa_c in REGIMES:
        for P in POINTS:
            cases = [(f"{o:g}", df[(df.kappa_c == kappa_c) & (df.P == P) & (df.overlap == o)])
                     for o in SHOWN]
            cases.append(("K = 1", ref[(ref.kappa_c == kappa_c) & (ref.P == P)]))
            for name, r in cases:
                r = r.iloc[0]
                rows.append([f"{r.delta:+.1f}", f"10^{round(np.log10(P))}", name,
                             fmt(r.pp_fp_ratio), fmt(r.local_pp_share_max),
                             fmt(r.local_pp_share_final), fmt(r.global_pp_share_max),
                             f"{r.local_phases} / {r.global_phases}",
                             fmt(r.local_switch_tau, ".4g"), fmt(r.local_T_eps_tau, ".4g"),
                             fmt(r.global_T_eps_tau, ".4g"),
                             fmt(min(r.local_attention, r.global_attention), ".4f")])
    return table(["Delta", "P", "overlap", "max PP / max FP", "local PP share: max",
                  "at T_eps", "global PP share: max", "phases local / global",
                  "local switch tau", "local T_eps tau", "global T_eps tau",
                  "min attention"], rows)


def across_rows(df, column):
    rows = []
    for kappa_c in REGIMES:
        for o in sorted(df.overlap.unique()):
            sub = df[(df.kappa_c == kappa_c) & (df.overlap == o)].set_index("P")
            rows.append([f"{sub.delta.iloc[0]:+.1f}", f"{o:g}"]
                        + [fmt(sub[column].get(10**e)) for e in ACROSS])
    return table(["Delta", "overlap"] + [f"P = 10^{e}" for e in ACROSS], rows)


SPREAD = {"pp_fp_ratio": "max PP / max FP", "local_pp_share_max": "local PP share",
          "global_pp_share_max": "global PP share", "local_switch_tau": "local switch tau",
          "local_T_eps_tau": "local T_eps tau", "global_T_eps_tau": "global T_eps tau"}


def spread(df):
    """Per regime and quantity: the largest relative spread (max / min - 1) across the
    overlaps at one P, over every P."""
    rows = []
    for kappa_c in REGIMES:
        sub = df[df.kappa_c == kappa_c]
        cells = []
        for column in SPREAD:
            by_p = sub.groupby("P")[column].agg(["min", "max"]).astype(float)
            by_p = by_p[by_p["min"] > 0]
            cells.append(fmt(float((by_p["max"] / by_p["min"] - 1).max()) if len(by_p)
                             else None, ".2g"))
        rows.append([f"{sub.delta.iloc[0]:+.1f}", *cells])
    return table(["Delta", *SPREAD.values()], rows)


def verdicts(df):
    lines = []
    for kappa_c, name in REGIMES.items():
        sub = df[df.kappa_c == kappa_c]
        want = 2 if sub.delta.iloc[0] > 0 else 1
        local = int((sub.local_phases == want).sum())
        glob = int((sub.global_phases == 1).sum())
        conv = int(sub.converged.sum())
        lines.append(f"- {name}: local queries in {want} phase(s) in {local} of {len(sub)} "
                     f"tasks, global queries in one phase in {glob} of {len(sub)}, T_eps of "
                     f"every class reached in {conv} of {len(sub)}")
    return "\n".join(lines)


def figure(df, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overlaps = sorted(df.overlap.unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(overlaps)))
    fig, axes = plt.subplots(2, 3, figsize=(13.5, 7.2), sharex=True, constrained_layout=True)
    for row, (kappa_c, name) in zip(axes, REGIMES.items()):
        for o, color in zip(overlaps, colors):
            sub = df[(df.kappa_c == kappa_c) & (df.overlap == o)].sort_values("P")
            P = sub.P.to_numpy(dtype=float)
            label = f"overlap {o:g}"
            row[0].loglog(P, sub.pp_fp_ratio, "o-", color=color, ms=3, label=label)
            row[1].loglog(P, sub.local_pp_share_max, "o-", color=color, ms=3, label=label)
            row[1].loglog(P, sub.global_pp_share_max, "s--", color=color, ms=3)
            switch = sub.local_switch_tau.to_numpy(dtype=float)
            if np.nanmax(switch) > 0:
                row[2].loglog(P, switch, "o-", color=color, ms=3, label=label)
            row[2].loglog(P, sub.local_T_eps_tau, "^:", color=color, ms=3)
        P = np.array(sorted(df.P.unique()), dtype=float)
        c_l = np.maximum(2, np.round(P ** float(df.kappa_s.iloc[0])))
        for n, style in ((1, ":"), (2, "--")):
            row[0].loglog(P, n / c_l, style, color="grey", lw=1, label=f"{n} / c_l")
        row[0].set_ylabel(f"{name}\nmax|PP| / max|FP| over the run")
        row[1].set_ylabel("largest PP share of the logit gap")
        row[2].set_ylabel("flow time")
        row[1].text(0.03, 0.03, "solid: local queries; dashed: global queries",
                    transform=row[1].transAxes, fontsize=8)
        what = ("solid: local phase switch; dotted: local T_eps" if kappa_c == 0.9
                else "switch at 0 (one phase); dotted: local T_eps")
        row[2].text(0.03, 0.93, what, transform=row[2].transAxes, fontsize=8)
        row[0].legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("P")
    fig.suptitle("Setting.paper_clusters, K = 2, kappa_s = 0.3, gradient flow to T_eps")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, nargs="?", default=ROOT / "runs/clusters-overlap",
                    help="the sweep's output folder (default runs/clusters-overlap)")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs/figures/clusters-overlap.png")
    args = ap.parse_args()
    df = preset_rows(args.folder)
    print("Overlap 0, 0.5 and 1 at P = 10^6 and 10^12, beside one cluster (K = 1, "
          "Setting.paper, learned PP):\n")
    print(point_rows(df, one_cluster()))
    print("\nmax PP / max FP (the largest |PP| over the largest |FP| of the run), across P:\n")
    print(across_rows(df, "pp_fp_ratio"))
    print("\nLargest PP share of a global query's logit gap over the run, across P:\n")
    print(across_rows(df, "global_pp_share_max"))
    print("\nLargest relative spread across the five overlaps at one P (max / min - 1), over "
          "every P:\n")
    print(spread(df))
    print("\nPhase verdicts of the whole sweep (every P and overlap):\n")
    print(verdicts(df))
    figure(df, args.figure)


if __name__ == "__main__":
    main()
