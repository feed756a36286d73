"""What the paper claims, measured on a :class:`~mimfast.Result` (docs/model.md §4–5, §9).

Per query class (k, h): the irreducible part of its expected loss and the gap to it, the
phase switch of its FP learning, the convergence time T_eps of its own-area attention, and
the minimum of its global FP correlation; for a local query the phase-I observables (the
gradient ratio R(0) at Q = 0, the global and own FP correlations at the switch).
:func:`analyze` collects them in a summary table with a check of each claim, labelled with
where the paper makes it: Theorem 4.1 (loss and attention), §5 with Lemma 5.3 and Appendix F
(the phases and PP).

Times are recorded steps and flow times τ. For GD τ = η · step, and with ``record_every > 1``
an event reported at step t happened after the previous recorded step and at or before t.
For a gradient-flow run (:func:`mimfast.flow`) τ is the event's time located on the
integrator's continuous extension, and the step is the first record at or after it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .grid import class_categories, hg_pmf
from .model import own_area

__all__ = [
    "Analysis",
    "Claim",
    "ClassSummary",
    "analyze",
    "at_time",
    "attention_ceiling",
    "class_kind",
    "class_name",
    "convergence_time",
    "delta_boundary",
    "event_time",
    "evolution",
    "fp_keys",
    "global_fp_min",
    "global_key",
    "grad_ratio0",
    "irreducible_loss",
    "largest_step_move",
    "logit_gap_parts",
    "loss_gap",
    "one_global_area",
    "paper_shaped",
    "phase_switch",
    "pp_across_clusters",
    "pp_fp_sizes",
    "pp_share",
    "rival_keys",
    "step_moves",
]

EPSILON = 0.05
PP_RATIO = 0.1
#: A GD step that moves a correlation of a class by more than this does not follow the flow
#: (an FP correlation of 1 changes the class's key weights by a factor e^z): the run's phase
#: claims are then untrusted.
MAX_MOVE = 1.0
THEOREM = "Theorem 4.1"
PHASES = "§5 / Lemma 5.3 / App. F"


def paper_shaped(setting):
    """Whether ``setting`` has the paper's shape: group 0 one global area, group 1 local areas
    (and no named areas: see :func:`one_global_area` for tiled settings)."""
    return all(len(c.groups) == 2 and c.groups[0].areas == 1 and c.roles is None
               for c in setting.clusters)


def one_global_area(setting):
    """Whether ``setting`` is tiled like :meth:`Setting.paper_clusters`: every cluster names
    exactly one area (its global area) and has one-tile areas (its local areas)."""
    return all(c.roles is not None and len({r for r in c.roles if r is not None}) == 1
               and None in c.roles for c in setting.clusters)


def class_kind(setting, k, h, paper=None):
    """``"global"`` or ``"local"``: whether a query of class (k, h) lies in its cluster's
    global area, in the paper's shape (:func:`paper_shaped`) or tiled with one global area per
    cluster (:func:`one_global_area`); None for other settings.

    ``paper`` is :func:`paper_shaped` of the setting, when the caller knows it already.
    """
    if paper_shaped(setting) if paper is None else paper:
        return ("global", "local")[h]
    if one_global_area(setting):  # O(1) for a setting without roles
        return "local" if setting.clusters[k].roles[h] is None else "global"
    return None


def global_key(setting, k, h):
    """The FP key (a group index) of class (k, h)'s correlation with its cluster's global
    area, or None when the query lies in it or there is none.

    Without roles: group 0 when it has areas other than the query's own. With roles: the
    first tile group of the cluster's one named area, for a query outside it (the columns of
    an area's groups are equal); None when the cluster names several areas or none.
    """
    roles = setting.clusters[k].roles
    if roles is None:
        return 0 if 0 in fp_keys(setting, k, h) else None
    names = {r for r in roles if r is not None}
    if len(names) != 1 or roles[h] is not None:
        return None
    return roles.index(names.pop())


def fp_keys(setting, k, h):
    """FP keys of query class (k, h): ``"own"``, then the groups g that have areas other than
    the query's own (the global group has none for the global query)."""
    _, areas = class_categories(setting, k, h)
    return ["own"] + [g for g in range(len(areas) - 1) if areas[1 + g] > 0]


def rival_keys(setting, k, h):
    """The FP keys of class (k, h) outside its own area: :func:`fp_keys` less ``"own"`` and
    the groups that lie in the query's named own area (their columns are the own area's)."""
    own = own_area(setting, k, h)
    return [g for g in fp_keys(setting, k, h)[1:] if 1 + g not in own]


