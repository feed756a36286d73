"""What Theorem 4.1 speaks of, measured on a :class:`~mimfast.Result` (docs/model.md §4–5).

Per query class (k, h): the irreducible part of its expected loss and the gap to it, the
phase switch of its FP learning, the convergence time T_eps of its own-area attention, and
the minimum of its global FP correlation. :func:`analyze` collects them in a summary table
with a check of each claim of the theorem.

All times are *recorded* steps: with ``record_every > 1`` an event reported at step t
happened after the previous recorded step and at or before t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .grid import class_categories, log_hg_pmf

__all__ = [
    "Analysis",
    "Claim",
    "ClassSummary",
    "analyze",
    "class_name",
    "convergence_time",
    "evolution",
    "fp_keys",
    "global_fp_min",
    "irreducible_loss",
    "loss_gap",
    "paper_shaped",
    "phase_switch",
    "pp_fp_sizes",
]

EPSILON = 0.05
PP_RATIO = 0.1


def paper_shaped(setting):
    """Whether ``setting`` has the paper's shape: group 0 one global area, group 1 local areas."""
    return all(len(c.groups) == 2 and c.groups[0].areas == 1 for c in setting.clusters)


def fp_keys(setting, k, h):
    """FP keys of query class (k, h): ``"own"``, then the groups g that have areas other than
    the query's own (the global group has none for the global query)."""
    _, areas = class_categories(setting, k, h)
    return ["own"] + [g for g in range(len(areas) - 1) if areas[1 + g] > 0]


def class_name(setting, k, h, paper=None):
    """Readable name of query class (k, h): ``"global"``/``"local"`` in the paper's shape,
    else ``"group h"``; prefixed with the cluster when K > 1.

    ``paper`` is :func:`paper_shaped` of the setting, when the caller knows it already (naming
    every class then costs O(K), not O(K^2)).
    """
    paper = paper_shaped(setting) if paper is None else paper
    name = ("global", "local")[h] if paper else f"group {h}"
    return name if setting.K == 1 else f"k{k} {name}"


def irreducible_loss(setting, k, h):
    """Irreducible part of E[l | k, h]: ½ z_h² Pr(U_own = 0) (docs/model.md §5).

    When every other position of the query's own area is masked, no attention pattern can
    reconstruct the patch. ``U_own`` is hypergeometric: u = P - m unmasked keys drawn from the
    P - 1 other positions, c_h - 1 of them in the own area. The probability is evaluated as a
    ratio of binomial densities (any p gives the same ratio), accurate at any P.

    Parameters
    ----------
    setting : Setting
    k, h : int
        Cluster and group of the query.

    Returns
    -------
    float
    """
    group = setting.clusters[k].groups[h]
    return 0.5 * group.z**2 * _pr_own_empty(setting.P - 1, setting.unmasked, group.size - 1)


@lru_cache(maxsize=4096)
def _pr_own_empty(N, u, own):
    """Pr(U_own = 0): no unmasked key among the ``own`` positions (u drawn from N)."""
    return math.exp(log_hg_pmf([0], own, N, u)[0])


def loss_gap(result, k, h, irreducible=None):
    """E[l | k, h] minus its irreducible part, at each recorded step (numpy.ndarray).

    ``irreducible`` is :func:`irreducible_loss` of the class, when the caller has it already.
    """
    if irreducible is None:
        irreducible = irreducible_loss(result.setting, k, h)
    return result.patch_loss(k, h) - irreducible


def _first(steps, mask):
    return int(steps[np.argmax(mask)]) if np.any(mask) else None


def phase_switch(result, k, h):
    """First recorded step at which the query's own feature has the largest FP gradient.

    The step at which |dL/dA_own| is at least the per-area gradient of every other FP
    correlation of the class. For a local query of the paper's setting the largest of these
    is the global-decoupling gradient |dL/dA_global| (docs/model.md §5); for the global query it is the
    largest over the local areas.

    Returns
    -------
    int or None
        0 when the own feature leads from the start (one phase), a later step when an
        earlier phase came first (two phases), None when it never leads in the recorded run.
    """
    own = np.abs(result.fp_grad(k, h, "own"))
    others = [np.abs(result.fp_grad(k, h, g)) for g in fp_keys(result.setting, k, h)[1:]]
    rival = np.max(others, axis=0) if others else np.zeros_like(own)
    return _first(result.steps, own >= rival)


