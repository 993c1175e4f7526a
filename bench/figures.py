"""Figures: each run's value of ours and of its counterpart, their medians, the ratio and the goal.

The counterpart is raw Celery measured in the same run, Celery + django-celery-results (the
single-message drain: a figure of its own beside the one against raw Celery), or for a few figures
a baseline of the platform itself (idle, after 1,000 jobs), named by ``Figure.baseline``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Goal:
    """What a figure must reach, as the table shows it and as a test of (ours, counterpart)."""

    text: str
    test: Callable[[float, float | None], bool] | None = None


def ratio_at_least(minimum: float) -> Goal:
    return Goal(f">= {minimum:g}x", lambda ours, raw: bool(raw) and ours / raw >= minimum)


def ratio_at_most(maximum: float) -> Goal:
    return Goal(f"<= {maximum:g}x", lambda ours, raw: bool(raw) and ours / raw <= maximum)


def at_least(minimum: float, unit: str) -> Goal:
    return Goal(f">= {minimum:,g} {unit}", lambda ours, _: ours >= minimum)


def at_most(maximum: float, unit: str) -> Goal:
    return Goal(f"<= {maximum:,g} {unit}", lambda ours, _: ours <= maximum)


def over_raw_at_most(extra: float) -> Goal:
    return Goal(f"<= raw + {extra:g}", lambda ours, raw: raw is not None and ours <= raw + extra)


REPORT = Goal("report")

RAW_CELERY = "raw Celery"
#: the second counterpart (bench.dcr_app): Celery with its task states in the database
CELERY_RESULTS = "Celery + django-celery-results"


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    goal: Goal = REPORT
    #: what the counterpart column holds; None when there is none
    baseline: str | None = RAW_CELERY
    #: "main": the summary table; another name: a table of its own (every topology of a scenario)
    section: str = "main"
    ours_runs: list[float] = field(default_factory=list)
    raw_runs: list[float] = field(default_factory=list)
    #: latency samples of every run, pooled, for the distribution plots
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: anything else a run measured (sizes, seconds, counts), per run
    details: list[dict[str, Any]] = field(default_factory=list)

    def record(self, ours: float, raw: float | None = None, **details: Any) -> None:
        if not math.isfinite(ours) or (raw is not None and not math.isfinite(raw)):
            raise ValueError(f"{self.key}: not a number ({ours}, {raw})")
        self.ours_runs.append(ours)
        if raw is not None:
            self.raw_runs.append(raw)
        self.details.append(details)

    def add_samples(self, side: str, values: list[float]) -> None:
        self.samples.setdefault(side, []).extend(values)

    @property
    def ours(self) -> float:
        return statistics.median(self.ours_runs)

    @property
    def raw(self) -> float | None:
        return statistics.median(self.raw_runs) if self.raw_runs else None

    @property
    def ratio(self) -> float | None:
        raw = self.raw
        return self.ours / raw if raw else None

    @property
    def met(self) -> bool | None:
        return None if self.goal.test is None else self.goal.test(self.ours, self.raw)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "baseline": self.baseline,
            "goal": self.goal.text,
            "ours": {"median": self.ours, "runs": self.ours_runs},
            "raw": {"median": self.raw, "runs": self.raw_runs} if self.raw_runs else None,
            "ratio": self.ratio,
            "met": self.met,
            "details": self.details,
            "samples": self.samples,
        }


class Results:
    """The figures in the order they were first recorded."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}

    def figure(self, key: str, label: str, unit: str, **spec: Any) -> Figure:
        """The figure ``key``, made on first use (every run of a scenario asks for it again)."""
        if key not in self.figures:
            self.figures[key] = Figure(key, label, unit, **spec)
        return self.figures[key]

    def __iter__(self):
        return iter(self.figures.values())


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]
