"""Figures for the report, drawn with matplotlib (headless) from the query views' records.

Each function takes plain records (dicts from the query views), writes one PNG and
returns what the report needs to say about it: epsilon curves, accuracy against flash,
robust accuracy against each deployed resource (``budget``, with ``pareto_front``), and
the transfer heatmap. Colours follow the quantizer registry's
order, so a preset has the same colour in every figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sweeper.models.quantizers import QUANTIZERS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: reports are rendered on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    """Write the PNG as every report file is written (sweeper.analysis.output: whole, and never
    through a link or over a device), and free the figure."""
    from sweeper.analysis import output

    try:
        output.write(str(path), "--out", lambda temporary: figure.savefig(temporary, dpi=110, format="png"),
                     force=True)
    finally:
        _pyplot().close(figure)


def fit_title(figure, axes, text: str, size: float = 10) -> None:
    """Set ``axes``' title, wrapped onto as many lines as keep it inside the figure's width
    (a long attack label would otherwise run off both edges)."""
    import textwrap

    title = axes.set_title(text, fontsize=size)
    limit = 0.95 * figure.get_figwidth() * figure.dpi
    drawn = title.get_window_extent(figure.canvas.get_renderer()).width
    if drawn > limit:
        chars = max(10, int(len(text) * limit / drawn))
        title.set_text("\n".join(textwrap.wrap(text, chars, break_long_words=True, break_on_hyphens=False)))


def _colour(quantizer: str):
    plt = _pyplot()
    names = QUANTIZERS.names()
    index = names.index(quantizer) if quantizer in names else len(names)
    return plt.get_cmap("tab10")(index % 10)


def eps_curve(points: list[dict], path: Path, title: str, chance: float | None) -> None:
    """Adversarial accuracy against epsilon, one line per (model, quantizer), ± fold std."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    by_quantizer: dict[str, list[dict]] = {}
    for point in points:
        by_quantizer.setdefault(point["quantizer"], []).append(point)
    order = {name: i for i, name in enumerate(QUANTIZERS.names())}
    for quantizer in sorted(by_quantizer, key=lambda q: order.get(q, 99)):
        line = sorted(by_quantizer[quantizer], key=lambda p: p["eps"])
        eps = [p["eps"] for p in line]
        mean = [p["adv_acc_mean"] for p in line]
        std = [p["adv_acc_std"] or 0.0 for p in line]
        axes.plot(eps, mean, marker="o", label=quantizer, color=_colour(quantizer))
        axes.fill_between(eps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                          color=_colour(quantizer), alpha=0.15)
    if chance:
        axes.axhline(chance, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel=f"epsilon (L{line[0]['norm']})", ylabel="accuracy under attack", ylim=(-0.02, 1.02))
    fit_title(figure, axes, title)
    axes.legend(fontsize=8, ncol=2)
    figure.tight_layout()
    _save(figure, path)


def pareto(configs: list[dict], mcus: list[dict], path: Path, title: str,
           label: Callable[[dict], str]) -> list[dict]:
    """Clean accuracy against flash KB (log scale) with MCU flash budgets; returns the
    Pareto-optimal configurations, smallest first."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for config in configs:
        axes.errorbar(config["flash_kb"], config["test_acc_mean"], yerr=config["test_acc_std"] or 0,
                      fmt="o", color=_colour(config["quantizer"]), capsize=3)
        axes.annotate(label(config), (config["flash_kb"], config["test_acc_mean"]), fontsize=7,
                      textcoords="offset points", xytext=(4, 4))
    front = pareto_front(configs)
    if front:
        axes.step([c["flash_kb"] for c in front], [c["test_acc_mean"] for c in front], where="post",
                  color="black", linewidth=1, alpha=0.6)
    for index, mcu in enumerate(mcus):
        axes.axvline(mcu["flash_kb"], color=f"C{index}", linestyle="--", linewidth=1)
        axes.annotate(f"{mcu['name']} flash", (mcu["flash_kb"], 0.02), rotation=90, fontsize=7,
                      xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(-8, 0))
    axes.set_xscale("log")
    axes.set(xlabel="flash KB (deployed: int8 .tflite + runtime allowance)", ylabel="clean accuracy")
    fit_title(figure, axes, title)
    figure.tight_layout()
    _save(figure, path)
    return front


def pareto_front(points: list[dict], x: str = "flash_kb", y: str = "test_acc_mean") -> list[dict]:
    """The points no other beats: none has ``x`` no larger and ``y`` no smaller, one of
    them strictly (points equal in both are all kept); by ``x``, smallest first."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p[x], -p[y])):
        if point[y] > best:
            front.append(point)
            best = point[y]
        elif front and (point[x], point[y]) == (front[-1][x], front[-1][y]):
            front.append(point)  # an equal of a member: nothing beats it either
    return front


