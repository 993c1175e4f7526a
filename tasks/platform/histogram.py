"""Fixed, log-spaced histogram buckets for durations, and percentiles read from bucket counts.

Every process puts a duration in the same bucket, so counts add up across processes, minutes and
hours, and a percentile of any sum of them is computed from the counts alone: its error is bounded
by a bucket's width (each boundary is 2^(1/4), about 19 %, above the one before), whatever the
number of jobs. Bucket ``i`` holds durations ``d`` with ``BOUNDS[i-1] < d <= BOUNDS[i]``
(Prometheus's ``le``); the last one, past ``BOUNDS[-1]``, holds everything longer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

#: the smallest upper bound (seconds); anything faster is in the first bucket
SMALLEST = 0.001
#: buckets per doubling
PER_DOUBLING = 4
#: doublings from SMALLEST to the largest bound (2^22 ms: about 70 minutes)
DOUBLINGS = 22
#: upper bounds in seconds, rounded so that they print exactly
BOUNDS: tuple[float, ...] = tuple(
    float(f"{SMALLEST * 2 ** (step / PER_DOUBLING):.6g}") for step in range(DOUBLINGS * PER_DOUBLING + 1)
)
#: how many buckets a histogram has: one per bound, and the overflow
SIZE = len(BOUNDS) + 1
#: the bounds Prometheus is shown (every doubling: 1 ms, 2 ms, 4 ms, ...); cumulative counts at a
#: subset of the bounds are exact, so the coarser exposition loses nothing it shows
EXPOSED_BOUNDS: tuple[int, ...] = tuple(range(0, len(BOUNDS), PER_DOUBLING))


def bucket_of(seconds: float) -> int:
    """The bucket a duration falls in (a negative one, from clocks apart, in the first)."""
    return bisect.bisect_left(BOUNDS, seconds)


def empty() -> list[int]:
    return [0] * SIZE


def merged(histograms: Iterable[Sequence[int]]) -> list[int]:
    """The sum of histograms, bucket by bucket."""
    total = empty()
    for histogram in histograms:
        for index, count in enumerate(histogram[:SIZE]):
            total[index] += count
    return total


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the durations counted, in seconds; None when empty.
    Interpolated linearly inside its bucket, as Prometheus's ``histogram_quantile`` does; a
    quantile in the overflow bucket is reported as the largest bound."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            if index >= len(BOUNDS):
                return BOUNDS[-1]
            lower = BOUNDS[index - 1] if index else 0.0
            return lower + (BOUNDS[index] - lower) * max(rank - seen, 0) / count
        seen += count
    return BOUNDS[-1]


def percentiles(histogram: Sequence[int]) -> dict[str, float | None]:
    """p50, p95 and p99, in seconds (None when nothing was counted)."""
    return {name: percentile(histogram, q) for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def cumulative(histogram: Sequence[int]) -> list[tuple[float, int]]:
    """Prometheus's buckets: (upper bound, count of durations at or below it) at EXPOSED_BOUNDS,
    then (+Inf, total)."""
    running, out, exposed = 0, [], set(EXPOSED_BOUNDS)
    for index, count in enumerate(histogram[: len(BOUNDS)]):
        running += count
        if index in exposed:
            out.append((BOUNDS[index], running))
    out.append((math.inf, sum(histogram)))
    return out
