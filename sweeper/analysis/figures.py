"""Figures for the report, drawn with matplotlib (headless) from the query views' records.

Each function takes plain records (dicts from the ``robust`` view), writes one PNG and
returns what the report needs to say about it. Colours follow the quantizer registry's
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


def pareto_front(configs: list[dict]) -> list[dict]:
    """Configurations no other beats on both flash (smaller) and accuracy (higher)."""
    front, best = [], float("-inf")
    for config in sorted(configs, key=lambda c: (c["flash_kb"], -c["test_acc_mean"])):
        if config["test_acc_mean"] > best:
            front.append(config)
            best = config["test_acc_mean"]
    return front


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
