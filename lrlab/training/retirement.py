"""Retirement (`--retire`, on by default): stop training members whose outcome is already known.

Two rules, either of which retires a member (status RETIRED: neither diverged nor exhausted; the
loop's re-packing then hands its compute to the others):
- at chance: its target metric has stayed at chance (no better than the best constant predictor
  of the evaluation set, plus `margin`) for `evaluations` consecutive evaluations, the last at or
  after `grace_steps`. "Chance" comes from the task (`Task.chance_value`); a task that does not
  give it is never retired by this rule.
- out of pace (the slow side): even at `pace` times the best pace it has ever shown (its largest
  gain in score per step over PACE_SPAN evaluations), kept up for the rest of the step budget, it
  would not reach the target, for `pace_evaluations` consecutive evaluations, the last at or after
  `pace_grace_steps`. The best pace, not the latest, so a member on a plateau near the target keeps
  the credit of its fast start. `pace=0` turns the rule off.

Both rules are pure functions of a member's evaluations (`Tracker`), shared by the runner's hook and
by `benchmarks/retirement_replay.py`, which replays them on every committed learning curve and on
fresh runs of the six optimizers: that replay chose the constants below (no member that reached the
target would have been retired, with a margin; see the benchmark's JSON).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrlab.engine import loop as loop_lib
from lrlab.engine import population, protocols
from lrlab.engine.population import TrainData
from lrlab.task.target import Target
from lrlab.task.task import Task

PACE_SPAN = 2  # evaluations a pace is measured over (one interval's gain is noisier)


@dataclasses.dataclass(frozen=True)
class RetireSpec:
    """At chance (target score <= chance's score + margin, in the metric's units) for `evaluations`
    consecutive evaluations, the last at or after `grace_steps`: retired."""

    grace_steps: int = 300
    evaluations: int = 5
    margin: float = 0.02
    pace: float = 1.0  # the slow side: multiplier of the best pace so far; 0: off
    pace_grace_steps: int = 100
    pace_evaluations: int = 4

    def __post_init__(self):
        if self.grace_steps < 0 or self.evaluations < 1:
            raise ValueError(f"retire_grace_steps must be >= 0 and retire_evaluations >= 1, got {self.grace_steps}, "
                             f"{self.evaluations}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"retire_margin must be in [0, 1), got {self.margin}")
        if not self.pace >= 0 or self.pace_grace_steps < 0 or self.pace_evaluations < 1:
            raise ValueError(f"retire_pace must be >= 0, retire_pace_grace_steps >= 0 and retire_pace_evaluations "
                             f">= 1, got {self.pace}, {self.pace_grace_steps}, {self.pace_evaluations}")


def at_chance(target: Target, value: np.ndarray, chance: float, margin: float) -> np.ndarray:
    """bool[...]: the target metric `value` is no better than `chance` plus `margin` (NaN: False)."""
    value = np.asarray(value, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(value) & (target.score(value) <= target.score(chance) + margin)


def update_streak(streak: np.ndarray, target: Target, value: np.ndarray, chance: float, margin: float) -> np.ndarray:
    """Consecutive at-chance evaluations after this one (reset by any evaluation above chance)."""
    return np.where(at_chance(target, value, chance, margin), streak + 1, 0)


def due(spec: RetireSpec, streak: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """bool[...]: retire now by the chance rule (streak long enough, grace period over)."""
    return (np.asarray(streak) >= spec.evaluations) & (np.asarray(steps) >= spec.grace_steps)


CHANCE, PACE = "chance", "pace"  # the rule that retired a member (records' `retired_by`)


class Tracker:
    """Both rules' state for `k` members (numpy, host): the at-chance streak, and for the pace rule
    the latest PACE_SPAN evaluations, the best pace and the out-of-pace streak."""

    def __init__(self, spec: RetireSpec, target: Target, chance: float | None, max_steps: int, k: int):
        self.spec, self.target, self.chance, self.max_steps = spec, target, chance, max_steps
        self.streak = np.zeros(k, np.int64)
        self.pace_streak = np.zeros(k, np.int64)
        self.best_pace = np.zeros(k)
        self.recent = np.full((k, PACE_SPAN, 2), np.nan)  # (step, score) of the latest evaluations, oldest first
        self.seen = np.zeros(k, np.int64)
        self.reason = np.full(k, "", object)  # the rule that retired each member: CHANCE, PACE, or "" (not retired)

    def update(self, members: np.ndarray, steps: np.ndarray, values: np.ndarray,
               decided: np.ndarray | None = None) -> np.ndarray:
        """Records one evaluation of `members` (at their `steps`, target metric `values`, and the
        value the target is decided on, `decided`, when a protocol decides on another: the
        streaming mean); returns bool[len(members)]: retire now."""
        spec, target = self.spec, self.target
        steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
        decided = values if decided is None else np.asarray(decided, np.float64)
        with np.errstate(invalid="ignore"):
            score = np.asarray(target.score(decided), np.float64)
        retire = np.zeros(len(members), bool)
        by_pace = np.zeros(len(members), bool)
        if self.chance is not None:
            self.streak[members] = update_streak(self.streak[members], target, values, self.chance, spec.margin)
            retire |= due(spec, self.streak[members], steps)
        if spec.pace > 0:
            with np.errstate(invalid="ignore", divide="ignore"):
                old_step, old_score = self.recent[members, 0, 0], self.recent[members, 0, 1]
                measured = self.seen[members] >= PACE_SPAN
                pace = np.where(measured, (score - old_score) / (steps - old_step), np.nan)
                best = np.fmax(self.best_pace[members], np.nan_to_num(pace, nan=0.0, posinf=0.0, neginf=0.0))
                projected = score + spec.pace * best * np.maximum(self.max_steps - steps, 0)
                short = measured & (projected < target.score(target.goal))
            self.best_pace[members] = best
            self.pace_streak[members] = np.where(short, self.pace_streak[members] + 1, 0)
            by_pace = (self.pace_streak[members] >= spec.pace_evaluations) & (steps >= spec.pace_grace_steps)
        self.reason[members] = np.where(self.reason[members] != "", self.reason[members],
                                        np.where(retire, CHANCE, np.where(by_pace, PACE, "")))
        retire |= by_pace
        self.recent[members, :-1] = self.recent[members, 1:]
        self.recent[members, -1] = np.stack([steps, score], axis=-1)
        self.seen[members] += 1
        return retire

    def state(self) -> dict[str, Any]:
        return {"streak": self.streak.tolist(), "pace_streak": self.pace_streak.tolist(),
                "best_pace": self.best_pace.tolist(), "recent": np.nan_to_num(self.recent, nan=-1e30).tolist(),
                "seen": self.seen.tolist(), "reason": self.reason.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        """A checkpoint's state; one written before the pace rule existed restores its streaks only."""
        if state.get("streak"):
            self.streak = np.asarray(state["streak"], np.int64)
        if state.get("seen"):
            self.pace_streak = np.asarray(state["pace_streak"], np.int64)
            self.best_pace = np.asarray(state["best_pace"], np.float64)
            recent = np.asarray(state["recent"], np.float64)
            self.recent = np.where(recent == -1e30, np.nan, recent)
            self.seen = np.asarray(state["seen"], np.int64)
        if state.get("reason"):
            self.reason = np.asarray(state["reason"], object)


