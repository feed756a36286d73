"""How a sweep's measurements scale with P, and the measured phase diagram (docs/scaling.md).

Works on the results table of :func:`mimfast.sweeps.sweep`. :func:`fits` fits, per *regime*
(all task parameters but P; GD and gradient-flow tasks are never one regime) and per
quantity, a power law y ≈ c · P^b (least squares on log y against log P) or, for the FP
correlations, which grow like a logarithm of P, a log law y ≈ a + b ln P, each with a
t-interval for b: the phase-switch time of a local query, T_eps of each class (in flow time
τ, and for GD also in steps), R(0), the global and own FP correlations of a local query at
its switch, its lowest global FP correlation, and the final loss gap of each class
(docs/model.md §5). :func:`phases` and :func:`boundary` give the measured number of learning
phases of a local query over the (κ_c, κ_s) plane, to compare with the sign of the
information gap Δ = (1 − κ_s) − 2(1 − κ_c) (docs/model.md §4).
"""

from __future__ import annotations

import math

import numpy as np

from ._extras import require

__all__ = ["QUANTITIES", "REGIME", "boundary", "boundary_agreement", "critical_gap",
           "fit_power", "fits", "gap_figure", "phase_figure", "phases", "report", "save_figures",
           "scaling_figure"]

# the task parameters that, with P, define a run: a regime is one value of all but P
REGIME = ("kappa_c", "kappa_s", "gamma", "K", "z", "overlap", "pp", "flow", "tau", "flow_rtol", "eta",
          "eta_rule", "steps", "until", "record_every", "method", "rtol", "backend", "epsilon",
          "tail_tol")

# times shorter than this many GD steps are not resolved by the steps and stay out of fits
MIN_STEPS = 10

# quantity -> (table column, description, law, the column of its time in GD steps): law
# "power" fits y = c P^b, "log" fits y = a + b ln P. A quantity with a step column is left out
# of a GD fit where that time is under min_steps; "steps" quantities are GD's only (the
# accepted steps of a flow run are not a time).
QUANTITIES = {
    "local_switch": ("local_switch", "phase switch of a local query (GD steps)", "power",
                     "local_switch"),
    "local_switch_tau": ("local_switch_tau", "phase switch of a local query (flow time)",
                         "power", "local_switch"),
    "local_T_eps": ("local_T_eps", "T_eps of a local query (GD steps)", "power",
                    "local_T_eps"),
    "local_T_eps_tau": ("local_T_eps_tau", "T_eps of a local query (flow time)", "power",
                        "local_T_eps"),
    "global_T_eps": ("global_T_eps", "T_eps of a global query (GD steps)", "power",
                     "global_T_eps"),
    "global_T_eps_tau": ("global_T_eps_tau", "T_eps of a global query (flow time)", "power",
                         "global_T_eps"),
    "local_fp_global_at_switch": ("local_fp_global_at_switch",
                                  "A_global of a local query at its switch", "log", None),
    "local_fp_own_at_switch": ("local_fp_own_at_switch",
                               "A_own of a local query at its switch", "log", None),
    "local_fp_global_min": ("local_fp_global_min",
                            "lowest A_global of a local query in the run", "log", None),
    "local_grad_ratio0": ("local_grad_ratio0",
                          "R(0) = |dL/dA_global| / |dL/dA_own| of a local query at Q = 0",
                          "power", None),
    "local_loss_gap": ("local_loss_gap", "final loss gap of a local query", "power", None),
    "global_loss_gap": ("global_loss_gap", "final loss gap of a global query", "power", None),
}


def fit_log(P, y, level=0.95):
    """Least-squares fit of y = a + b ln P: the law of a quantity that grows like a logarithm
    of P (an FP correlation). Returns ``exponent`` b (the slope per unit of ln P), ``low``,
    ``high``, ``prefactor`` a, ``n`` and ``r2``, as :func:`fit_power` (whose log-log fit it
    is on y itself)."""
    v = np.asarray(y, dtype=float)
    if not np.all(np.isfinite(v)):
        raise ValueError("fit_log needs finite values")
    out = _fit_line(np.log(np.asarray(P, dtype=float)), v, level)
    out["prefactor"] = out.pop("intercept")
    return out


