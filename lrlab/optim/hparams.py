"""One float hyperparameter (`HParam`): its default, where it is valid, where a search looks, and
its help. The command-line flags, the searches and PBT read every hyperparameter's facts from here.
"""

from __future__ import annotations

import dataclasses
import math

LEARNING_RATE = "learning_rate"


@dataclasses.dataclass(frozen=True)
class HParam:
    """One float hyperparameter: its default, where it is valid, and where a search looks.

    Valid: low..high, each end closed unless `open_low` / `open_high`. Search: the range a random
    or Bayesian search and PBT use when none is given ((low, high, log-scale)).
    """

    default: float | None = None  # None: every population must give it (the learning rate)
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    search: tuple[float, float, bool] | None = None
    help: str = ""

    def describe_range(self) -> str:
        low = f"{'(' if self.open_low else '['}{self.low:g}"
        high = f"{self.high:g}{')' if self.open_high else ']'}"
        return f"{low}, {high}"

    def check(self, name: str, value: float) -> float:
        """`value` as a float, or ValueError naming `name` and its valid range."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        ok = (math.isfinite(value) and (value > self.low if self.open_low else value >= self.low)
              and (value < self.high if self.open_high else value <= self.high))
        if not ok:
            raise ValueError(f"{name} must be finite and in {self.describe_range()}, got {value:g}")
        return value


RATE = HParam(None, 0.0, math.inf, open_low=True, search=(1e-6, 100.0, True), help="Learning rate.")
UNIT = dict(low=0.0, high=1.0, open_high=True)  # averaging coefficients: 1 would stop them averaging
POSITIVE = dict(low=0.0, high=math.inf)