def class_name(setting, k, h, paper=None):
    """Readable name of query class (k, h): ``"global"``/``"local"`` in the paper's shape,
    ``"global gh"``/``"local gh"`` (tile group h) with one global area per cluster
    (:func:`one_global_area`), else ``"group h"``; prefixed with the cluster when K > 1.

    ``paper`` is :func:`paper_shaped` of the setting, when the caller knows it already (naming
    every class then costs O(K), not O(K^2)).
    """
    paper = paper_shaped(setting) if paper is None else paper
    if paper:
        name = ("global", "local")[h]
    elif setting.clusters[k].roles is not None and one_global_area(setting):
        name = f"{class_kind(setting, k, h, False)} g{h}"
    else:
        name = f"group {h}"
    return name if setting.K == 1 else f"k{k} {name}"


def own_keys(setting, k, h):
    """Number of other positions in the own area of a query of class (k, h): c_h - 1, or for
    a query in a named area of a tiled setting, the area's positions less one."""
    sizes, _ = class_categories(setting, k, h)
    return int(sum(sizes[c] for c in own_area(setting, k, h)))


def irreducible_loss(setting, k, h):
    """Irreducible part of E[l | k, h]: ½ z_h² Pr(U_own = 0) (docs/model.md §5).

    When every other position of the query's own area is masked, no attention pattern can
    reconstruct the patch. ``U_own`` is hypergeometric: u = P - m unmasked keys drawn from the
    P - 1 other positions, c_h - 1 of them in the own area (:func:`own_keys`). The probability
    is evaluated as a ratio of binomial densities (any p gives the same ratio), accurate at
    any P.

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
    return 0.5 * group.z**2 * _pr_own_empty(setting.P - 1, setting.unmasked,
                                            own_keys(setting, k, h))


@lru_cache(maxsize=4096)
def _pr_own_empty(N, u, own):
    """Pr(U_own = 0): no unmasked key among the ``own`` positions (u drawn from N)."""
    return float(hg_pmf([0], own, N, u)[0])


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
    others = [np.abs(result.fp_grad(k, h, g)) for g in rival_keys(result.setting, k, h)]
    rival = np.max(others, axis=0) if others else np.zeros_like(own)
    return _first(result.steps, own >= rival)


def convergence_time(result, k, h, epsilon=EPSILON):
    """T_eps: first recorded step with own-area attention at least 1 - epsilon (None if never)."""
    return _first(result.steps, result.attention(k, h, "own") >= 1 - epsilon)


def event_time(result, name, k, h, step):
    """Flow time of event ``name`` (``"switch"``, ``"T_eps"``) of class (k, h) at recorded
    step ``step``: the located time of a gradient-flow run (:attr:`Result.events`), else the
    recorded step's τ (η · step for GD). None when ``step`` is None."""
    if step is None:
        return None
    if (name, k, h) in result.events:
        return float(result.events[name, k, h])
    return float(result.tau[int(np.searchsorted(result.steps, step))])


def grad_ratio0(result, k, h):
    """R(0): the largest per-area FP gradient of class (k, h) other than its own feature's,
    over the own feature's, at Q = 0 (for a local query: |dL/dA_global| / |dL/dA_own|, about
    P^Delta; above 1 the own feature does not lead at first). None without another key."""
    others = rival_keys(result.setting, k, h)
    if not others:
        return None
    own = abs(float(result.fp_grad(k, h, "own")[0]))
    rival = max(abs(float(result.fp_grad(k, h, g)[0])) for g in others)
    return math.inf if own == 0 else rival / own


def at_time(result, values, tau, step):
    """``values`` (one per record) at flow time ``tau``: interpolated between the records of
    a gradient-flow run, the record of ``step`` for GD."""
    if result.is_flow:
        return float(np.interp(tau, result.tau, values))
    return float(values[int(np.searchsorted(result.steps, step))])