def fit_power(P, y, level=0.95):
    """Least-squares fit of log10 y = a + b log10 P.

    Parameters
    ----------
    P, y : array_like
        Positive values, at least two distinct P.
    level : float
        Confidence level of the interval of b (Student t with n - 2 degrees of freedom).

    Returns
    -------
    dict
        ``exponent`` b, its interval ``low`` and ``high`` (NaN for two points),
        ``prefactor`` 10^a, ``n``, and ``r2``.
    """
    v = np.asarray(y, dtype=float)
    if np.any(v <= 0) or not np.all(np.isfinite(v)):
        raise ValueError("fit_power needs positive, finite values")
    out = _fit_line(np.log10(np.asarray(P, dtype=float)), np.log10(v), level)
    out["prefactor"] = float(10 ** out.pop("intercept"))
    return out


def _fit_line(x, y, level):
    """Least squares y = intercept + exponent x, with the Student-t interval of the slope."""
    if len(np.unique(x)) < 2:
        raise ValueError("a fit needs at least two distinct P")
    n = len(x)
    with np.errstate(over="ignore", invalid="ignore"):  # values of a diverged run: inf, nan
        (b, a), res, *_ = np.polyfit(x, y, 1, full=True)
        sxx = float(np.sum((x - x.mean()) ** 2))
        sse = float(res[0]) if len(res) else 0.0
        sst = float(np.sum((y - y.mean()) ** 2))
    low = high = math.nan
    if n > 2:
        t = require("scipy.stats", "confidence intervals of the fits", "sweep").t

        half = t.ppf(0.5 + level / 2, n - 2) * math.sqrt(sse / (n - 2) / sxx)
        low, high = b - half, b + half
    return {"exponent": float(b), "low": float(low), "high": float(high),
            "intercept": float(a), "n": n, "r2": 1 - sse / sst if sst > 0 else 1.0}


def _regimes(table):
    done = table[table["status"] == "done"]
    keys = [k for k in REGIME if k in done.columns]
    for values, rows in done.groupby(keys, dropna=False, sort=False):
        yield dict(zip(keys, values)), rows.sort_values("P")


def _is_flow(regime):
    """Whether a regime's tasks integrate the gradient flow (not GD)."""
    flow = regime.get("flow", False)
    return flow is not None and not _missing(flow) and bool(flow)


def _missing(value):
    return bool(require("pandas", "the fits of a sweep", "sweep").isna(value))


def _label(regime):
    delta = (1 - regime["kappa_s"]) - 2 * (1 - regime["kappa_c"])
    rule = "flow" if _is_flow(regime) else "GD"
    overlap = regime.get("overlap")
    clusters = ("" if overlap is None or _missing(overlap)
                else f" K={regime['K']} overlap={overlap:g}")
    return (f"kappa_c={regime['kappa_c']:g} kappa_s={regime['kappa_s']:g} (Delta={delta:+.2f})"
            f"{clusters}, " + rule)


