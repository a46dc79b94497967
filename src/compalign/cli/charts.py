"""One grouped-bar chart for every PNG the CLI writes (demo, study, compare): panels side by side, a group of
bars per tick, a bar per series, optional interval error bars. Files only: matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path

Interval = list[float] | None


def grouped_bars(path: Path, titles: list[str], ticks: list[str], series: dict[str, list[list[float]]],
                 intervals: dict[str, list[list[Interval]]] | None = None, ylabel: str = "%",
                 figsize: tuple[float, float] = (14, 4.5), legend_outside: bool = False, rotation: int = 45) -> None:
    """series[name][panel][tick] = value; intervals[name][panel][tick] = [low, high] or None (no error bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(titles), figsize=figsize, sharey=True, squeeze=False)
    axes = axes[0]
    x = np.arange(len(ticks))
    width = 0.8 / max(1, len(series))
    for p, (ax, title) in enumerate(zip(axes, titles)):
        for j, (name, per_panel) in enumerate(series.items()):
            vals = np.asarray(per_panel[p], dtype=float)
            err = None
            if intervals is not None:
                cis = np.array([ci or [v, v] for ci, v in zip(intervals[name][p], vals)], dtype=float).reshape(-1, 2)
                err = np.nan_to_num(np.abs(np.stack([vals - cis[:, 0], cis[:, 1] - vals])))  # below / above the top
            ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, yerr=err, capsize=2 if err is not None else 0,
                   label=name)
        ax.set_xticks(x)
        ax.set_xticklabels(ticks, rotation=rotation, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if legend_outside:  # beside the axes: never over a bar or its interval
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1, 1), fontsize=8)
    else:
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