def step_moves(result, k, h):
    """Per record of a GD run, the largest amount one step moves a correlation of class
    (k, h) there: η |dL/dA| at the record (the move of the step after it, exact), and the
    change of every FP and (with exact PP) PP correlation to the next record divided by the
    steps between them. With ``record_every`` > 1 that second part is a mean over the steps
    between records (their largest single move may be larger: the steps in between are not
    recorded). Empty for a gradient-flow run (its steps follow the flow)."""
    if result.is_flow or not len(result.steps):
        return np.zeros(0)
    s = result.setting
    keys = fp_keys(s, k, h)
    move = result.eta * np.max([np.abs(result.fp_grad(k, h, key)) for key in keys], axis=0)
    if len(result.steps) > 1:
        series = [result.fp(k, h, key) for key in keys]
        if s.pp == "exact":
            series += [result.pp(h, key) for key in ["self"] + fp_keys(s, 0, h)]
        dt = np.diff(result.steps)
        mean = np.max([np.abs(np.diff(a)) for a in series], axis=0) / dt
        move[:-1] = np.maximum(move[:-1], mean)
    return move


def largest_step_move(result, k, h, until=None):
    """The largest amount one GD step before step ``until`` (default: the whole run) moves a
    correlation of class (k, h), with the recorded step where it starts: the largest of
    :func:`step_moves` over the records before ``until``. (0.0, None) for a gradient-flow
    run or when no record comes before ``until``."""
    moves = step_moves(result, k, h)
    n = len(moves) if until is None else min(len(moves),
                                             int(np.searchsorted(result.steps, until)))
    if n == 0:
        return 0.0, None
    i = int(np.argmax(moves[:n]))
    return float(moves[i]), int(result.steps[i])


def attention_ceiling(setting, k, h):
    """1 - Pr(U_own = 0): the most own-area attention a masked query of class (k, h) can have
    on average (a query whose whole own area is masked has none there)."""
    return 1.0 - _pr_own_empty(setting.P - 1, setting.unmasked, own_keys(setting, k, h))


def delta_boundary(setting):
    """Delta_c = ln(1 / (1 - gamma)) / ln P: below it a positive Delta does not yet make the
    global-decoupling gradient lead at Q = 0 at this P (docs/theorem.md)."""
    return math.log(setting.P / setting.unmasked) / math.log(setting.P)


def global_fp_min(result, k, h):
    """Minimum over the recorded steps of the global FP correlation of class (k, h).

    The correlation of the query with the feature of its cluster's global area
    (:func:`global_key`: group 0's other areas without roles).

    Returns
    -------
    (float, int) or None
        The minimum and the first recorded step where it is reached; None when the class has
        no global area other than its own (the global class itself).
    """
    key = global_key(result.setting, k, h)
    if key is None:
        return None
    a = result.fp(k, h, key)
    i = int(np.argmin(a))
    return float(a[i]), int(result.steps[i])


@dataclass(frozen=True)
class ClassSummary:
    """One row of the summary table: the measurements of query class (k, h).

    ``fp_own``, ``fp_global``, ``attention``, ``loss_gap`` and ``irreducible`` are at the last
    recorded step; ``fp_global`` and ``global_fp_min`` with its step are None for the global
    class. ``switch_tau``, ``convergence_tau`` and ``global_fp_min_tau`` are flow times
    (:func:`event_time`); ``grad_ratio0`` is R(0) (:func:`grad_ratio0`);
    ``fp_global_at_switch`` and ``fp_own_at_switch`` the FP correlations at the switch;
    ``step_move`` the largest move of one GD step before the switch
    (:func:`largest_step_move`: the steps the phase verdict rests on), ``run_move`` and
    ``run_move_step`` the largest over the whole run and the step it starts at; ``kind`` is
    :func:`class_kind` (``"global"``, ``"local"`` or None).
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
    switch_tau: float | None = None
    convergence_tau: float | None = None
    global_fp_min_tau: float | None = None
    grad_ratio0: float | None = None
    fp_global_at_switch: float | None = None
    fp_own_at_switch: float | None = None
    step_move: float = 0.0
    kind: str | None = None
    run_move: float = 0.0
    run_move_step: int | None = None

    @property
    def decoupled(self):
        """Lemma 5.3's content, for a class that sees the global area: at a switch after Q = 0
        the global FP correlation has fallen by more than the own one has risen. None without
        a global FP correlation or a switch."""
        if self.fp_global_at_switch is None or not self.phase_switch:
            return None
        return bool(self.fp_global_at_switch < -abs(self.fp_own_at_switch))

    @property
    def phases(self):
        """1 when the own feature leads from the start (or leads later without the global FP
        having decoupled first), 2 after a switch that followed a decoupling, None if the own
        feature never leads."""
        if self.phase_switch is None:
            return None
        return 1 + (self.phase_switch > 0 and self.decoupled is not False)


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and whether the run shows it (``holds`` None: not applicable or
    not tested); ``source`` says where the paper makes it, ``trusted`` False when the run's
    GD steps were too large to follow the flow (:data:`MAX_MOVE`)."""

    name: str
    statement: str
    holds: bool | None
    detail: str
    source: str = THEOREM
    trusted: bool = True

    @property
    def mark(self):
        if not self.trusted:
            return "untrusted"
        return {True: "holds", False: "FAILS", None: "n/a"}[self.holds]


