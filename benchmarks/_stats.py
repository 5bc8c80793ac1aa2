"""Percentiles of latency samples, per run and as the median across runs."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Final

import attrs

PERCENTILES: Final = (50, 90, 99)


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@attrs.frozen(kw_only=True)
class RunSummary:
    """One run's percentiles, in milliseconds."""

    p50: float
    p90: float
    p99: float
    count: int

    @classmethod
    def of(cls, seconds: Sequence[float]) -> RunSummary:
        ms = [s * 1000.0 for s in seconds]
        return cls(p50=percentile(ms, 50), p90=percentile(ms, 90), p99=percentile(ms, 99), count=len(ms))


@attrs.frozen(kw_only=True)
class ArmSummary:
    """An arm over several runs: each run's percentiles and their median across runs."""

    runs: tuple[RunSummary, ...]

    @property
    def p50(self) -> float:
        return statistics.median(run.p50 for run in self.runs)

    @property
    def p90(self) -> float:
        return statistics.median(run.p90 for run in self.runs)

    @property
    def p99(self) -> float:
        return statistics.median(run.p99 for run in self.runs)

    @classmethod
    def of(cls, runs: Sequence[Sequence[float]]) -> ArmSummary:
        return cls(runs=tuple(RunSummary.of(run) for run in runs if run))
