"""Monte Carlo explicit transformer against mimfast's exact gradient (not an asv benchmark).

For the paper's setting at a few P (K = 1, exact PP), the explicit torch model
(:class:`mimfast.reference.explicit.ExplicitModel`, ``learn_pp=True``) averages its loss
over S uniformly drawn masks. This script measures

1. the wall time of one explicit GD step (one gradient) with S masks, S = 1, 4, 16, ...
   as far as a time budget per P allows;
2. the relative error ||grad_MC - grad_exact||_F / ||grad_exact||_F of that gradient, at
   Q = 0 and at a non-zero state reached by a few exact GD steps, where grad_exact is
   mimfast's reduced gradient written out as the dense d x d matrix;
3. a fit err = c S^(-1/2), the number of masks that brings the error to 1e-3 and the
   implied time of one such step, next to the time of one exact mimfast step (cpp).

Before measuring, it checks the reduced-to-dense mapping at P = 10 against the explicit
model with every mask enumerated (must agree to 1e-12, relative).

Run from the repository root (needs torch)::

    python benchmarks/mc_comparison.py                 # P = 256 and 1024, 2-4 min on 2 cores
    python benchmarks/mc_comparison.py --out docs/mc_comparison.md   # regenerate the page
    python benchmarks/mc_comparison.py --P 256 --budget 30

asv imports every module of this folder while discovering benchmarks: torch is imported
only inside the functions, and nothing here is named like an asv benchmark.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time

import numpy as np

import mimfast as mf
from mimfast.backends import get_kernel
from mimfast.grid import build_grids
from mimfast.model import evaluate

KAPPA_C, KAPPA_S = 0.9, 0.3
ETA, WARM_STEPS = 10.0, 5  # the non-zero state: 5 exact GD steps with eta = 10 from Q = 0
TARGET = 1e-3
SEED = 0


def layout(setting):
    """Contiguous explicit layout of a K = 1 setting's areas, group by group.

    Returns
    -------
    labels : numpy.ndarray of int, shape (P,)
        Area of every position.
    z : numpy.ndarray, shape (n_areas,)
        Latent of every area.
    area_group : numpy.ndarray of int, shape (n_areas,)
        Group of every area.
    """
    labels, z, area_group = [], [], []
    for g, group in enumerate(setting.clusters[0].groups):
        for _ in range(group.areas):
            labels.extend([len(z)] * group.size)
            z.append(group.z)
            area_group.append(g)
    return np.array(labels), np.array(z), np.array(area_group)


def explicit_model(setting, masks, seed=SEED):
    """The explicit model of ``setting`` with this layout (learned PP)."""
    from mimfast.reference.explicit import ExplicitModel

    labels, z, _ = layout(setting)
    return ExplicitModel([labels], [z], setting.masked, learn_pp=True, masks=masks, seed=seed)


def fp_categories(setting):
    """``cat[p, n]``: column of ``State.fp[0][h]`` of position p's entry for area n's feature
    (0 = own area, 1 + g = another area of group g), and ``group[p]`` = h."""
    labels, _, area_group = layout(setting)
    group = area_group[labels]
    own = labels[:, None] == np.arange(len(area_group))[None, :]
    return np.where(own, 0, 1 + area_group[None, :]), group


def pp_categories(setting):
    """``col[p, q]``: column of ``State.pp[h]`` of the entry (p, q) (0 = self, 1 = own area,
    2 + g = another area of group g)."""
    labels, _, area_group = layout(setting)
    same_area = labels[:, None] == labels[None, :]
    col = np.where(same_area, 1, 2 + area_group[labels][None, :])
    np.fill_diagonal(col, 0)
    return col


def dense(setting, fp, pp):
    """Write reduced FP/PP values (state or gradient, per area and per key position) as the
    dense d x d matrix of the explicit model (rows of positions; other rows are 0)."""
    P = setting.P
    cat, group = fp_categories(setting)
    n_areas = cat.shape[1]
    out = np.zeros((P + n_areas, P + n_areas))
    out[:P, P:] = fp[0][group[:, None], cat]
    if pp is not None:
        out[:P, :P] = pp[group[:, None], pp_categories(setting)]
    return out


def exact_dense_gradient(setting, state):
    """mimfast's exact gradient at ``state`` as a dense matrix (cpp backend)."""
    g = mf.gradient(setting, state, backend="cpp")
    return dense(setting, g.fp, g.pp)


