"""Results whose target is a maximum: peak memory, time to stop, latency under load.

``report.Target`` knows minimums only. Earlier benchmarks turned a maximum into a minimum
of "headroom" (budget / measured); here the figure stays what was measured (MiB, seconds,
a ratio to the baseline), printed by the same ``Result.line`` as every other result, with
a target that reads ``<=``. ``of_target`` is the budget over the figure (or over the
ratio): 1.0 or more means met, as for the other results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bench.report import Result, Target


@dataclass(frozen=True, slots=True)
class AtMost(Target):
    """A maximum: the largest figure (``kind="absolute"``) or ratio that meets the target.

    Stored in ``minimum``, the field the base class has; read it as :attr:`maximum`.
    """

    @property
    def maximum(self) -> float:
        return self.minimum

    def describe(self, unit: str) -> str:
        if self.kind == "ratio":
            return f"<= {self.maximum:.2f} of baseline"
        return f"<= {self.maximum:,.4g} {unit}"


@dataclass(frozen=True, slots=True)
class CeilingResult(Result):
    """A result met when its figure (or its ratio to the baseline) is at most the target."""

    def __post_init__(self) -> None:
        if not isinstance(self.target, AtMost):
            raise TypeError("a CeilingResult's target is an AtMost")

    @property
    def of_target(self) -> float:
        achieved = self.ratio if self.target.kind == "ratio" else self.figure
        return self.target.minimum / achieved if achieved > 0 else math.inf