@dataclass(frozen=True)
class Analysis:
    """Summary of a run in the terms of the paper; ``str()`` gives the printed table."""

    epsilon: float
    delta: float | None
    delta_actual: float | None
    classes: tuple
    claims: tuple
    header: str
    last_step: int = 0
    flow: bool = False
    warning: str = ""
    pp_report: str = ""

    @property
    def trusted(self):
        """False when a GD step before a class's switch was too large to follow the flow
        (the phase claims are then untrusted; :data:`MAX_MOVE`)."""
        return all(c.trusted for c in self.claims)

    def table(self):
        """The summary table, the phase-I observables and the claims, as text."""

        def fmt(v, f):
            return "-" if v is None else format(v, f)

        def when(step, tau):
            if step is None:
                return "-"
            return f"tau {tau:.4g}" if self.flow else f"{step} (tau {tau:.4g})"

        cols = ["class", "areas x size", "A_own", "A_global",
                "min A_global @ " + ("tau" if self.flow else "step"), "switch", "phases",
                "T_eps", "attention", "loss gap"]
        rows = [[c.name, f"{c.areas} x {c.size}", f"{c.fp_own:.4f}", fmt(c.fp_global, ".4f"),
                 "-" if c.global_fp_min is None
                 else f"{c.global_fp_min:.4f} @ "
                 + (f"{c.global_fp_min_tau:.4g}" if self.flow else f"{c.global_fp_min_step}")
                 + (" (still falling)" if c.global_fp_min_step == self.last_step > 0 else ""),
                 when(c.phase_switch, c.switch_tau), fmt(c.phases, "d"),
                 when(c.convergence_time, c.convergence_tau), f"{c.attention:.6f}",
                 f"{c.loss_gap:.3e}"]
                for c in self.classes]
        out = [self.header]
        if self.delta is not None:
            out.append(f"information gap Delta = {self.delta:+.4f} "
                       f"(from the actual sizes {self.delta_actual:+.4f})")
        out += ["", *_columns(cols, rows)]
        time = "flow time tau" if self.flow else "recorded step (tau = eta * step)"
        notes = ("A_own, A_global: FP correlation with the own area's and the global area's "
                 "feature at the last step;\nmin A_global: its lowest value and when "
                 "(still falling: at the last step);\nswitch: first " + time + " where the "
                 "own feature has the largest FP gradient\n  (0: one phase; -: the own feature "
                 "does not lead within the run);\nphases: 2 when the global FP correlation "
                 "decoupled before the switch (Lemma 5.3), else 1;\nT_eps: first " + time
                 + " with own-area attention >= 1 - eps (-: not reached within the run);\n"
                 "attention, loss gap: at the last step, for one masked query of the class "
                 "(loss gap: its expected\n  loss above the irreducible part)")
        out += ["", notes]
        local = [c for c in self.classes if c.fp_global_at_switch is not None
                 or (c.grad_ratio0 is not None and c.global_fp_min is not None)]
        if local:
            cols = ["phase I", "R(0)", "switch", "A_global at switch", "A_own at switch",
                    "decoupled"]
            rows = [[c.name, fmt(c.grad_ratio0, ".4g"), when(c.phase_switch, c.switch_tau),
                     fmt(c.fp_global_at_switch, ".4f"), fmt(c.fp_own_at_switch, ".4f"),
                     {None: "-", True: "yes", False: "no"}[c.decoupled]] for c in local]
            out += ["", *_columns(cols, rows),
                    ("R(0): |dL/dA_global| / |dL/dA_own| at Q = 0 (above 1: the global "
                     "decoupling leads at first);\ndecoupled: at the switch A_global has fallen "
                     "by more than A_own has risen (-: no switch after Q = 0)")]
        if self.pp_report:
            out += ["", self.pp_report]
        out += [""] + ([self.warning] if self.warning else [])
        out.append(f"Claims with eps = {self.epsilon:g}, and where the paper makes them:")
        out += [f"  [{c.mark:>5}] {c.source}: {c.statement}: {c.detail}" for c in self.claims]
        return "\n".join(out)

    def __str__(self):
        return self.table()

    @property
    def holds(self):
        """True when no applicable and trusted claim fails."""
        return all(c.holds is not False or not c.trusted for c in self.claims)


