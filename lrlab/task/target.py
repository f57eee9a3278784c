"""The target: a metric with a direction (`Target("accuracy", 0.97)`, `Target("loss", 1.5, "min")`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from absl import logging

MODES = ("max", "min")
LOWER_IS_BETTER = ("loss", "error", "perplexity", "nll", "mse", "mae", "bpc")  # metric names read as "min"


def inferred_mode(metric: str) -> str:
    """The direction a metric's name implies: "min" for a loss, an error or a perplexity, else "max"."""
    return "min" if any(word in metric.lower() for word in LOWER_IS_BETTER) else "max"


@dataclasses.dataclass(frozen=True)
class Target:
    """A metric with a direction: reached at the first evaluation where metric >= goal ("max")
    or metric <= goal ("min"). Without a mode, the metric's name gives it (`inferred_mode`: a loss
    is minimised), and the inference is logged. An accuracy's goal lies in (0, 1]."""

    metric: str = "accuracy"
    goal: float = 0.97
    mode: str | None = None

    def __post_init__(self):
        if self.mode is None:
            object.__setattr__(self, "mode", inferred_mode(self.metric))
            if self.mode == "min":
                logging.info("target %s: lower is better (inferred from its name; say mode='max' otherwise)",
                             self.metric)
        if self.mode not in MODES:
            raise ValueError(f"target mode must be 'max' or 'min', got {self.mode!r}")
        if not math.isfinite(self.goal):
            raise ValueError(f"the target's goal must be finite, got {self.goal}")
        if "accuracy" in self.metric.lower() and not 0 < self.goal <= 1:
            raise ValueError(f"the target's goal for {self.metric} must lie in (0, 1], got {self.goal:g}")

    def reached(self, value: Any, goal: Any = None) -> Any:
        """Works on numpy and jax arrays; `goal` (data, for the compiled program) defaults to ours."""
        goal = self.goal if goal is None else goal
        return value >= goal if self.mode == "max" else value <= goal

    def score(self, value: Any) -> Any:
        """Higher is better: the metric, negated for a "min" target."""
        return value if self.mode == "max" else -value

    @property
    def unreachable(self) -> float:
        """A goal no member reaches (PBT, the range test: nobody freezes at the target)."""
        return math.inf if self.mode == "max" else -math.inf

    def shortfall(self, best: float) -> float:
        """How far the best value stayed from the goal, in [0, 1]: the goal minus the best, clipped
        (a "max" target: an accuracy's shortfall is itself); for a "min" target the excess over
        the goal relative to the goal, squashed as d / (1 + d)."""
        if best is None or not math.isfinite(best):
            return 1.0
        if self.mode == "max":
            return min(max(self.goal - best, 0.0), 1.0)
        excess = max(best - self.goal, 0.0) / max(abs(self.goal), 1e-12)
        return excess / (1.0 + excess)

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.mode == 'max' else '<='} {self.goal:g}"

    def with_goal(self, goal: float) -> Target:
        return dataclasses.replace(self, goal=float(goal))