def rel_error(approx, exact):
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def check_mapping():
    """The dense exact gradient equals the explicit one over all masks, at P = 10 (Q = 0 and
    after a few steps), for the paper's sizes and for a setting with several local areas."""
    settings = [
        mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2)])], gamma=0.5),
        mf.Setting([mf.Cluster([mf.Group(1, 4, z=1.3), mf.Group(2, 3, z=0.7)])], masked=4),
        mf.Setting.paper(10, KAPPA_C, KAPPA_S),
    ]
    worst = 0.0
    for s in settings:
        model = explicit_model(s, "all")
        for steps in (0, 3):
            state = mf.simulate(s, eta=2.0, steps=steps, backend="cpp").state
            model.Q = dense(s, state.fp, state.pp)
            err = rel_error(model.gradient().numpy(), exact_dense_gradient(s, state))
            assert err < 1e-12, f"reduced-to-dense mapping is off: {err:.3g} at {s!r}"
            worst = max(worst, err)
    return worst


def exact_step_time(setting, repeat=20):
    """Best time of one exact gradient on prebuilt grids (cpp; one simulate step), and the
    time to build the grids once."""
    t0 = time.perf_counter()
    grids = build_grids(setting)
    t_grid = time.perf_counter() - t0
    kernel = get_kernel("cpp")
    state = mf.State.zeros(setting)
    evaluate(setting, grids, state, kernel)
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        evaluate(setting, grids, state, kernel)
        best = min(best, time.perf_counter() - t0)
    return best, t_grid


def study(P, budget):
    """Timings and errors at one P; stops raising S when the next S would pass ``budget`` s."""
    import torch  # noqa: F401  (fail early with a clear error when torch is missing)

    s = mf.Setting.paper(P, KAPPA_C, KAPPA_S)
    states = {
        "Q=0": mf.State.zeros(s),
        f"{WARM_STEPS} steps": mf.simulate(s, eta=ETA, steps=WARM_STEPS, backend="cpp").state,
    }
    exact = {name: exact_dense_gradient(s, st) for name, st in states.items()}
    Qs = {name: dense(s, st.fp, st.pp) for name, st in states.items()}
    rows = []
    start = time.perf_counter()
    S = 1
    while True:
        t0 = time.perf_counter()
        model = explicit_model(s, S)
        row = {"S": S}
        for i, name in enumerate(states):
            model.Q = Qs[name]
            best, spent, reps = math.inf, 0.0, 0
            # time the first state's gradient: best of up to 3 while that takes under 1 s
            while reps == 0 or (i == 0 and reps < 3 and spent < 1.0):
                t1 = time.perf_counter()
                grad = model.gradient().numpy()
                took = time.perf_counter() - t1
                best, spent, reps = min(best, took), spent + took, reps + 1
            if i == 0:
                row["time"] = best
            row[name] = rel_error(grad, exact[name])
        rows.append(row)
        cost = time.perf_counter() - t0
        print(
            f"  P={P} S={S:5d}  step {row['time']:8.3f} s  "
            + "  ".join(f"err({n}) {row[n]:.3e}" for n in states),
            flush=True,
        )
        if time.perf_counter() - start + 4 * cost > budget:
            break
        S *= 4
    t_exact, t_grid = exact_step_time(s)
    return s, list(states), rows, t_exact, t_grid


def fit(rows, names):
    """Per state: c of err = c S^(-1/2) (least squares in log space), the free log-log slope
    and the masks that bring the error to 1e-3; and the explicit time per mask, the median of
    time / S over the rows with S >= 4 (robust to a busy machine)."""
    S = np.array([r["S"] for r in rows], dtype=float)
    out = {}
    for name in names:
        err = np.array([r[name] for r in rows])
        c = float(np.exp(np.mean(np.log(err) + 0.5 * np.log(S))))
        slope = float(np.polyfit(np.log(S), np.log(err), 1)[0]) if len(S) > 1 else math.nan
        out[name] = (c, slope, (c / TARGET) ** 2)
    t = np.array([r["time"] for r in rows])
    use = S >= 4 if np.any(S >= 4) else S > 0
    return out, float(np.median(t[use] / S[use]))


def fmt_time(seconds):
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 3600:
        return f"{seconds:.2f} s"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


INTRO = """\
# Monte Carlo explicit model against the exact gradient

How many sampled masks does the explicit transformer (docs/model.md §7,
`mimfast.reference.explicit.ExplicitModel`, dense float64 `Q`, autograd, `learn_pp=True`)
need before its gradient is as good as mimfast's exact one, and what does that cost?

Setting: `mf.Setting.paper(P, 0.9, 0.3)` (gamma = 0.5, K = 1, z = 1, exact PP). With S
masks drawn uniformly (`masks=S`, seed 0; the masks of a larger S extend those of a
smaller one), the explicit gradient is compared with mimfast's exact gradient (cpp
backend) written out as the dense d x d matrix: for position p of group h and area n, the FP
entry e_p^T grad v_n is `gradient.fp[0][h, 0]` for p's own area and `gradient.fp[0][h, 1 + g]`
for an area of group g; the PP entry e_p^T grad e_q is `gradient.pp[h, 0]` for q = p,
`[h, 1]` for q in p's area and `[h, 2 + g]` for q in an area of group g. The error is
||grad_MC - grad_exact||_F / ||grad_exact||_F, at Q = 0 and at the state after a few exact
GD steps (the same reduced state written into the explicit Q). The mapping is checked first
at P = 10 with every mask enumerated, where both must agree to 1e-12.

"Explicit step" is the wall time of one `ExplicitModel.gradient()` with S masks (best of up
to 3 when under a second); "exact step" is one `mimfast.model.evaluate` on prebuilt grids
(what each step of `mf.simulate` costs; building the grids is a one-off). Timings on a
shared machine are noisy; the error columns are deterministic.

Regenerate this page with the command below (2 to 4 minutes on 2 cores).
"""