def _columns(cols, rows):
    """Header, rule and rows of a text table (first column left-aligned)."""
    width = [max(len(r[i]) for r in [cols] + rows) for i in range(len(cols))]

    def line(r):
        cells = (s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(r, width)))
        return "  ".join(cells).rstrip()

    return [line(cols), line(["-" * w for w in width])] + [line(r) for r in rows]


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


def logit_gap_parts(result, k, h):
    """The attention logit gap of class (k, h) between its own area and the rest, split into
    what FP and what PP contribute, at each recorded step (docs/model.md §2).

    The logit of an unmasked key of category c is ``z_c A_c + B_c``. The gap is the smallest
    such logit over the categories of the own area (:func:`~mimfast.model.own_area`) less the
    largest over the other categories with keys; its FP part is the difference of the
    ``z A`` terms of those two categories, its PP part the difference of their ``B``.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray) or None
        FP part and PP part (their sum is the gap); None when every key lies in the own area
        or PP is frozen.
    """
    s = result.setting
    if s.pp != "exact":
        return None
    sizes, _ = class_categories(s, k, h)
    own = [c for c in own_area(s, k, h) if sizes[c] > 0]
    rest = [c for c in range(len(sizes)) if sizes[c] > 0 and c not in own_area(s, k, h)]
    if not own or not rest:
        return None
    z = s.class_z(k, h)
    keys = ["own"] + list(range(len(sizes) - 1))  # per category, the accessors' key
    fp = np.array([z[c] * result.fp(k, h, key) for c, key in enumerate(keys)])
    pp = np.array([result.pp(h, key) for key in keys])
    logit = fp + pp
    steps = np.arange(fp.shape[1])
    low = np.array(own)[np.argmin(logit[own], axis=0)]
    high = np.array(rest)[np.argmax(logit[rest], axis=0)]
    return fp[low, steps] - fp[high, steps], pp[low, steps] - pp[high, steps]


def pp_share(parts):
    """Per recorded step, the share of a logit gap that comes from PP, |PP part| /
    (|FP part| + |PP part|), from the ``parts`` of :func:`logit_gap_parts`; NaN where both
    parts are 0."""
    fp, pp = np.abs(parts[0]), np.abs(parts[1])
    mag = fp + pp
    return np.divide(pp, mag, out=np.full_like(mag, np.nan), where=mag > 0)


def pp_across_clusters(result):
    """What learned PP does across the clusters of a tiled setting with K > 1, as text: the
    largest |PP| over the largest |FP| over the run, and per query class the share of its
    own-area logit gap that comes from PP (:func:`logit_gap_parts`) at the last step and at
    most over the run. Empty for other settings."""
    s = result.setting
    if s.K == 1 or s.pp != "exact":
        return ""
    pp, fp = pp_fp_sizes(result)
    paper = paper_shaped(s)
    ratio = "inf" if fp == 0 < pp else "-" if fp == 0 else f"{pp / fp:.3g}"
    rows = []
    for k, h in s.classes():
        parts = logit_gap_parts(result, k, h)
        if parts is None:
            continue
        a, b = parts
        share = pp_share(parts)
        rows.append([class_name(s, k, h, paper), f"{a[-1] + b[-1]:.4g}", f"{a[-1]:.4g}", f"{b[-1]:.4g}",
                     "-" if np.isnan(share[-1]) else f"{share[-1]:.3g}",
                     "-" if np.all(np.isnan(share)) else f"{np.nanmax(share):.3g}"])
    cols = ["PP across clusters", "logit gap", "from FP", "from PP", "PP share",
            "max PP share"]
    head = (f"PP learned and shared by the {s.K} clusters: max|PP| / max|FP| over the run = "
            f"{ratio}")
    notes = ("logit gap: smallest own-area unmasked-key logit z A + B less the largest other "
             "one, at the last step;\nfrom FP, from PP: its z A and B parts; PP share: |PP part| "
             "/ (|FP part| + |PP part|), at the last step\n  and its largest over the run")
    return "\n".join([head, *_columns(cols, rows), notes])


