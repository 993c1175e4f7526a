"""latest.md (the tables a reader wants) and latest.json (every run's value, and the medians)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.figures import RAW_CELERY, Figure, Results

NONE = "-"

#: sections other than "main", as their tables are titled
SECTION_TITLES = {"drain_io": "Drain of short I/O-bound jobs, every topology measured"}


def write_json(path: Path, results: Results, environment: dict[str, Any]) -> None:
    document = {"environment": environment, "figures": [figure.as_json() for figure in results]}
    path.write_text(json.dumps(document, indent=1) + "\n")


def write_markdown(path: Path, results: Results, environment: dict[str, Any], plots: list[Path]) -> None:
    runs = environment["runs"]
    lines = [
        "# Benchmark results",
        "",
        f"`make bench` (`python -m bench`), {environment['date']}. Every figure is the median of {runs} "
        f"run{'s' if runs > 1 else ''}; its raw-Celery counterpart was measured in the same runs (raw first, "
        "then ours), with the same sizes and the same worker topology. Where the counterpart is not raw "
        "Celery (Celery + django-celery-results, measured between raw and ours, or a baseline of the "
        "platform itself), the raw column names it.",
        "",
        *table([figure for figure in results if figure.section == "main"]),
    ]
    for section, title in SECTION_TITLES.items():
        figures = [figure for figure in results if figure.section == section]
        if figures:
            lines += ["", f"## {title}", "", *table(figures)]
    lines += ["", "## Environment", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in environment_rows(environment)]
    lines += ["", "## Sizes", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {value:,g} |" for name, value in environment["sizes"].items()]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{plot.stem}]({plot.name})" for plot in plots]
    path.write_text("\n".join(lines) + "\n")


def table(figures: list[Figure]) -> list[str]:
    rows = ["| figure | ours | raw | ratio | goal | met? |", "|---|---:|---:|---:|---|---|"]
    for figure in figures:
        raw = NONE if figure.raw is None else number(figure.raw)
        if figure.raw is not None and figure.baseline != RAW_CELERY:
            raw += f" ({figure.baseline})"
        ratio = NONE if figure.ratio is None else f"{figure.ratio:.2f}x"
        met = {None: NONE, True: "yes", False: "**no**"}[figure.met]
        cells = [f"{figure.label} ({figure.unit})", number(figure.ours), raw, ratio, figure.goal.text, met]
        rows.append(f"| {' | '.join(cells)} |")
    return rows


def number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def environment_rows(environment: dict[str, Any]) -> list[tuple[str, str]]:
    load = environment["load_average"]
    timings = environment["seconds_per_run"].items()
    return [
        ("date", environment["date"]),
        ("CPUs", str(environment["cpus"])),
        ("load average (1 min) at start / end", f"{load['start']:.2f} / {load['end']:.2f}"),
        ("Python", environment["python"]),
        ("Celery / kombu", f"{environment['celery']} / {environment['kombu']}"),
        ("django-celery-results (a counterpart)", environment.get("django_celery_results", NONE)),
        ("Django", environment["django"]),
        ("database", environment["database"]),
        ("Redis", environment["redis"]),
        ("worker flags (every side)", f"`{environment['worker_flags']}`"),
        ("runs per figure", str(environment["runs"])),
        ("duration", f"{environment['duration_seconds'] / 60:.1f} min"),
        ("longest run of each scenario", ", ".join(f"{name} {max(times):.0f} s" for name, times in timings)),
    ]