# The robustness-against-budget panels: axis name -> (point key, axis label, MCU limit key).
BUDGET_AXES = {
    "flash": ("flash_kb", "deployed flash KB (.tflite + runtime allowance)", "flash_kb"),
    "RAM": ("ram_kb", "deployed RAM KB (TFLM arena + margin)", "ram_block_kb"),
    "latency": ("latency_ms", None, None),  # its label names the runtime and MCU it assumes
}
BUILD_MARKERS = {"int8": "o", "lut": "s", "int4": "^"}


def budget(points: list[dict], mcus: list[dict], latency_label: str | None, path: Path, title: str,
           label: Callable[[dict], str]) -> dict[str, list[dict]]:
    """Robust accuracy against each resource (``BUDGET_AXES``), one panel each, one
    marker per point and build: filled the QKeras worst case (``model_acc``), hollow the
    deployed one (``deployed_acc``); each MCU's limit dashed; the Pareto front of
    (resource, ``shipped``) as a step line, its members labelled. Returns each panel's
    front. The latency panel is drawn only with ``latency_label`` and points that have one."""
    plt = _pyplot()
    axes_used = [axis for axis, (key, _, _) in BUDGET_AXES.items()
                 if any(p.get(key) is not None for p in points) and (axis != "latency" or latency_label)]
    figure, panels = plt.subplots(1, len(axes_used), figsize=(4.6 * len(axes_used), 4.4), sharey=True,
                                  squeeze=False)
    fronts = {}
    for panel, axis in zip(panels[0], axes_used):
        key, axis_label, limit = BUDGET_AXES[axis]
        placed = [p for p in points if p.get(key) is not None]
        for point in placed:
            _budget_point(panel, point, point[key])
        fronts[axis] = pareto_front([p for p in placed if p["shipped"] is not None], key, "shipped")
        panel.step([p[key] for p in fronts[axis]], [p["shipped"] for p in fronts[axis]], where="post",
                   color="black", linewidth=1, alpha=0.7)
        for point in fronts[axis]:
            panel.annotate(label(point), (point[key], point["shipped"]), fontsize=6, textcoords="offset points",
                           xytext=(3, 3))
        for index, mcu in enumerate(mcus if limit else []):
            panel.axvline(mcu[limit], color=f"C{index}", linestyle="--", linewidth=1)
            panel.annotate(mcu["name"], (mcu[limit], 0.98), rotation=90, fontsize=6, va="top",
                           xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(-8, 0))
        panel.set_xscale("log")
        panel.set_xlabel(axis_label or latency_label, fontsize=8)
        panel.set_title(axis, fontsize=9)
    panels[0][0].set(ylabel="robust accuracy (worst case)", ylim=(-0.02, 1.02))
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="grey", label=f) for f, m in BUILD_MARKERS.items()]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color="grey", label="QKeras worst case"),
                plt.Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="grey",
                           label="deployed worst case")]
    handles += [plt.Line2D([], [], marker="s", linestyle="", color=_colour(q), label=q)  # colour: quantizer
                for q in dict.fromkeys(p["quantizer"] for p in points)]
    panels[0][-1].legend(handles=handles, fontsize=6, loc="center right")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    return fronts


def _budget_point(panel, point: dict, x: float) -> None:
    """A build's QKeras (filled) and deployed (hollow) worst case at ``x``, joined."""
    colour, marker = _colour(point["quantizer"]), BUILD_MARKERS.get(point["deploy_format"], "D")
    both = [y for y in (point["model_acc"], point["deployed_acc"]) if y is not None]
    if len(both) == 2:
        panel.plot([x, x], both, color=colour, linewidth=0.6, alpha=0.5)
    if point["model_acc"] is not None:
        panel.scatter([x], [point["model_acc"]], marker=marker, color=colour, s=28)
    if point["deployed_acc"] is not None:
        panel.scatter([x], [point["deployed_acc"]], marker=marker, facecolors="none", edgecolors=[colour], s=80,
                      linewidths=1.4)  # larger: a ring around the filled marker where both are equal


def transfer_matrix(values: list[list[float]], sources: list[str], targets: list[str], path: Path,
                    title: str) -> None:
    """A heatmap of the target's accuracy (columns) on each source's examples (rows);
    NaN cells (no such pair) are left blank."""
    import numpy as np

    plt = _pyplot()
    grid = np.array(values, dtype=float)
    figure, axes = plt.subplots(figsize=(max(5.0, 2.0 + 1.1 * len(targets)), max(2.6, 1.6 + 0.6 * len(sources))))
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (row, column), value in np.ndenumerate(grid):
        if value == value:
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if value < 0.5 else "black")
    axes.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(len(sources)), sources, fontsize=8)
    axes.set(xlabel="target", ylabel="source")
    fit_title(figure, axes, title, 9)
    figure.colorbar(image, ax=axes, label="target accuracy")
    figure.tight_layout()
    _save(figure, path)