def analyze(result, epsilon=EPSILON, pp_ratio=PP_RATIO, max_move=MAX_MOVE):
    """Measure a run in the terms of the paper and check each of its claims.

    Parameters
    ----------
    result : Result
    epsilon : float, default 0.05
        Tolerance of the theorem: loss gap at most epsilon, own-area attention at least
        1 - epsilon (at the last recorded step).
    pp_ratio : float, default 0.1
        PP counts as small when its largest magnitude over the run is at most ``pp_ratio``
        times the largest FP magnitude.
    max_move : float, default 1.0
        A GD run one of whose steps moves a correlation by more than this does not follow the
        gradient flow: its phase claims are marked untrusted.

    Returns
    -------
    Analysis
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    if not pp_ratio > 0:
        raise ValueError(f"pp_ratio must be positive, got {pp_ratio}")
    if not max_move > 0:
        raise ValueError(f"max_move must be positive, got {max_move}")
    s = result.setting
    paper = paper_shaped(s)
    rows = [_summary(result, k, h, paper, epsilon) for k, h in s.classes()]
    shaped = paper or one_global_area(s)
    delta = s.delta if shaped else None
    if result.is_flow:
        header = (f"{s!r}\ngradient flow to tau = {result.tau[-1]:.6g}, {result.last_step} "
                  f"accepted steps (Dormand-Prince 5(4), rtol "
                  f"{getattr(result, 'rtol', float('nan')):g}), backend {result.backend}")
    else:
        header = (f"{s!r}\neta = {result.eta:g}, {result.last_step} steps "
                  f"(recorded every {result.record_every}), backend {result.backend}")
    warning, untrusted = _move_warning(result, rows, max_move)
    claims = _claims(result, rows, epsilon, pp_ratio, delta, trusted=not untrusted)
    return Analysis(float(epsilon), delta, s.delta_actual if shaped else None, tuple(rows),
                    claims, header, int(result.steps[-1]), result.is_flow, warning,
                    pp_across_clusters(result))


def _move_warning(result, rows, max_move):
    """``(warning, untrusted)`` of a GD run one of whose steps moves a correlation by more
    than ``max_move``: the run's event times are then those of GD, not of the gradient flow,
    and its phase claims are untrusted when such a step comes before a class's switch."""
    big = max(rows, key=lambda r: r.run_move)
    if big.run_move <= max_move:
        return "", False
    before = max(rows, key=lambda r: r.step_move)
    untrusted = before.step_move > max_move
    mean = (f"\n(a mean per step over the {result.record_every} steps between records: the "
            "largest single step may move it further)" if result.record_every > 1 else "")
    text = (f"GD steps too large to follow the gradient flow: step {big.run_move_step} moves a "
            f"correlation of the {big.name} class\nby {big.run_move:.3g} (more than "
            f"{max_move:g}){mean}, so the event times (switch, T_eps, global minimum)\nare "
            "those of GD, not of the gradient flow;")
    if untrusted:
        text += (f" before its switch one step moves a correlation of the\n{before.name} class "
                 f"by {before.step_move:.3g}, so the phase claims are untrusted;")
    text += "\nlower eta or run the gradient flow (mimfast run --flow TAU)"
    return text, untrusted


def _summary(result, k, h, paper, epsilon):
    """The :class:`ClassSummary` of class (k, h)."""
    s = result.setting
    group = s.clusters[k].groups[h]
    low = global_fp_min(result, k, h)
    irreducible = irreducible_loss(s, k, h)
    switch = phase_switch(result, k, h)
    t_eps = convergence_time(result, k, h, epsilon)
    switch_tau = event_time(result, "switch", k, h, switch)
    glob = global_key(s, k, h)
    at_switch = [None, None]
    if glob is not None and switch:  # a switch after Q = 0 (at 0 both are 0)
        at_switch = [at_time(result, result.fp(k, h, key), switch_tau, switch)
                     for key in (glob, "own")]
    low_tau = None
    if low is not None:
        low_tau = result.events.get(("global_min", k, h),
                                    float(result.tau[int(np.searchsorted(result.steps,
                                                                         low[1]))]))
    return ClassSummary(
        k, h, class_name(s, k, h, paper), group.areas, group.size,
        float(result.fp(k, h, "own")[-1]),
        float(result.fp(k, h, glob)[-1]) if glob is not None else None,
        switch, t_eps, float(result.attention(k, h, "own")[-1]),
        float(loss_gap(result, k, h, irreducible)[-1]), irreducible,
        None if low is None else low[0], None if low is None else low[1],
        switch_tau, event_time(result, "T_eps", k, h, t_eps), low_tau,
        grad_ratio0(result, k, h), *at_switch, largest_step_move(result, k, h, switch)[0],
        class_kind(s, k, h, paper), *largest_step_move(result, k, h))


