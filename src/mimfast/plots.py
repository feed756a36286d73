"""Figures of a run (matplotlib, headless): FP correlations with the phase switch, own-area
attention and loss gap on log axes, PP beside FP on the same scale.

Figures are built with :class:`matplotlib.figure.Figure` directly, so no GUI backend and no
global pyplot state is involved; matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._extras import require
from .analysis import analyze, class_name, fp_keys, paper_shaped, pp_fp_sizes
from .io import atomic_output

__all__ = ["FIGURES", "attention_figure", "fp_figure", "pp_figure", "save_figures"]

DPI = 130


def _figure(ncols, width=5.2, height=3.8):
    Figure = require("matplotlib.figure", "figures").Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


#: Scales of the step axis: linear, or symlog (linear up to step 10, logarithmic beyond) so
#: that the first steps of a long run show.
STEP_AXES = ("linear", "symlog")


def _x(result):
    """The time axis of a run: GD steps, or the flow time of a gradient-flow run."""
    return result.tau if result.is_flow else result.steps


def _step_axis(ax, step_axis, result=None):
    if step_axis not in STEP_AXES:
        raise ValueError(f"step_axis must be one of {', '.join(STEP_AXES)}, got {step_axis!r}")
    if result is not None and result.is_flow:  # flow time spans many decades: always symlog
        ax.set_xlabel("flow time tau (symlog scale)")
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
        ax.set_xlim(left=0)
        return
    ax.set_xlabel("GD step" + (" (symlog scale)" if step_axis == "symlog" else ""))
    if step_axis == "symlog":
        ax.set_xscale("symlog", linthresh=10, linscale=0.5)
        ax.set_xlim(left=0)


def _key_label(setting, h, g):
    """What the FP/PP key category ``g`` (a group index) is, seen from a query of group h."""
    if paper_shaped(setting):
        return "global area" if g == 0 else ("other local areas" if h == 1 else "local areas")
    return f"group {g}" + (" (other areas)" if g == h else "")


def _color(key):
    """One color per key category in every figure: own area, group 0, group 1, ..., self."""
    return {"own": "C0", "self": "0.45"}.get(key) or f"C{1 + key}"


def fp_figure(result, analysis=None, step_axis="linear"):
    """FP correlations over time, one panel per query class, phase switch marked.

    Parameters
    ----------
    result : Result
    analysis : Analysis, optional
        Its phase switches are marked (computed when not given).
    step_axis : {"linear", "symlog"}
        Scale of the step axis; symlog shows the first steps of a long run.

    Returns
    -------
    matplotlib.figure.Figure
    """
    s = result.setting
    analysis = analysis or analyze(result)
    fig, axes = _figure(len(analysis.classes))
    for ax, c in zip(axes, analysis.classes):
        for key in fp_keys(s, c.k, c.h):
            label = "own area" if key == "own" else _key_label(s, c.h, key)
            ax.plot(_x(result), result.fp(c.k, c.h, key), color=_color(key), label=label,
                    lw=1.8)
        if c.phase_switch is None:
            note = "own feature never leads"
        elif c.phase_switch == 0:
            note = "one phase: own feature leads from step 0"
        else:
            note = (f"phase switch at tau {c.switch_tau:.4g}" if result.is_flow
                    else f"phase switch at step {c.phase_switch}")
            ax.axvline(c.switch_tau if result.is_flow else c.phase_switch, color="0.3",
                       ls="--", lw=1, label=note)
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        ax.set_title(f"{c.name} query ({c.areas} x {c.size} patches)\n{note}", fontsize=10)
        _step_axis(ax, step_axis, result)
        ax.set_ylabel(r"FP correlation $e_p^\top Q\, v$ (per area)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(_title(result, "FP correlations"), fontsize=11)
    return fig


def attention_figure(result, analysis=None, step_axis="linear"):
    """Own-area attention (logit axis) and loss gap (log axis) over time, per query class.

    Parameters
    ----------
    result : Result
    analysis : Analysis, optional
        Its epsilon and convergence times T_eps are marked (computed when not given).
    step_axis : {"linear", "symlog"}
        Scale of the step axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .analysis import loss_gap

    analysis = analysis or analyze(result)
    eps = analysis.epsilon
    fig, (left, right) = _figure(2)
    for i, c in enumerate(analysis.classes):
        color = f"C{i}"
        a = result.attention(c.k, c.h, "own")
        left.plot(_x(result), np.clip(a, 1e-12, 1 - 1e-12), color=color, lw=1.8, label=c.name)
        if c.convergence_time is not None:
            when = c.convergence_tau if result.is_flow else c.convergence_time
            left.plot([when], [1 - eps], "o", color=color, ms=5,
                      label=f"{c.name}: T_eps = {when:.4g}" if result.is_flow
                      else f"{c.name}: T_eps = {when}")
        gap = loss_gap(result, c.k, c.h)
        right.plot(_x(result), np.where(gap > 0, gap, np.nan), color=color, lw=1.8,
                   label=c.name)
    left.axhline(1 - eps, color="0.3", ls="--", lw=1, label=f"1 - eps = {1 - eps:g}")
    left.set_yscale("logit")
    left.set_ylabel("own-area attention (logit scale)")
    left.set_title("expected attention of a masked query\non the unmasked patches of its own area",
                   fontsize=10)
    right.axhline(eps, color="0.3", ls="--", lw=1, label=f"eps = {eps:g}")
    right.set_yscale("log")
    right.set_ylabel("loss gap  E[l | k, h] - irreducible")
    right.set_title("expected loss of a masked query\nabove its irreducible part", fontsize=10)
    for ax in (left, right):
        _step_axis(ax, step_axis, result)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(_title(result, "convergence"), fontsize=11)
    return fig