def fits(table, level=0.95, quantities=None, min_steps=MIN_STEPS):
    """Power-law fits against P of each quantity, per regime.

    Regimes with fewer than three values of P are not fitted. A point enters a fit when its
    task is done and the quantity is positive: a phase switch
    of 0 (one phase) or a T_eps that was not reached is left out. So is a time (phase switch,
    T_eps) of fewer than ``min_steps`` steps, which the steps do not resolve: with a large
    learning rate a whole phase can fit in one step. The ``note`` column says how many
    points were left out and why.

    Parameters
    ----------
    table : pandas.DataFrame
        A sweep results table (:func:`mimfast.sweeps.read_table`).
    level : float
        Confidence level of the exponent intervals.
    quantities : list of str, optional
        Keys of :data:`QUANTITIES` (default all).
    min_steps : int
        Shortest time, in steps, that enters a fit.

    Returns
    -------
    pandas.DataFrame
        One row per (regime, quantity) with ``regime``, ``kappa_c``, ``kappa_s``, ``delta``,
        ``quantity``, ``description``, ``n``, ``P_min``, ``P_max``, ``exponent``, ``low``,
        ``high``, ``prefactor``, ``r2`` and ``note``.
    """
    pd = require("pandas", "the fits of a sweep", "sweep")

    out = []
    for regime, rows in _regimes(table):
        if rows["P"].nunique() < 3:  # too few for an interval
            continue
        flow = _is_flow(regime)
        for name in quantities or QUANTITIES:
            column, text, law, step_column = QUANTITIES[name]
            if flow and column == step_column:  # a flow run's accepted steps are no time
                continue
            y = rows[column].astype("float64").to_numpy()
            short = np.zeros(len(y), dtype=bool)
            if step_column is not None and not flow:
                steps = rows[step_column].astype("float64").to_numpy()
                short = (steps < min_steps) & (steps > 0)
            ok = np.isfinite(y) & ~short & ((y > 0) if law == "power" else True)
            if name.endswith("_at_switch"):  # a switch at Q = 0 has no phase I to measure
                ok &= rows["local_switch_tau"].astype("float64").to_numpy() > 0
            P = rows["P"].to_numpy(dtype=float)[ok]
            row = {"regime": _label(regime), "kappa_c": regime["kappa_c"],
                   "kappa_s": regime["kappa_s"],
                   "delta": (1 - regime["kappa_s"]) - 2 * (1 - regime["kappa_c"]),
                   "quantity": name, "description": text, "law": law, "n": int(ok.sum()),
                   "P_min": P.min() if len(P) else math.nan,
                   "P_max": P.max() if len(P) else math.nan}
            notes = [f"{int(short.sum())} under {min_steps} steps"] if short.any() else []
            left = len(y) - int(ok.sum()) - int(short.sum())
            notes += [f"{left} zero or not reached"] if left else []
            notes = [f"left out of {len(y)}: " + ", ".join(notes)] if notes else []
            if name == "local_fp_global_min" and "local_fp_global_falling" in rows:
                falling = int(rows["local_fp_global_falling"].astype("boolean")
                              .fillna(False).to_numpy(dtype=bool)[ok].sum())
                notes += [f"{falling} still falling at the end (no minimum yet)"] if falling else []
            row["note"] = "; ".join(notes)
            if len(np.unique(P)) >= 2:
                row.update((fit_power if law == "power" else fit_log)(P, y[ok], level))
            out.append(row)
    cols = ["regime", "kappa_c", "kappa_s", "delta", "quantity", "description", "law", "n",
            "P_min", "P_max", "exponent", "low", "high", "prefactor", "r2", "note"]
    return pd.DataFrame(out, columns=cols)


def _trusted(table):
    """Rows whose phase verdict is trusted (their steps followed the gradient flow)."""
    if "trusted" not in table:
        return np.ones(len(table), dtype=bool)
    return table["trusted"].astype("boolean").fillna(True).to_numpy(dtype=bool)


def phases(table):
    """The measured phases of a local query per task: P, κ_c, κ_s, Δ, ``switch_tau`` (its
    switch in flow time) and ``phases``
    (1: own feature leads from the start, 2: after a switch that followed the decoupling of
    its global FP correlation, NA: never in the run); tasks whose phase verdict is untrusted
    (column ``trusted``: GD steps too large to follow the flow) are left out."""
    done = table[(table["status"] == "done") & _trusted(table)]
    out = done[["P", "kappa_c", "kappa_s", "delta", "local_phases", "local_switch_tau"]]
    return out.rename(columns={"local_phases": "phases",
                               "local_switch_tau": "switch_tau"}).reset_index(drop=True)


def boundary_agreement(table, margin=0.05):
    """How often the measured phases agree with the sign of Δ, away from Δ = 0.

    Parameters
    ----------
    table : pandas.DataFrame
    margin : float
        Only tasks with |Δ| >= margin count.

    Returns
    -------
    dict
        P -> (agreeing, compared, unknown): tasks whose phases are 2 iff Δ > 0, tasks
        compared, and tasks whose switch was never reached (not compared).
    """
    ph = phases(table)
    ph = ph[ph["delta"].abs() >= margin]
    out = {}
    for P, rows in ph.groupby("P"):
        known = rows[rows["phases"].notna()]
        agree = int(((known["phases"] == 2) == (known["delta"] > 0)).sum())
        out[int(P)] = (agree, len(known), len(rows) - len(known))
    return out


def _bracket(x, phases):
    """The largest x of a one-phase run and the smallest x of a two-phase run (NaN: none)."""
    one, two = x[phases == 1], x[phases == 2]
    return (one.max() if len(one) else math.nan), (two.min() if len(two) else math.nan)