def convergence_time(result, k, h, epsilon=EPSILON):
    """T_eps: first recorded step with own-area attention at least 1 - epsilon (None if never)."""
    return _first(result.steps, result.attention(k, h, "own") >= 1 - epsilon)


def global_fp_min(result, k, h):
    """Minimum over the recorded steps of the global FP correlation of class (k, h).

    The correlation of the query with the feature of group 0's (other) areas.

    Returns
    -------
    (float, int) or None
        The minimum and the first recorded step where it is reached; None when group 0 has
        no other area seen from this class (the global class itself).
    """
    if 0 not in fp_keys(result.setting, k, h):
        return None
    a = result.fp(k, h, 0)
    i = int(np.argmin(a))
    return float(a[i]), int(result.steps[i])


@dataclass(frozen=True)
class ClassSummary:
    """One row of the summary table: the measurements of query class (k, h).

    ``fp_own``, ``fp_global``, ``attention``, ``loss_gap`` and ``irreducible`` are at the last
    recorded step; ``fp_global`` and ``global_fp_min`` with its step are None for the global
    class.
    """

    k: int
    h: int
    name: str
    areas: int
    size: int
    fp_own: float
    fp_global: float | None
    phase_switch: int | None
    convergence_time: int | None
    attention: float
    loss_gap: float
    irreducible: float
    global_fp_min: float | None
    global_fp_min_step: int | None

    @property
    def phases(self):
        """1 when the own feature leads from the start, 2 after a switch, None if never."""
        return None if self.phase_switch is None else 1 + (self.phase_switch > 0)


@dataclass(frozen=True)
class Claim:
    """One claim of Theorem 4.1 and whether the run shows it (``holds`` None: not applicable)."""

    name: str
    statement: str
    holds: bool | None
    detail: str


@dataclass(frozen=True)
class Analysis:
    """Summary of a run in the terms of Theorem 4.1; ``str()`` gives the printed table."""

    epsilon: float
    delta: float | None
    delta_actual: float | None
    classes: tuple
    claims: tuple
    header: str
    last_step: int = 0

    def table(self):
        """The summary table and the claims, as text."""

        def fmt(v, f):
            return "-" if v is None else format(v, f)

        cols = ["class", "areas x size", "A_own", "A_global", "min A_global @ step", "switch",
                "phases", "T_eps", "attention", "loss gap"]
        rows = [[c.name, f"{c.areas} x {c.size}", f"{c.fp_own:.4f}", fmt(c.fp_global, ".4f"),
                 "-" if c.global_fp_min is None
                 else f"{c.global_fp_min:.4f} @ {c.global_fp_min_step}"
                 + (" (still falling)" if c.global_fp_min_step == self.last_step > 0 else ""),
                 fmt(c.phase_switch, "d"), fmt(c.phases, "d"),
                 fmt(c.convergence_time, "d"), f"{c.attention:.6f}", f"{c.loss_gap:.3e}"]
                for c in self.classes]
        width = [max(len(r[i]) for r in [cols] + rows) for i in range(len(cols))]

        def line(r):
            cells = (s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(r, width)))
            return "  ".join(cells).rstrip()

        notes = ("A_own, A_global: FP correlation with the own area's and the global area's "
                 "feature at the last step;\nmin A_global @ step: its lowest value and when "
                 "(still falling: at the last step);\nswitch: first recorded step where the own "
                 "feature has the largest FP gradient (0: one phase; -: none in the run);\n"
                 "T_eps: first recorded step with own-area attention >= 1 - eps; attention, "
                 "loss gap: at the last step,\n  for one masked query of the class (loss gap: "
                 "its expected loss above the irreducible part)")
        out = [self.header]
        if self.delta is not None:
            out.append(f"information gap Delta = {self.delta:+.4f} "
                       f"(from the actual sizes {self.delta_actual:+.4f})")
        out += ["", line(cols), line(["-" * w for w in width])] + [line(r) for r in rows]
        out += ["", notes, "", f"Theorem 4.1 with eps = {self.epsilon:g}:"]
        mark = {True: "holds", False: "FAILS", None: "n/a"}
        out += [f"  [{mark[c.holds]:>5}] {c.statement}: {c.detail}" for c in self.claims]
        return "\n".join(out)

    def __str__(self):
        return self.table()

    @property
    def holds(self):
        """True when no applicable claim fails."""
        return all(c.holds is not False for c in self.claims)


