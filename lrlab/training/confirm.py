"""The range test's confirmation: a rate seen to train, not only read off a curve.

The candidates are the rules' suggestions snapped to a log grid (GRID_PER_DECADE points a decade)
and then their neighbours on that grid, nearest first, until there are `count`. They train to the
target as one population, with the settings' retirement, and the fastest (`ranking.best_member`,
lrlab's one ranking rule) is the found rate. The population stops at the first evaluation where a
candidate reached the target: none still running can be faster (the others become "pruned").
Its cost is every candidate's steps trained.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.engine import loop as loop_lib
from lrlab.engine import population as population_lib
from lrlab.engine.stop import StopSignal
from lrlab.optim import members as members_lib
from lrlab.optim.optimizers import Optimizer
from lrlab.store import ranking
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import sweep_data, train_population

GRID_PER_DECADE = 4  # the candidates' log grid: neighbours a factor 10^(1/4) = 1.78 apart
CANDIDATES = 6  # lr_finder's default confirmation (experiments/lr_finder/REPORT.md: why this many)
# The rules' suggestions in order of preference: the first get their neighbours first (as measured
# in experiments/lr_finder/REPORT.md).
ORDER = ("minimum", "valley", "slide", "steep")


def grid_index(rate: float, per_decade: int = GRID_PER_DECADE) -> int:
    """The index of the log-grid point nearest `rate` (point j is 10^(j / per_decade))."""
    return int(np.round(np.log10(rate) * per_decade))


def candidates(suggested: Sequence[float], count: int, per_decade: int = GRID_PER_DECADE) -> np.ndarray:
    """float64[count]: the suggested rates (in order of preference) snapped to the log grid, then
    their neighbours one grid step out, two steps out, ..., ascending. Fewer suggestions than
    `count` widen the search around them; more keep the first `count`."""
    if count < 1:
        raise ValueError(f"confirmation needs at least 1 candidate, got {count}")
    snapped = list(dict.fromkeys(grid_index(r, per_decade) for r in suggested if r is not None and r > 0))
    if not snapped:
        raise ValueError("no rule suggested a rate: the range test's curve is too short to confirm")
    chosen = snapped[:count]
    distance = 1
    while len(chosen) < count:
        for j in snapped:
            for neighbour in (j - distance, j + distance):
                if len(chosen) < count and neighbour not in chosen:
                    chosen.append(neighbour)
        distance += 1
    return np.sort(10.0 ** (np.asarray(chosen, np.float64) / per_decade))


class FirstToTarget(loop_lib.Hook):
    """Ends the confirmation at the first evaluation where a candidate has reached the target; the
    candidates still running then are slower (steps to target are counted at evaluations, and ties
    at one evaluation go to the ranking rule) and become PRUNED."""

    name = "first_to_target"

    def after_segment(self, loop: loop_lib.Loop, metrics: Any) -> None:
        if (loop.status == population_lib.REACHED).any():
            running = np.flatnonzero(loop.status == population_lib.RUNNING)
            if running.size:
                loop.set_status(running, population_lib.PRUNED)
            loop.finish("a candidate reached the target")


def confirm(task: Task, optimizer: Optimizer, rates: Sequence[float], settings: SweepSettings, *,
            overrides: Mapping[str, float] | None = None, scope: Scope = NO_SCOPE, stop: StopSignal | None = None,
            desc: str = "") -> dict[str, Any]:
    """Trains `rates` of `optimizer` (its other hyperparameters: `overrides`, else its defaults) to
    the task's target as one population under `settings` (budget, retirement), checkpointed in
    `scope`. Returns {"candidates", "best": {learning_rate, steps_to_target} or None, "model_steps",
    "members": the records, "timing"}."""
    population = members_lib.grid(optimizer, name=optimizer.name, learning_rate=np.asarray(rates, np.float64),
                                  **dict(overrides or {}))
    data, eval_chunk = sweep_data(task, settings)
    records, timing = train_population(task, population, settings, data, eval_chunk, scope=scope, stop=stop,
                                       hooks=[FirstToTarget()], desc=desc or f"{optimizer.name} confirmation")
    best = ranking.best_member(records)
    return {"candidates": [float(r) for r in rates],
            "best": None if best is None else {"learning_rate": best["learning_rate"],
                                               "steps_to_target": best["steps_to_target"]},
            "model_steps": int(sum(r["steps_trained"] for r in records)),
            "members": records, "timing": timing}
