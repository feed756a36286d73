"""The flow-time tables and figures of docs/scaling.md, from gradient-flow sweeps.

    python benchmarks/scaling_flow.py [RUNS]     # ~1-2 minutes on 2 cores

Runs (or finishes) three sweeps into folder RUNS (default ``runs``): the presets
``paper-scaling-flow`` and ``paper-phases-flow``, and a fine line across the phase boundary
(``boundary-flow``: kappa_s = 0.3, kappa_c = 0.65 ... 0.70 in steps of 0.0025, P = 10^4,
10^6, ..., 10^18, to T_eps). Then rewrites the generated blocks of docs/scaling.md (between
``<!-- scaling_flow: NAME -->`` and ``<!-- /scaling_flow -->``) and docs/figures/scaling.png,
phases.png and boundary.png. Every number in those blocks comes from the sweep tables, the
fits of :mod:`mimfast.scaling` and the saved runs.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

import numpy as np

from mimfast import io, scaling
from mimfast.sweeps import preset, sweep

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "scaling.md"
FIGURES = ROOT / "docs" / "figures"
BOUNDARY = {"P": [10**e for e in range(4, 19, 2)], "kappa_s": 0.3,
            "kappa_c": [round(0.65 + 0.0025 * i, 4) for i in range(21)], "flow": True,
            "method": "auto", "rtol": 1e-13}


def run(out, grid):
    """Run (or finish) a sweep; returns its table and the wall time of this call."""
    t0 = time.perf_counter()
    table = sweep(out, grid, progress=False)
    return table, time.perf_counter() - t0


def g(v, f=".4g"):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)


def interval(fit, f="+.4f"):
    return f"{fit['exponent']:{f}} [{fit['low']:{f}}, {fit['high']:{f}}]"


def laws(table):
    """The fitted laws in flow time, each beside its leading-order prediction."""
    fits = scaling.fits(table).set_index(["kappa_c", "quantity"])
    neg = table[(table["kappa_c"] == 0.6) & (table["status"] == "done")].sort_values("P")
    span = f"P = 10^{round(math.log10(table['P'].min()))} … 10^{round(math.log10(table['P'].max()))}"

    def cell(kc, q):
        r = fits.loc[(kc, q)]
        if r["n"] < 3:
            return "– (no phase I: one phase)" if q.endswith(("switch_tau", "_at_switch")) else "–"
        per = " per unit of ln P" if r["law"] == "log" else ""
        return f"{interval(r)}{per}, n = {r['n']}, r2 = {r['r2']:.3f}"

    # Delta < 0: the global FP correlation of a local query stays small and shrinks like P^Delta
    depth_neg = scaling.fit_power(neg["P"], -neg["local_fp_global_min"].astype(float))
    rows = [
        ("R(0), power law", cell(0.9, "local_grad_ratio0"), cell(0.6, "local_grad_ratio0"),
         "P^Δ: +0.5 and −0.1"),
        ("phase switch τ of a local query, power law", cell(0.9, "local_switch_tau"),
         cell(0.6, "local_switch_tau"), "P^(1−κ_s) = P^0.7, at τ = (1 − 1/R(0)) / (2 g_own(0))"),
        ("A_global of a local query at the switch, log law", cell(0.9, "local_fp_global_at_switch"),
         cell(0.6, "local_fp_global_at_switch"), "−½ ln R(0): slope −Δ/2 = −0.25"),
        ("A_own of a local query at the switch, log law", cell(0.9, "local_fp_own_at_switch"),
         cell(0.6, "local_fp_own_at_switch"), "½ (1 − 1/R(0)) → ½: slope 0"),
        ("lowest A_global of a local query up to T_ε (still falling there), log law",
         cell(0.9, "local_fp_global_min"),
         (f"{cell(0.6, 'local_fp_global_min')}; as a power law of \\|A_global\\|: "
         f"{interval(depth_neg)}"), "Δ > 0: −½ ln R(0) − ½ ln 3 (slope −0.25); Δ < 0: ∝ P^Δ"),
        ("T_ε of a local query, power law", cell(0.9, "local_T_eps_tau"),
         cell(0.6, "local_T_eps_tau"), "P^(1−κ_s) = P^0.7"),
        ("T_ε of a global query, power law", cell(0.9, "global_T_eps_tau"),
         cell(0.6, "global_T_eps_tau"), "a constant plus a part ∝ P^(1−κ_c) (below)"),
    ]
    out = [(f"| quantity ({span}, flow time τ) | Δ = +0.5 (κ_c = 0.9) | Δ = −0.1 (κ_c = 0.6) "
           "| leading order (docs/theorem.md) |"), "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


def observables(table, out):
    """Per P: the phase-I observables of a Delta > 0 local query, with their leading order."""
    rows = table[(table["kappa_c"] == 0.9) & (table["status"] == "done")].sort_values("P")
    lines = [("| P | R(0) | τ_switch | (1 − 1/R(0)) / (2 g_own(0)) | A_global at switch | "
             "−½ ln R(0) | A_own at switch | local T_ε | A_global at T_ε | global T_ε |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        result = io.load(out / r.file)
        g_own = abs(float(result.fp_grad(0, 1, "own")[0]))
        ratio = r.local_grad_ratio0
        lines.append(f"| 10^{round(math.log10(r.P))} | {g(ratio)} | {g(r.local_switch_tau)} | "
                     f"{g((1 - 1 / ratio) / (2 * g_own))} | {g(r.local_fp_global_at_switch)} | "
                     f"{g(-0.5 * math.log(ratio))} | {g(r.local_fp_own_at_switch)} | "
                     f"{g(r.local_T_eps_tau)} | {g(r.local_fp_global_min)} | "
                     f"{g(r.global_T_eps_tau)} |")
    return "\n".join(lines)


def global_t_eps(table):
    """T_eps of the global query: a + b P^c by nonlinear least squares, 95 % intervals."""
    from scipy.optimize import curve_fit
    from scipy.stats import t

    lines = ["| | a | b | c [95 % interval] | 1 − κ_c | largest relative residual |",
             "|---|---|---|---|---|---|"]
    for kc in (0.9, 0.6):
        rows = table[(table["kappa_c"] == kc) & (table["status"] == "done")]
        x = np.log10(rows["P"].to_numpy(float))
        T = rows["global_T_eps_tau"].to_numpy(float)
        # relative residuals: T_eps spans five decades for kappa_c = 0.6
        (a, b, c), cov = curve_fit(lambda x, a, b, c: a + b * 10 ** (c * x), x, T,
                                   p0=(500, 4, 1 - kc), sigma=T, maxfev=20000)
        half = t.ppf(0.975, len(x) - 3) * np.sqrt(np.diag(cov))
        resid = np.max(np.abs(a + b * 10 ** (c * x) - T) / T)
        lines.append(f"| κ_c = {kc} (n = {len(x)}) | {a:.4g} ± {half[0]:.2g} | "
                     f"{b:.4g} ± {half[1]:.2g} | **{c:.4f}** [{c - half[2]:.4f}, "
                     f"{c + half[2]:.4f}] | {1 - kc:.1f} | {resid:.2%} |")
    return "\n".join(lines)


def phase_counts(table):
    lines = []
    for P, (agree, n, unknown) in scaling.boundary_agreement(table).items():
        extra = f" ({unknown} never switched)" if unknown else ""
        lines.append(f"- P = 10^{round(math.log10(P))}: {agree} of {n} runs with |Δ| ≥ 0.05 "
                     f"have two phases exactly when Δ > 0{extra}")
    on = table[(table["delta"].abs() < 1e-12) & (table["status"] == "done")]
    lines.append(f"- on Δ = 0: phases {sorted(set(on['local_phases'].dropna().astype(int)))} "
                 f"in {len(on)} runs")
    return "\n".join(lines)


def boundary_block(table):
    crit = scaling.critical_gap(table)
    lines = ["| P | one phase up to Δ | two phases from Δ | R(0) = 1 at Δ_c | Δ_c · log10 P |",
             "|---|---|---|---|---|"]
    for r in crit.itertuples():
        lines.append(f"| 10^{round(math.log10(r.P))} | {r.one_phase_max:+.4f} | "
                     f"{r.two_phase_min:+.4f} | {g(r.delta_c, '+.4f')} | "
                     f"{g(r.delta_c * math.log10(r.P), '.4f')} |")
    done = table[table["status"] == "done"]
    agree = ((done["local_phases"] == 2) == (done["local_grad_ratio0"] > 1)).sum()
    lines.append("")
    lines.append(f"In {agree} of {len(done)} runs of this line a local query has two phases "
                 "exactly when R(0) > 1.")
    return "\n".join(lines)


def costs(tables):
    """Per sweep: tasks, the sum and the largest of the task wall times (as recorded in the
    table, so a re-run that finds every task done rewrites the same block), evaluations."""
    lines = [("| sweep | tasks | sum of task wall times | slowest task | gradient evaluations "
             "per run |"), "|---|---|---|---|---|"]
    for name, t in tables.items():
        slow = t.loc[t["wall_s"].idxmax()]
        lines.append(f"| {name} | {len(t)} | {t['wall_s'].sum():.0f} s | {slow['wall_s']:.2f} s "
                     f"(P = {slow['P']:.0e}, κ_c = {slow['kappa_c']:g}, "
                     f"κ_s = {slow['kappa_s']:g}) | "
                     f"{int(t['evaluations'].min())} … {int(t['evaluations'].max())} |")
    err = max(float(t["error_estimate"].max()) for t in tables.values())
    lines.append("")
    lines.append(f"Largest quadrature error estimate of any task: {err:.2g} (tolerance 1e-13).")
    return "\n".join(lines)


def pp(table):
    """max|PP| / max|FP| over the run, per P (the larger of the two regimes)."""
    rows = table[table["status"] == "done"].groupby("P")["pp_fp_ratio"].max()
    return ("max|PP| / max|FP| (the larger of the two regimes): "
            + ", ".join(f"{v:.2g} at 10^{round(math.log10(P))}" for P, v in rows.items()) + ".")


def replace(text, name, content):
    pattern = re.compile(rf"(<!-- scaling_flow: {name} -->\n).*?(<!-- /scaling_flow -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"docs/scaling.md has no block {name!r}")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def main(runs="runs"):
    runs = Path(runs)
    tables, timings = {}, {}
    for name, grid in (("paper-scaling-flow", preset("paper-scaling-flow")),
                       ("paper-phases-flow", preset("paper-phases-flow")),
                       ("boundary-flow", BOUNDARY)):
        tables[name], timings[name] = run(runs / name, grid)
        failed = int((tables[name]["status"] != "done").sum())
        if failed:
            raise SystemExit(f"{name}: {failed} tasks failed")
    scaling_table = tables["paper-scaling-flow"]
    text = DOC.read_text()
    blocks = {"costs": costs(tables), "laws": laws(scaling_table),
              "observables": observables(scaling_table, runs / "paper-scaling-flow"),
              "global": global_t_eps(scaling_table), "pp": pp(scaling_table),
              "phases": phase_counts(tables["paper-phases-flow"]),
              "boundary": boundary_block(tables["boundary-flow"])}
    for name, content in blocks.items():
        text = replace(text, name, content)
    DOC.write_text(text)
    for name, fig in (("scaling.png", scaling.scaling_figure(scaling_table)),
                      ("phases.png", scaling.phase_figure(tables["paper-phases-flow"])),
                      ("boundary.png", scaling.gap_figure(tables["boundary-flow"]))):
        fig.savefig(FIGURES / name, dpi=110)
    for name, content in blocks.items():
        print(f"## {name}\n{content}\n")
    print("wall time of each sweep (this call): " + ", ".join(
        f"{name} {wall:.0f} s" for name, wall in timings.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