def _biggest(arrays):
    return max(float(np.max(np.abs(a))) for a in arrays)


def pp_fp_sizes(result):
    """Largest |PP| and largest |FP| correlation over the run, every class and key.

    Returns
    -------
    (float, float)
        PP is 0 when it is frozen (``pp="frozen"``).
    """
    s = result.setting
    fp = _biggest(result.fp(k, h, key) for k, h in s.classes() for key in fp_keys(s, k, h))
    if s.pp != "exact":
        return 0.0, fp
    pp = _biggest(result.pp(h, key) for _, h in s.classes() for key in ["self"] + fp_keys(s, 0, h))
    return pp, fp


def analyze(result, epsilon=EPSILON, pp_ratio=PP_RATIO):
    """Measure a run in the terms of Theorem 4.1 and check each of its claims.

    Parameters
    ----------
    result : Result
    epsilon : float, default 0.05
        Tolerance of the theorem: loss gap at most epsilon, own-area attention at least
        1 - epsilon (at the last recorded step).
    pp_ratio : float, default 0.1
        PP counts as small when its largest magnitude over the run is at most ``pp_ratio``
        times the largest FP magnitude.

    Returns
    -------
    Analysis
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    if not pp_ratio > 0:
        raise ValueError(f"pp_ratio must be positive, got {pp_ratio}")
    s = result.setting
    paper = paper_shaped(s)
    rows = []
    for k, h in s.classes():
        group = s.clusters[k].groups[h]
        low = global_fp_min(result, k, h)
        irreducible = irreducible_loss(s, k, h)
        rows.append(ClassSummary(
            k, h, class_name(s, k, h, paper), group.areas, group.size,
            float(result.fp(k, h, "own")[-1]),
            float(result.fp(k, h, 0)[-1]) if 0 in fp_keys(s, k, h) else None,
            phase_switch(result, k, h),
            convergence_time(result, k, h, epsilon), float(result.attention(k, h, "own")[-1]),
            float(loss_gap(result, k, h, irreducible)[-1]), irreducible,
            None if low is None else low[0], None if low is None else low[1]))
    delta = s.delta if paper else None
    header = (f"{s!r}\neta = {result.eta:g}, {result.last_step} steps "
              f"(recorded every {result.record_every}), backend {result.backend}")
    return Analysis(float(epsilon), delta, s.delta_actual if paper else None, tuple(rows),
                    _claims(result, rows, epsilon, pp_ratio, delta), header,
                    int(result.steps[-1]))


def _claims(result, rows, epsilon, pp_ratio, delta):
    """The claims of Theorem 4.1 for the class summaries ``rows`` (delta None: not the
    paper's shape, so the phase claims do not apply)."""
    gap = max(r.loss_gap for r in rows)
    attention = min(r.attention for r in rows)
    # a failing claim whose measure still improves at the end failed because the run ended
    improving = {"loss_gap": _improving(result, rows, lambda k, h: -loss_gap(result, k, h)),
                 "attention": _improving(result, rows,
                                         lambda k, h: result.attention(k, h, "own"))}
    claims = [
        Claim("loss_gap", "loss gap <= eps for every class", bool(gap <= epsilon),
              f"largest gap {gap:.3e}" + (EARLY if gap > epsilon and improving["loss_gap"]
                                          else "")),
        Claim("attention", "own-area attention >= 1 - eps for every class",
              bool(attention >= 1 - epsilon),
              f"smallest {attention:.6f}" + (EARLY if attention < 1 - epsilon
                                             and improving["attention"] else "")),
    ]
    local_text = "local areas learn in two phases iff Delta > 0"
    global_text = "the global area learns in one phase"
    if delta is None:
        why = "the setting is not of the paper's shape"
        claims += [Claim("local_phases", local_text, None, why),
                   Claim("global_phases", global_text, None, why)]
    else:
        local = [r for r in rows if r.h == 1]
        glob = [r for r in rows if r.h == 0]
        want = 2 if delta > 0 else 1
        # no switch in the run (yet): the run ended before the own feature took the lead
        early_local = any(r.phases is None for r in local)
        early_global = any(r.phases is None for r in glob)
        claims += [
            Claim("local_phases", local_text, all(r.phases == want for r in local),
                  f"Delta = {delta:+.3f} predicts {want}; {_steps(local)}"
                  + (EARLY if early_local else "")),
            Claim("global_phases", global_text, all(r.phases == 1 for r in glob),
                  _steps(glob) + (EARLY if early_global else "")),
        ]
    pp_text = "PP correlations small relative to FP"
    if result.setting.pp != "exact":
        claims.append(Claim("pp_small", pp_text, True, "PP frozen at 0 (pp='frozen')"))
    else:
        pp, fp = pp_fp_sizes(result)
        if fp == 0 and pp == 0:
            claims.append(Claim("pp_small", pp_text, None,
                                "nothing learned yet: PP and FP are 0 (no GD step run)"))
        else:
            if fp == 0:
                claims.append(Claim("pp_small", pp_text, False,
                                    f"max|PP| = {pp:.3g} while every FP correlation is 0"))
            else:
                ratio = pp / fp
                claims.append(Claim("pp_small", pp_text, bool(ratio <= pp_ratio),
                                    f"max|PP| / max|FP| = {ratio:.3g} (threshold {pp_ratio:g})"))
    return tuple(claims)


#: Appended to a failing claim that failed only because the run ended too early.
EARLY = "; not converged: raise --steps"


def _improving(result, rows, measure):
    """Whether the run ended while ``measure(k, h)`` (larger is better) still rose for some
    class of ``rows``, or before any step: then a claim on it failed for want of steps."""
    if len(result.steps) < 2:
        return True
    return any(np.asarray(measure(r.k, r.h))[-1] > np.asarray(measure(r.k, r.h))[-2]
               for r in rows)


def _steps(rows):
    switches = [r.phase_switch for r in rows]
    if all(t is None for t in switches):
        return "no phase switch in the run"
    return "phase switch at step " + ", ".join("none" if t is None else str(t) for t in switches)


def evolution(result, rows=8, epsilon=EPSILON):
    """How the FP correlations, own-area attention and loss evolve, as a text table.

    One line per selected recorded step: step 0, steps spread geometrically up to the last,
    and each class's phase switch and T_eps. Per class: the FP correlation with its own area's
    feature, with the global area's (paper's shape), and its own-area attention.

    Parameters
    ----------
    result : Result
    rows : int
        Number of geometrically spread steps (besides the events).
    epsilon : float
        Tolerance of T_eps.

    Returns
    -------
    str
    """
    s = result.setting
    steps = result.steps
    last = int(steps[-1])
    wanted = {0, last} | {int(round(last ** (i / (rows - 1)))) for i in range(1, rows - 1)}
    paper = paper_shaped(s)
    events = {}  # step -> what happens there
    for k, h in s.classes():
        name = class_name(s, k, h, paper)
        for what, t in (("switch", phase_switch(result, k, h)),
                        ("T_eps", convergence_time(result, k, h, epsilon))):
            if t is not None:
                wanted.add(t)
                events.setdefault(t, []).append(f"{name} {what}")
    index = sorted({int(np.searchsorted(steps, t)) for t in wanted if t <= last})
    cols = ["step"]
    series = []
    for k, h in s.classes():
        name = class_name(s, k, h, paper)
        cols.append(f"{name} A_own")
        series.append(result.fp(k, h, "own"))
        if paper and h == 1:
            cols.append(f"{name} A_global")
            series.append(result.fp(k, h, 0))
        cols.append(f"{name} attention")
        series.append(result.attention(k, h, "own"))
    cols.append("L")
    series.append(result.loss)
    table = [[str(int(steps[i]))] + [f"{x[i]:.5g}" for x in series] for i in index]
    width = [max(len(r[c]) for r in [cols] + table) for c in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, width)) for r in [cols] + table]
    marks = [""] + [", ".join(events.get(int(steps[i]), [])) for i in index]
    lines = [(line + "  " + mark).rstrip() for line, mark in zip(lines, marks)]
    notes = (f"A_own, A_global: FP correlations; attention: on the unmasked keys of the own area;"
             f"\nL: population loss, the expected error summed over the m = {s.masked:,} masked "
             f"patches\n  (per masked patch: L / m); marked rows: a phase switch (switch) or "
             f"T_eps (attention >= {1 - epsilon:g})")
    return "\n".join(["how the FP correlations and own-area attention evolve:"] + lines
                     + [notes])