def replay(spec: RetireSpec, target: Target, chance: float | None, steps: Sequence[int], values: Sequence[float],
           max_steps: int) -> int | None:
    """The step at which a member with this learning curve (its evaluations while running, under a
    budget of `max_steps`) would have been retired, or None. The last evaluation ends the member's
    run anyway (reached, exhausted, diverged), so only the ones before it count."""
    tracker = Tracker(spec, target, chance, max_steps, 1)
    for step, value in list(zip(steps, values))[:-1]:
        if tracker.update(np.zeros(1, np.int64), np.asarray([step]), np.asarray([value]))[0]:
            return int(step)
    return None


def chance_of(task: Task, data: TrainData) -> float | None:
    """The target metric's value for the best constant predictor on the run's evaluation set (host,
    once per population); None when the task does not say."""
    weight = np.asarray(data.eval_weight)
    arrays = {k: np.asarray(v)[weight > 0] for k, v in data.eval.items()}
    return task.chance_value(arrays)


class Retirement(loop_lib.Hook):
    """The loop's hook: after each evaluation, the running members either rule retires become
    RETIRED (the loop then re-packs the others). Its state (`Tracker`) is checkpointed."""

    name = "retire"

    def __init__(self, spec: RetireSpec, target: Target, chance: float | None, max_steps: int, k: int):
        self.tracker = Tracker(spec, target, chance, max_steps, k)

    def after_segment(self, loop: loop_lib.Loop, metrics: Any) -> None:
        metric = self.tracker.target.metric
        values = loop.host["metrics"][metric]
        decided = loop.host["metrics"].get(protocols.stream_name(metric), values)  # the streaming protocols'
        entries = np.asarray(loop.recorded, np.int64)
        if not entries.size:
            return
        members = loop.pos[entries]
        retire = self.tracker.update(members, np.full(entries.size, loop.step), values[entries], decided[entries])
        retire = members[retire & (loop.status[members] == population.RUNNING)]
        if retire.size:
            loop.set_status(retire, population.RETIRED)

    def state(self) -> dict[str, Any]:
        return self.tracker.state()

    def restore(self, state: dict[str, Any]) -> None:
        self.tracker.restore(state)


def hooks(spec: RetireSpec | None, task: Task, data: TrainData, k: int, max_steps: int, warmup_steps: int = 0
          ) -> list[loop_lib.Hook]:
    """The retirement hook of a population of `k` members under a budget of `max_steps`, or none
    (off, or neither rule applies). The grace periods count from the end of a learning-rate warmup
    (members start at a rate near 0)."""
    if spec is None:
        return []
    chance = chance_of(task, data)
    spec = dataclasses.replace(spec, grace_steps=spec.grace_steps + warmup_steps,
                               pace_grace_steps=spec.pace_grace_steps + warmup_steps)
    if chance is None and spec.pace == 0:
        return []
    return [Retirement(spec, task.target, chance, max_steps, k)]


def name_rules(records: Sequence[dict[str, Any]], reasons: Sequence[str]) -> None:
    """Adds to each retired member's record the rule that retired it (`retired_by`: chance or pace)
    and the step it stopped at (`retired_at`)."""
    for record, reason in zip(records, reasons):
        if record["status"] == "retired":
            record["retired_by"] = reason or None
            record["retired_at"] = record["steps_trained"]
