"""The three figures, drawn with matplotlib (the optional extra `plots`) without a display."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    return plt


def heatmap(values: Sequence[Sequence[float]], rows: Sequence[str], columns: Sequence[str], path: str | Path,
            title: str) -> None:
    """values[row][column] in [0, 1] (below 0 is drawn as 0) as the paper's Fig. 4: one row per model, one
    column per task, the number in every cell."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 1.6 * len(columns)), 1.2 + 0.5 * len(rows)))
    ax.imshow([[max(v, 0.0) for v in row] for row in values], cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(columns)), labels=columns)
    ax.set_yticks(range(len(rows)), labels=rows)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=10)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_panels(panels: Sequence[tuple[str, dict[str, tuple[Sequence[float], Sequence[float]]]]], path: str | Path,
                xlabel: str, ylabel: str, title: str, logx: bool = False, vline: float | None = None,
                ylim: tuple[float, float] | None = None) -> None:
    """One panel per (panel title, {line label: (xs, ys)}), side by side with a shared y axis; `vline` marks an x
    (the training length)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(0.5 + 3.8 * len(panels), 3.6), sharey=True, squeeze=False)
    for ax, (panel_title, lines) in zip(axes[0], panels):
        for label, (xs, ys) in lines.items():
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(next(iter(lines.values()))[0]), labels=[f"{x:g}" for x in next(iter(lines.values()))[0]])
        if vline is not None:
            ax.axvline(vline, color="grey", linestyle="--", linewidth=1)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
