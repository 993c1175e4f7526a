"""PNG plots of the results: throughput bars (ours vs its counterpart) and latency distributions (CDFs)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.ticker import ScalarFormatter

from bench.figures import CELERY_RESULTS, RAW_CELERY, Figure, Results

OURS_COLOUR = "tab:blue"
#: the counterparts a throughput bar may stand beside ours, and their colours
COUNTERPART_COLOURS = {RAW_CELERY: "tab:gray", CELERY_RESULTS: "tab:orange"}


def write_plots(out: Path, results: Results) -> list[Path]:
    written = []
    throughput = [
        f
        for f in results
        if f.unit == "jobs/s" and f.baseline in COUNTERPART_COLOURS and f.raw_runs and f.key != "drain_io.recommended"
    ]
    if throughput:
        written.append(throughput_bars(out / "throughput.png", throughput))
    distributions = [f for f in results if f.samples]
    if distributions:
        written.append(latency_cdfs(out / "latency.png", distributions))
    return written


def throughput_bars(path: Path, figures: list[Figure]) -> Path:
    """Median of each side, a bar each, with a whisker from the slowest run to the fastest."""
    fig, ax = plt.subplots(figsize=(10, 0.9 * len(figures) + 1.5))
    height = 0.38
    for index, figure in enumerate(figures):
        for offset, runs, median, colour in (
            (-height / 2, figure.ours_runs, figure.ours, OURS_COLOUR),
            (height / 2, figure.raw_runs, figure.raw, COUNTERPART_COLOURS[figure.baseline]),
        ):
            ax.barh(index + offset, median, height, color=colour)
            ax.errorbar(
                median, index + offset, xerr=[[median - min(runs)], [max(runs) - median]], color="black", capsize=3
            )
            ax.text(median, index + offset, f" {median:,.0f}", va="center", fontsize=8)
    ax.set_yticks(range(len(figures)), [textwrap.fill(f.label, 60) for f in figures], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("jobs/s (median; whiskers: slowest and fastest run)")
    shown = [name for name in COUNTERPART_COLOURS if any(f.baseline == name for f in figures)]
    swatches = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (OURS_COLOUR, *map(COUNTERPART_COLOURS.get, shown))]
    ax.legend(handles=swatches, labels=["ours", *shown])
    ax.set_title(f"Throughput, ours vs {' and '.join(shown)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cdfs(path: Path, figures: list[Figure]) -> Path:
    """Each latency figure's samples of every run, as cumulative distributions."""
    fig, axes = plt.subplots(len(figures), 1, figsize=(9, 3.2 * len(figures)), squeeze=False)
    for ax, figure in zip(axes[:, 0], figures, strict=True):
        for side, values in figure.samples.items():
            ordered = sorted(values)
            ax.step(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=side)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel(figure.unit)
        ax.set_ylabel("fraction of samples")
        ax.set_title(textwrap.fill(figure.label, 90), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