def boundary(table, P):
    """The measured phase boundary at one P: per κ_s, the κ_c between the largest one-phase
    and the smallest two-phase κ_c (NaN where the measurement does not bracket it).

    Returns
    -------
    pandas.DataFrame
        ``kappa_s``, ``one_phase_max``, ``two_phase_min``, ``kappa_c`` (their midpoint), and
        ``theory`` (Δ = 0: κ_c = (1 + κ_s) / 2).
    """
    pd = require("pandas", "the fits of a sweep", "sweep")

    ph = phases(table)
    ph = ph[(ph["P"] == P) & ph["phases"].notna()]
    rows = []
    for ks, g in ph.groupby("kappa_s"):
        lo, hi = _bracket(g["kappa_c"], g["phases"])
        mid = (lo + hi) / 2 if lo < hi else math.nan
        rows.append({"kappa_s": ks, "one_phase_max": lo, "two_phase_min": hi, "kappa_c": mid,
                     "theory": (1 + ks) / 2})
    return pd.DataFrame(rows, columns=["kappa_s", "one_phase_max", "two_phase_min", "kappa_c",
                                       "theory"])


def critical_gap(table):
    """Where the measured phases change along Δ, per P: the largest Δ of a one-phase run and
    the smallest Δ of a two-phase run (Δ from the actual sizes, docs/model.md §4).

    The theorem puts the change at Δ = 0 as P grows; at finite P it sits where the measured
    runs bracket it. Within the bracket, ``delta_c`` places it where the initial gradient
    ratio of a local query (column ``local_grad_ratio0``) crosses 1, interpolating log ratio
    linearly in Δ between the two bracketing runs: in every run measured (docs/scaling.md) a
    local query has two phases exactly when its global-decoupling gradient leads at Q = 0.

    Returns
    -------
    pandas.DataFrame
        ``P``, ``one_phase_max``, ``two_phase_min``, ``ordered`` (every one-phase run has a
        smaller Δ than every two-phase run) and ``delta_c`` (NaN where not bracketed, not
        ordered, or the ratios of the bracketing runs do not straddle 1).
    """
    pd = require("pandas", "the fits of a sweep", "sweep")

    done = table[(table["status"] == "done") & table["local_phases"].notna()
                 & _trusted(table)]
    rows = []
    for P, g in done.groupby("P"):
        lo, hi = _bracket(g["delta_actual"], g["local_phases"])
        ordered = bool(not lo >= hi)
        rows.append({"P": int(P), "one_phase_max": lo, "two_phase_min": hi, "ordered": ordered,
                     "delta_c": _crossing(g, lo, hi) if ordered else math.nan})
    return pd.DataFrame(rows, columns=["P", "one_phase_max", "two_phase_min", "ordered",
                                       "delta_c"])


