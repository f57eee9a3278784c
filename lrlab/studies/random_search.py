"""random_search: candidates drawn at random from the search ranges, trained as one population.

    python -m lrlab.experiments.random_search --optimizer=adam --num_samples=48
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lrlab.engine.stop import StopSignal
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store.result import Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.search import (
    Ranges,
    SearchRun,
    parse_ranges,
    search_details,
    search_identity,
    search_trained,
    train_random,
)
from lrlab.training.settings import SweepSettings

EXPERIMENT = "random_search"


def random_search(task: Task, optimizer: str | Optimizer, ranges: Ranges | list[str], num_samples: int = 48,
                  settings: SweepSettings = SweepSettings(), workdir: Any = None, *, seed: int = 0,
                  overrides: Mapping[str, float] | None = None, stop: StopSignal | None = None,
                  overwrite: bool = False, on_round: Callable[[dict], None] | None = None,
                  info: Mapping[str, Any] | None = None) -> SearchRun:
    """`num_samples` candidates drawn from `ranges` (NAME:LOW:HIGH entries, or parsed) with `seed`,
    trained as one population; as `python -m lrlab.experiments.random_search` runs it: with a
    `workdir`, resumable, writing results.json and search.png."""
    opt = optimizers.get(optimizer)
    ranges = parse_ranges(ranges, opt) if isinstance(ranges, list) else ranges
    details = search_details("random", num_samples=num_samples)

    def train(scope: Scope) -> Trained:
        result = train_random(task, opt, ranges, num_samples, settings, seed, overrides=overrides, scope=scope,
                              stop=stop, on_round=on_round)
        return search_trained(result, opt, ranges, seed, details)

    return run(EXPERIMENT, SearchRun, identity=search_identity(task, opt, ranges, seed, overrides, settings, details),
               task=task, settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