def pp_figure(result, step_axis="linear"):
    """PP correlations beside the FP correlations, each on its own vertical scale.

    Colour tells the key category, line style the query class, so the legends list each
    once; the PP panel states how large PP gets relative to FP.

    Parameters
    ----------
    result : Result
    step_axis : {"linear", "symlog"}
        Scale of the step axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    Line2D = require("matplotlib.lines", "figures").Line2D
    s = result.setting
    fig, (left, right) = _figure(2)
    styles = ["-", "--", ":", "-."]
    paper = paper_shaped(s)
    classes = list(s.classes())
    keys, pp_keys = {}, {}  # key -> label, in the order first drawn, per panel
    for i, (k, h) in enumerate(classes):
        for key in fp_keys(s, k, h):
            keys.setdefault(key, "own area" if key == "own" else _key_label(s, h, key))
            left.plot(_x(result), result.fp(k, h, key), color=_color(key), ls=styles[i % 4],
                      lw=1.6)
    if s.pp == "exact":
        for i, (_, h) in enumerate(classes):
            for key in ["self"] + fp_keys(s, 0, h):
                pp_keys.setdefault(key, {"self": "itself"}.get(key) or keys.get(key)
                                   or _key_label(s, h, key))
                right.plot(_x(result), result.pp(h, key), color=_color(key),
                           ls=styles[i % 4], lw=1.6)
        pp, fp = pp_fp_sizes(result)
        if pp > 0:  # small PP curves stay apart from zero and from the largest one
            right.set_yscale("symlog", linthresh=pp * 1e-3)
        share = f"= {pp / fp:.1%} of the largest |FP|" if fp else "nothing learned yet"
        right.text(0.03, 0.97, f"largest |PP| = {pp:.3g}\n{share}", ha="left", va="top",
                   transform=right.transAxes, fontsize=9,
                   bbox={"facecolor": "white", "edgecolor": "0.7"})
    else:
        right.text(0.5, 0.5, "PP correlations frozen at 0\n(pp='frozen')", ha="center",
                   va="center", transform=right.transAxes)
    left.set_title(r"FP correlations $e_p^\top Q\, v$ (per area)", fontsize=10)
    right.set_title(r"PP correlations $e_p^\top Q\, e_q$ (per key position)" + "\n"
                    + "own scale: symlog, linear below 1/1000 of the largest", fontsize=10)
    left.set_ylabel("correlation")
    for ax in (left, right):
        ax.axhline(0, color="0.8", lw=0.8, zorder=0)
        _step_axis(ax, step_axis, result)
    def key_legend(ax, labels, loc):  # each panel lists the keys it draws
        return ax.legend([Line2D([], [], color=_color(key), lw=1.6) for key in labels],
                         [f"key: {label}" for label in labels.values()], fontsize=7, loc=loc)

    left.add_artist(key_legend(left, keys, "upper left"))  # the classes' legend follows
    if pp_keys:
        key_legend(right, pp_keys, "lower right")
    left.legend([Line2D([], [], color="0.3", ls=styles[i % 4], lw=1.6)
                 for i in range(len(classes))],
                [f"{class_name(s, k, h, paper)} query" for k, h in classes], fontsize=7,
                loc="lower left")
    fig.suptitle(_title(result, "PP stays small beside FP"), fontsize=11)
    return fig


def _title(result, what):
    s = result.setting
    gap = f", Delta = {s.delta:+.2f}" if paper_shaped(s) else ""
    run = "gradient flow" if result.is_flow else f"eta = {result.eta:g}"
    return f"{what}: P = {s.P:,}, masked {s.masked:,}{gap}, {run}"


FIGURES = {"fp": fp_figure, "attention": attention_figure, "pp": pp_figure}


def save_figures(result, folder, analysis=None, step_axis="linear"):
    """Write every figure of :data:`FIGURES` as ``<folder>/<name>.png``.

    Parameters
    ----------
    result : Result
    folder : str or Path
        Created if missing.
    analysis : Analysis, optional
    step_axis : {"linear", "symlog"}
        Scale of the step axis of every figure.

    Returns
    -------
    list of pathlib.Path
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    analysis = analysis or analyze(result)
    paths = []
    for name, make in FIGURES.items():
        fig = (make(result, step_axis=step_axis) if name == "pp"
               else make(result, analysis, step_axis=step_axis))
        path = folder / f"{name}.png"
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=DPI, format="png")
        paths.append(path)
    return paths
