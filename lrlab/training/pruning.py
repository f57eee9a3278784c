"""Successive halving (`--prune=sha`): at each rung, stop the running members that rank below the
top 1/eta of those still in the race, so the compute they would have used goes to the survivors.

The runner re-packs the survivors into a smaller population, so pruned members stop costing
compute at once; survivors train on to the step budget (and, with --max_seconds, get the time).
All members train in lockstep, so this is synchronous successive halving (Jamieson & Talwalkar
2016; Li et al. 2018's ASHA without the asynchrony it needs across workers).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from lrlab.engine import loop as loop_lib
from lrlab.engine import population


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """Rungs at min_steps * eta^i steps (each rounded up to an evaluation); keep the top 1/eta."""

    min_steps: int = 200
    eta: int = 3

    def __post_init__(self):
        if self.min_steps < 1:
            raise ValueError(f"prune_min_steps must be >= 1, got {self.min_steps}")
        if self.eta < 2:
            raise ValueError(f"prune_eta must be >= 2, got {self.eta}")

    def rungs(self, max_steps: int, eval_every: int) -> list[int]:
        """The steps (multiples of eval_every, below max_steps) at which members are ranked."""
        rungs, r = [], self.min_steps
        while r < max_steps:
            at = -(-r // eval_every) * eval_every
            if at < max_steps and at not in rungs:
                rungs.append(at)
            r *= self.eta
        return rungs


def rung_cut(status: np.ndarray, score: np.ndarray, steps_to_target: np.ndarray, eta: int) -> np.ndarray:
    """Indices of the running members to prune at a rung.

    The race: every member not pruned before (nor padding). Its ranking: members that reached the
    target first (fewer steps is better), then the rest by the score of their latest evaluation of
    the target metric (higher is better; NaN, never evaluated, last), diverged members last. The top
    ceil(n / eta) stay; the running members below them are pruned (the others are finished already).
    """
    in_race = np.flatnonzero((status != population.PRUNED) & (status != population.PADDING))
    if in_race.size == 0:
        return np.zeros(0, np.int64)
    reached = status[in_race] == population.REACHED
    diverged = status[in_race] == population.DIVERGED
    # lexsort: the last key is primary. Groups: 0 reached, 1 the rest, 2 diverged.
    group = np.where(reached, 0, np.where(diverged, 2, 1))
    within = np.where(reached, steps_to_target[in_race], -np.where(np.isnan(score[in_race]), -np.inf, score[in_race]))
    order = in_race[np.lexsort((in_race, within, group))]
    keep = math.ceil(in_race.size / eta)
    losers = order[keep:]
    return np.sort(losers[status[losers] == population.RUNNING])


class SuccessiveHalving(loop_lib.Hook):
    """The segment loop's hook: at each rung, the members `rung_cut` names become PRUNED (the loop
    then re-packs the survivors)."""

    name = "prune"

    def __init__(self, spec: PruneSpec, max_steps: int, eval_every: int):
        self.spec = spec
        self.rungs = set(spec.rungs(max_steps, eval_every))

    def after_segment(self, loop: loop_lib.Loop, metrics) -> None:
        if loop.step in self.rungs:
            cut = rung_cut(loop.status, loop.last_scores(), loop.reached_at(), self.spec.eta)
            if cut.size:
                loop.set_status(cut, population.PRUNED)