def report(results, worst, command, total):
    import torch

    lines = [
        INTRO,
        "## Run",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        (
            f"- machine: {platform.machine()} {platform.system()}, {os.cpu_count()} cores "
            f"(shared with other jobs), torch {torch.__version__} on {torch.get_num_threads()} "
            f"threads, mimfast {mf.__version__} (cpp backend on all cores)"
        ),
        f"- command: `{command}` (ran {total:.0f} s)",
        (
            "- mapping check at P = 10, all masks enumerated: largest relative difference "
            f"{worst:.1e} (must be < 1e-12)"
        ),
        "",
    ]
    summary = []
    for s, names, rows, t_exact, t_grid in results:
        groups = s.clusters[0].groups
        d = s.P + sum(g.areas for g in groups)
        lines += [
            f"## P = {s.P}",
            "",
            (
                f"Global area {groups[0].size}, {groups[1].areas} local areas of "
                f"{groups[1].size}, m = {s.masked} masked, explicit Q of {d} x {d}. "
                f"Non-zero state: {WARM_STEPS} exact steps with eta = {ETA}."
            ),
            "",
            "| S masks | explicit step | rel. error, " + " | rel. error, ".join(names) + " |",
            "|---:|---:|" + "---:|" * len(names),
        ]
        for r in rows:
            lines.append(
                f"| {r['S']} | {fmt_time(r['time'])} | "
                + " | ".join(f"{r[n]:.3e}" for n in names)
                + " |"
            )
        fits, per_mask = fit(rows, names)
        lines += [
            "",
            (
                f"Explicit time per mask: {fmt_time(per_mask)} (median of step / S, S >= 4). "
                f"Exact mimfast step (cpp, grids prebuilt): {fmt_time(t_exact)}; its grids "
                f"are built once in {fmt_time(t_grid)}."
            ),
            "",
            (
                "| state | c in err = c S^-1/2 | free log-log slope | masks for 1e-3 "
                "| explicit step with them | explicit / exact step |"
            ),
            "|---|---:|---:|---:|---:|---:|",
        ]
        for n in names:
            c, slope, need = fits[n]
            t_need = per_mask * need
            lines.append(
                f"| {n} | {c:.3f} | {slope:.2f} | {need:.2e} | {fmt_time(t_need)} "
                f"| {t_need / t_exact:.1e} |"
            )
            summary.append((s.P, n, need, t_need, t_exact))
        lines.append("")
    P_ = sorted({x[0] for x in summary})
    need_lo, need_hi = min(x[2] for x in summary), max(x[2] for x in summary)
    c_lo, c_hi = (f(math.sqrt(x[2]) * TARGET for x in summary) for f in (min, max))
    lines += [
        "## Reading",
        "",
        (
            f"The Monte Carlo error falls as c S^-1/2 with c = {c_lo:.2f} to {c_hi:.2f}: a "
            "single mask gives a gradient about as far from the exact one as the exact one "
            f"is long. A 1e-3 relative error needs {need_lo:.1e} to {need_hi:.1e} masks at "
            f"P = {', '.join(map(str, P_))}, i.e. "
            + "; ".join(
                f"{fmt_time(t_need)} per explicit step at P = {P} ({n}) against "
                f"{fmt_time(t_exact)} per exact step"
                for P, n, _, t_need, t_exact in summary
            )
            + ". The explicit cost per mask grows like P d^2 (dense d x d products); "
            "mimfast's step has no sampling error (its grid leaves out at most 1e-15 of "
            "probability) and costs what its count grid costs."
        ),
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--P", type=int, nargs="+", default=[256, 1024])
    parser.add_argument(
        "--budget",
        type=float,
        default=90.0,
        help="seconds of explicit gradients per P (default 90); S grows 4x while it fits",
    )
    parser.add_argument("--out", help="also write the Markdown page to this file")
    args = parser.parse_args(argv)
    command = (
        "python benchmarks/mc_comparison.py"
        + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    )
    t0 = time.perf_counter()
    worst = check_mapping()
    print(f"mapping check at P = 10: worst relative difference {worst:.1e}", flush=True)
    results = [study(P, args.budget) for P in args.P]
    text = report(results, worst, command, time.perf_counter() - t0)
    print()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