def _claims(result, rows, epsilon, pp_ratio, delta, trusted=True):
    """The claims of the paper for the class summaries ``rows`` (delta None: not the
    paper's shape, so the phase claims do not apply)."""
    gap = max(r.loss_gap for r in rows)
    worst = min(rows, key=lambda r: r.attention)
    attention = worst.attention
    early = EARLY_FLOW if result.is_flow else EARLY
    # a failing claim whose measure still improves at the end failed because the run ended
    improving = {"loss_gap": _improving(result, rows, lambda k, h: -loss_gap(result, k, h)),
                 "attention": _improving(result, rows,
                                         lambda k, h: result.attention(k, h, "own"))}
    ceiling = attention_ceiling(result.setting, worst.k, worst.h)
    att_detail = f"smallest {attention:.6f}"
    if attention < 1 - epsilon:
        if ceiling < 1 - epsilon:
            att_detail += (f"; no run reaches 1 - eps at this P: the {worst.name} class's "
                           f"ceiling 1 - Pr(U_own = 0) is {ceiling:.6f}")
        elif attention >= ceiling * (1 - 1e-9):
            att_detail += f" (at its ceiling 1 - Pr(U_own = 0) = {ceiling:.6f})"
        elif improving["attention"]:
            att_detail += early
    claims = [
        Claim("loss_gap", "loss gap <= eps for every class", bool(gap <= epsilon),
              f"largest gap {gap:.3e}" + (early if gap > epsilon and improving["loss_gap"]
                                          else "")),
        Claim("attention", "own-area attention >= 1 - eps for every class",
              bool(attention >= 1 - epsilon), att_detail),
    ]
    local_text = "local areas learn in two phases iff Delta > 0"
    global_text = "the global area learns in one phase"
    if delta is None:
        why = "the setting is not of the paper's shape"
        claims += [Claim("local_phases", local_text, None, why, PHASES),
                   Claim("global_phases", global_text, None, why, PHASES)]
    else:
        local = [r for r in rows if r.kind == "local"]
        glob = [r for r in rows if r.kind == "global"]
        want = 2 if delta > 0 else 1
        # no switch in the run (yet): the run ended before the own feature took the lead
        early_local = any(r.phases is None for r in local)
        early_global = any(r.phases is None for r in glob)
        boundary = delta_boundary(result.setting)
        if 0 < delta < boundary:
            local_claim = Claim(
                "local_phases", local_text, None,
                f"n/a (Delta too close to 0 at this P: Delta = {delta:+.3f} is below the "
                f"finite-P boundary Delta_c = ln(1/(1 - gamma)) / ln P = {boundary:.3f}); "
                + _steps(local, result.is_flow), PHASES, trusted)
        else:
            local_claim = Claim(
                "local_phases", local_text, all(r.phases == want for r in local),
                f"Delta = {delta:+.3f} predicts {want}; {_steps(local, result.is_flow)}"
                + _decoupling(local) + (early if early_local else ""), PHASES, trusted)
        claims += [
            local_claim,
            Claim("global_phases", global_text, all(r.phases == 1 for r in glob),
                  _steps(glob, result.is_flow) + (early if early_global else ""), PHASES,
                  trusted),
        ]
    pp_text = "PP correlations small relative to FP"
    if result.setting.pp != "exact":
        claims.append(Claim("pp_small", pp_text, None,
                            "PP frozen: the PP claim was not tested", PHASES))
    else:
        pp, fp = pp_fp_sizes(result)
        if fp == 0 and pp == 0:
            claims.append(Claim("pp_small", pp_text, None,
                                "nothing learned yet: PP and FP are 0 (no GD step run)", PHASES))
        elif fp == 0:
            claims.append(Claim("pp_small", pp_text, False,
                                f"max|PP| = {pp:.3g} while every FP correlation is 0", PHASES))
        else:
            ratio = pp / fp
            claims.append(Claim("pp_small", pp_text, bool(ratio <= pp_ratio),
                                f"max|PP| / max|FP| = {ratio:.3g} (threshold {pp_ratio:g})",
                                PHASES))
    return tuple(claims)