def _crossing(rows, lo, hi):
    """Δ in [lo, hi] where the initial gradient ratio crosses 1 (log-linear), else NaN."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return math.nan
    ratio = rows["local_grad_ratio0"].astype("float64")
    r_lo = ratio[rows["delta_actual"] == lo].max()
    r_hi = ratio[rows["delta_actual"] == hi].min()
    if not (0 < r_lo <= 1 < r_hi):
        return math.nan
    a, b = math.log(r_lo), math.log(r_hi)
    return float(lo + (hi - lo) * (0 - a) / (b - a))


def gap_figure(table):
    """Measured phases of a local query against the information gap Δ (actual sizes), one
    row per P: how the change from one to two phases approaches Δ = 0 as P grows. The
    measured change is ``delta_c`` of :func:`critical_gap` (else the bracket's midpoint); with
    one γ, a dotted line marks Δ = ln(1 / (1 − γ)) / ln P, where the initial gradient ratio
    (1 − γ) P^Δ of a local query at large P equals 1."""
    done = table[(table["status"] == "done") & _trusted(table)]
    fig, (ax,) = _figure(1, width=6.4, height=3.8)
    for value, marker, color, name in ((1, "o", "C0", "one phase"), (2, "^", "C3", "two phases")):
        sel = done[done["local_phases"] == value]
        ax.semilogy(sel["delta_actual"], sel["P"], marker, color=color, ls="none", label=name)
    crit = critical_gap(table).dropna(subset=["one_phase_max", "two_phase_min"])
    if len(crit):
        # where the initial gradient ratio crosses 1, else the bracket's midpoint
        mid = crit["delta_c"].fillna((crit["one_phase_max"] + crit["two_phase_min"]) / 2)
        ax.semilogy(mid, crit["P"], "-", color="C2", lw=2, label="measured change")
    ax.axvline(0, color="k", ls="--", lw=1, label=r"$\Delta = 0$ (theorem)")
    if done["gamma"].nunique() == 1 and done["P"].nunique() >= 2:
        # the initial gradient ratio of a local query tends to (1 - gamma) P^Delta
        # (docs/scaling.md): it crosses 1 at Delta = ln(1 / (1 - gamma)) / ln P
        gamma = float(done["gamma"].iloc[0])
        P = np.geomspace(done["P"].min(), done["P"].max(), 100)
        ax.semilogy(np.log(1 / (1 - gamma)) / np.log(P), P, ":", color="k", lw=1,
                    label=r"$(1-\gamma)\,P^{\Delta} = 1$")
    ax.set_xlabel(r"information gap $\Delta$ (actual sizes)")
    ax.set_ylabel("P")
    ax.legend(fontsize=7)
    return fig


def _fmt(v, f=".3g"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)


def report(table, fit_table=None):
    """The printed summary of a sweep: task counts, the fits and the phase boundary."""
    fit_table = fits(table) if fit_table is None else fit_table
    status = table["status"].value_counts()
    lines = [f"{len(table)} tasks: " + ", ".join(f"{n} {s}" for s, n in status.items())]
    done = table[table["status"] == "done"]
    if len(done):
        lines.append(f"not converged (T_eps not reached in every class): "
                     f"{int((~done['converged'].astype(bool)).sum())}")
        untrusted = int((~_trusted(done)).sum())
        if untrusted:
            lines.append(f"phase verdicts untrusted (GD steps too large to follow the gradient "
                         f"flow; left out of the phase counts below): {untrusted}")
    if len(fit_table):
        lines += ["", ("fits, power law y = c * P^b or log law y = a + b ln P "
                      "(95% interval of b):")]
        for regime, rows in fit_table.groupby("regime", sort=False):
            lines.append(f"  {regime}")
            for r in rows.itertuples():
                if r.n < 2 or math.isnan(r.exponent):
                    fit, span = "no fit", ""
                else:
                    fit = (f"b = {r.exponent:+.3f} [{_fmt(r.low, '+.3f')}, "
                           f"{_fmt(r.high, '+.3f')}]" + (" per ln P" if r.law == "log" else ""))
                    span = f"P {r.P_min:.0e}..{r.P_max:.0e}, n={r.n}, r2={r.r2:.3f}"
                note = "; ".join(x for x in (span, r.note) if x)
                lines.append(f"    {r.description}")
                lines.append(f"        {fit:<38} {note}")
    agreement = boundary_agreement(table)
    if agreement:
        lines += ["", "phases of a local query vs the sign of Delta (|Delta| >= 0.05):"]
        for P, (agree, n, unknown) in agreement.items():
            extra = f"; {unknown} never switched in the run" if unknown else ""
            lines.append(f"  P = {P:.0e}: {agree} of {n} agree{extra}")
        crit = critical_gap(table).dropna(subset=["one_phase_max", "two_phase_min"])
        if len(crit):
            lines += ["", "where one phase turns into two (Delta from the actual sizes):"]
            lines += [f"  P = {r.P:.0e}: one phase up to Delta = {r.one_phase_max:+.3f}, two "
                      f"phases from {r.two_phase_min:+.3f}" + (
                          " (not ordered: they overlap)" if not r.ordered else
                          "" if math.isnan(r.delta_c) else
                          f"; initial gradient ratio 1 at Delta = {r.delta_c:+.4f}")
                      for r in crit.itertuples()]
    return "\n".join(lines)


def _figure(ncols, nrows=1, width=4.6, height=3.6):
    Figure = require("matplotlib.figure", "the figures of a sweep", "sweep").Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())


def scaling_figure(table, fit_table=None):
    """Log-log panels of the fitted quantities against P, one color per regime, with the
    fitted lines; open markers are runs that did not reach T_eps."""
    fit_table = fits(table) if fit_table is None else fit_table
    panels = ["local_grad_ratio0", "local_switch_tau", "local_T_eps_tau", "global_T_eps_tau",
              "local_fp_global_at_switch", "local_fp_global_min", "local_loss_gap",
              "global_loss_gap"]
    fig, axes = _figure(4, 2)
    fitted = set(fit_table["regime"])
    regimes = [(r, rows) for r, rows in _regimes(table) if _label(r) in fitted]
    for i, (regime, rows) in enumerate(regimes):
        label = _label(regime)
        for ax, name in zip(axes, panels):
            column, text, law, _ = QUANTITIES[name]
            y = rows[column].astype("float64").to_numpy()
            P = rows["P"].to_numpy(dtype=float)
            conv = rows["converged"].astype("boolean").fillna(False).to_numpy(dtype=bool)
            ok = np.isfinite(y) & ((y > 0) if law == "power" else True)
            ax.set_xscale("log")
            ax.set_yscale("log" if law == "power" else "linear")
            ax.plot(P[ok & conv], y[ok & conv], "o", color=f"C{i}", ms=4)
            ax.plot(P[ok & ~conv], y[ok & ~conv], "o", mfc="none", color=f"C{i}", ms=4)
            f = fit_table[(fit_table["regime"] == label) & (fit_table["quantity"] == name)]
            if len(f) and np.isfinite(f["exponent"].iloc[0]):
                r = f.iloc[0]
                x = np.geomspace(r.P_min, r.P_max, 20)
                line = (r.prefactor * x**r.exponent if law == "power"
                        else r.prefactor + r.exponent * np.log(x))
                ax.plot(x, line, "-", color=f"C{i}", lw=1,
                        label=f"{label}: b = {r.exponent:+.2f}")
            ax.set_title(text, fontsize=9)
            ax.set_xlabel("P")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return fig


def phase_figure(table):
    """The measured phases of a local query in the (κ_c, κ_s) plane, one panel per P, over
    the theorem's Δ = 0 line; the measured boundary joins the midpoints between one- and
    two-phase runs. With one γ, a dotted line marks where the initial gradient ratio of a
    local query, (1 − γ) P^Δ at large P, equals 1 (see :func:`critical_gap`)."""
    ph = phases(table)
    Ps = sorted(ph["P"].unique())
    fig, axes = _figure(len(Ps))
    line = np.linspace(0.5, 1.0, 50)
    for ax, P in zip(axes, Ps):
        g = ph[ph["P"] == P]
        for value, marker, color, name in ((1, "o", "C0", "one phase"),
                                           (2, "^", "C3", "two phases")):
            sel = g[g["phases"] == value]
            ax.plot(sel["kappa_c"], sel["kappa_s"], marker, color=color, ls="none", label=name)
        sel = g[g["phases"].isna()]
        if len(sel):
            ax.plot(sel["kappa_c"], sel["kappa_s"], "x", color="0.5", ls="none",
                    label="no switch in the run")
        ax.plot(line, 2 * line - 1, "k--", lw=1, label=r"$\Delta = 0$ (theorem)")
        gammas = table.loc[table["P"] == P, "gamma"].unique()
        if len(gammas) == 1:  # where (1 - gamma) P^Delta = 1 (see gap_figure)
            shift = math.log(1 / (1 - float(gammas[0]))) / math.log(P)
            ax.plot(line, 2 * line - 1 - shift, "k:", lw=1,
                    label=r"$(1-\gamma)\,P^{\Delta} = 1$")
        b = boundary(table, P).dropna(subset=["kappa_c"])
        if len(b):
            ax.plot(b["kappa_c"], b["kappa_s"], "-", color="C2", lw=2, label="measured boundary")
        ax.set_title(f"P = {P:.0e}", fontsize=10)
        ax.set_xlabel(r"$\kappa_c$")
        ax.set_ylabel(r"$\kappa_s$")
        ax.legend(fontsize=7, loc="upper left")
    return fig


def save_figures(table, out, fit_table=None, dpi=130):
    """Write ``scaling.png`` (when some regime is fitted), ``phases.png`` (when the table holds
    at least three (κ_c, κ_s) pairs) and then ``gap.png`` (for two P or more) into folder
    ``out``; returns their paths."""
    from pathlib import Path

    out = Path(out)
    paths = []
    fit_table = fits(table) if fit_table is None else fit_table
    from .io import atomic_output

    def save(fig, name):  # atomically, like every file mimfast writes
        paths.append(out / name)
        with atomic_output(paths[-1]) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")

    if len(fit_table):
        save(scaling_figure(table, fit_table), "scaling.png")
    ph = phases(table)
    if len(ph.drop_duplicates(["kappa_c", "kappa_s"])) >= 3:
        save(phase_figure(table), "phases.png")
        if ph["P"].nunique() >= 2:
            save(gap_figure(table), "gap.png")
    return paths
