"""Retirement (`--retire`, on by default): stop training members whose outcome is already known.

A member whose target metric has stayed at chance (no better than the best constant predictor of
the evaluation set, plus a margin) for `evaluations` consecutive evaluations, at or after
`grace_steps`, has failed: it becomes RETIRED (neither diverged nor exhausted), and the loop's
re-packing hands its compute to the others. "Chance" comes from the task (`Task.chance_value`);
a task that does not give it is never retired.

The rule is one pure function of a member's evaluations (`Streak`), shared by the runner's hook and
by `benchmarks/retirement_replay.py`, which replays it on every committed learning curve and on fresh
runs of the six optimizers: that replay chose the constants below (no member that reached the
target would have been retired; see the benchmark's JSON).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from lrlab import population as pop_lib
from lrlab import runner
from lrlab.population import TrainData
from lrlab.tasks import Target, Task


@dataclasses.dataclass(frozen=True)
class RetireSpec:
    """At chance (target score <= chance's score + margin, in the metric's units) for `evaluations`
    consecutive evaluations, the last at or after `grace_steps`: retired."""

    grace_steps: int = 300
    evaluations: int = 5
    margin: float = 0.02

    def __post_init__(self):
        if self.grace_steps < 0 or self.evaluations < 1:
            raise ValueError(f"retire_grace_steps must be >= 0 and retire_evaluations >= 1, got {self.grace_steps}, "
                             f"{self.evaluations}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"retire_margin must be in [0, 1), got {self.margin}")


def at_chance(target: Target, value: np.ndarray, chance: float, margin: float) -> np.ndarray:
    """bool[...]: the target metric `value` is no better than `chance` plus `margin` (NaN: False)."""
    value = np.asarray(value, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(value) & (target.score(value) <= target.score(chance) + margin)


def update_streak(streak: np.ndarray, target: Target, value: np.ndarray, chance: float, margin: float) -> np.ndarray:
    """Consecutive at-chance evaluations after this one (reset by any evaluation above chance)."""
    return np.where(at_chance(target, value, chance, margin), streak + 1, 0)


def due(spec: RetireSpec, streak: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """bool[...]: retire now (streak long enough, grace period over)."""
    return (np.asarray(streak) >= spec.evaluations) & (np.asarray(steps) >= spec.grace_steps)


def replay(spec: RetireSpec, target: Target, chance: float, steps: Sequence[int], values: Sequence[float]
           ) -> int | None:
    """The step at which a member with this learning curve (its evaluations while running) would
    have been retired, or None. The last evaluation ends the member's run anyway (reached, exhausted,
    diverged), so only the ones before it count."""
    streak = np.zeros((), np.int64)
    for step, value in list(zip(steps, values))[:-1]:
        streak = update_streak(streak, target, value, chance, spec.margin)
        if due(spec, streak, step):
            return int(step)
    return None


def chance_of(task: Task, data: TrainData) -> float | None:
    """The target metric's value for the best constant predictor on the run's evaluation set (host,
    once per population); None when the task does not say."""
    weight = np.asarray(data.eval_weight)
    arrays = {k: np.asarray(v)[weight > 0] for k, v in data.eval.items()}
    return task.chance_value(arrays)


class Retirement(runner.Hook):
    """The loop's hook: after each evaluation, the running members at chance for long enough become
    RETIRED (the loop then re-packs the others). Its state, each member's streak, is checkpointed;
    a checkpoint written before retirement existed restores as all zeros."""

    name = "retire"

    def __init__(self, spec: RetireSpec, target: Target, chance: float, k: int):
        self.spec, self.target, self.chance = spec, target, chance
        self.streak = np.zeros(k, np.int64)

    def after_segment(self, loop: runner.Loop, metrics: Any) -> None:
        values = loop.host["metrics"][self.target.metric]
        for i in loop.recorded:
            m = loop.pos[i]
            self.streak[m] = update_streak(self.streak[m], self.target, values[i], self.chance, self.spec.margin)
        running = loop.running
        retire = running[due(self.spec, self.streak[running], loop.step)]
        if retire.size:
            loop.set_status(retire, pop_lib.RETIRED)

    def state(self) -> dict[str, Any]:
        return {"streak": self.streak.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("streak"):
            self.streak = np.asarray(state["streak"], np.int64)


def hooks(spec: RetireSpec | None, task: Task, data: TrainData, k: int, warmup_steps: int = 0) -> list[runner.Hook]:
    """The retirement hook of a population of `k` members, or none (off, or no chance value). The
    grace period counts from the end of a learning-rate warmup (members start at a rate near 0)."""
    if spec is None:
        return []
    chance = chance_of(task, data)
    spec = dataclasses.replace(spec, grace_steps=spec.grace_steps + warmup_steps)
    return [] if chance is None else [Retirement(spec, task.target, chance, k)]