#: Appended to a failing claim that failed only because the run ended too early.
EARLY = "; not converged: raise --steps"
EARLY_FLOW = "; not converged: raise --flow (the flow time)"


def _improving(result, rows, measure):
    """Whether the run ended while ``measure(k, h)`` (larger is better) still rose for some
    class of ``rows``, or before any step: then a claim on it failed for want of steps."""
    if len(result.steps) < 2:
        return True
    return any(np.asarray(measure(r.k, r.h))[-1] > np.asarray(measure(r.k, r.h))[-2]
               for r in rows)


def _steps(rows, flow=False):
    switches = [r.phase_switch for r in rows]
    if all(t is None for t in switches):
        return "no phase switch in the run"
    if flow:
        return "phase switch at tau " + ", ".join(
            "none" if r.switch_tau is None else f"{r.switch_tau:.4g}" for r in rows)
    return "phase switch at step " + ", ".join("none" if t is None else str(t) for t in switches)


def _decoupling(rows):
    """What the classes' global FP correlations did before a switch after Q = 0."""
    late = [r for r in rows if r.decoupled is not None]
    if not late:
        return ""
    return "; at the switch A_global, A_own = " + ", ".join(
        f"{r.fp_global_at_switch:.3g}, {r.fp_own_at_switch:.3g}"
        + ("" if r.decoupled else " (no decoupling)") for r in late)


def evolution(result, rows=8, epsilon=EPSILON):
    """How the FP correlations, own-area attention and loss evolve, as a text table.

    One line per selected recorded step: step 0, steps spread geometrically up to the last
    (for a gradient-flow run: spread geometrically in flow time), and each class's phase
    switch and T_eps. Per class: the FP correlation with its own area's
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
    if result.is_flow and last > 1:  # spread geometrically in flow time
        tau = result.tau
        spread = tau[1] * (tau[-1] / tau[1]) ** (np.arange(1, rows - 1) / (rows - 2))
        wanted = {0, last} | {int(steps[min(i, last)]) for i in np.searchsorted(tau, spread)}
    else:
        wanted = {0, last} | {round(last ** (i / (rows - 1))) for i in range(1, rows - 1)}
    paper = paper_shaped(s)
    events = {}  # step -> what happens there
    for k, h in s.classes():
        name = class_name(s, k, h, paper)
        for what, t in (("switch", phase_switch(result, k, h)),
                        ("T_eps", convergence_time(result, k, h, epsilon))):
            if t is not None and not (what == "switch" and t == 0):  # 0: one phase, no switch
                wanted.add(t)
                events.setdefault(t, []).append(f"{name} {what}")
    index = sorted({int(np.searchsorted(steps, t)) for t in wanted if t <= last})
    cols = ["tau" if result.is_flow else "step"]
    series = []
    for k, h in s.classes():
        name = class_name(s, k, h, paper)
        cols.append(f"{name} A_own")
        series.append(result.fp(k, h, "own"))
        glob = global_key(s, k, h)
        if class_kind(s, k, h, paper) == "local" and glob is not None:
            cols.append(f"{name} A_global")
            series.append(result.fp(k, h, glob))
        cols.append(f"{name} attention")
        series.append(result.attention(k, h, "own"))
    cols.append("L")
    series.append(result.loss)
    first = [f"{result.tau[i]:.5g}" if result.is_flow else str(int(steps[i])) for i in index]
    table = [[t] + [f"{x[i]:.5g}" for x in series] for t, i in zip(first, index)]
    width = [max(len(r[c]) for r in [cols] + table) for c in range(len(cols))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, width)) for r in [cols] + table]
    marks = [""] + [", ".join(events.get(int(steps[i]), [])) for i in index]
    lines = [(line + "  " + mark).rstrip() for line, mark in zip(lines, marks)]
    notes = (f"A_own, A_global: FP correlations; attention: on the unmasked keys of the own area;"
             f"\nL: population loss, the expected error summed over the m = {s.masked:,} masked "
             f"patches\n  (per masked patch: L / m); marked rows: a phase switch after step 0 "
             f"(switch) or T_eps (attention >= {1 - epsilon:g})"
             + ("; tau: flow time of the record (the events lie at or before it)"
                if result.is_flow else ""))
    return "\n".join(["how the FP correlations and own-area attention evolve:"] + lines
                     + [notes])
