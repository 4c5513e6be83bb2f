"""One benchmark's result: median figure, median baseline, their ratio and the target.

The ratio is the median of the ratios of paired runs (each run and the baseline run
beside it), not the ratio of the medians: on a shared, noisy machine a slow spell then
slows both members of a pair alike.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True, slots=True)
class Target:
    """Either a minimum ratio to the baseline or a minimum absolute figure."""

    kind: Literal["ratio", "absolute"]
    minimum: float

    def describe(self, unit: str) -> str:
        if self.kind == "ratio":
            return f">= {self.minimum:.2f} of baseline"
        return f">= {_number(self.minimum)} {unit}"


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    unit: str
    samples: list[float]
    baseline_name: str
    baseline_samples: list[float]
    target: Target
    notes: list[str] = field(default_factory=list)

    @property
    def figure(self) -> float:
        return statistics.median(self.samples)

    @property
    def baseline(self) -> float:
        return statistics.median(self.baseline_samples)

    @property
    def ratios(self) -> list[float]:
        """Each run over the baseline run next to it: drift of a noisy machine cancels out."""
        return [s / b for s, b in zip(self.samples, self.baseline_samples, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def of_target(self) -> float:
        """How far along to the target: 1.0 or more means met."""
        achieved = self.ratio if self.target.kind == "ratio" else self.figure
        return achieved / self.target.minimum

    @property
    def met(self) -> bool:
        return self.of_target >= 1.0

    def line(self) -> str:
        verdict = "met" if self.met else "MISSED"
        return (
            f"{self.name}: {_number(self.figure)} {self.unit} | "
            f"{self.baseline_name} {_number(self.baseline)} {self.unit} | "
            f"ratio {self.ratio:.2f} | target {self.target.describe(self.unit)}: "
            f"{verdict} ({self.of_target:.2f} of target)"
        )

    def detail(self) -> str:
        runs = ", ".join(_number(s) for s in self.samples)
        base = ", ".join(_number(s) for s in self.baseline_samples)
        ratios = ", ".join(f"{r:.2f}" for r in self.ratios)
        lines = [
            f"  median of {len(self.samples)} | runs: {runs} | "
            f"{self.baseline_name} runs: {base} | ratios: {ratios}"
        ]
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
