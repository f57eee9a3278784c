"""bayes_search: Bayesian optimisation (Optuna's TPE) in rounds, each round's candidates trained as
one population.

    python -m lrlab.experiments.bayes_search --optimizer=adam --rounds=4 --batch=8
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
    train_bayes,
)
from lrlab.training.settings import SweepSettings

EXPERIMENT = "bayes_search"


def bayes_search(task: Task, optimizer: str | Optimizer, ranges: Ranges | list[str], rounds: int = 4, batch: int = 8,
                 settings: SweepSettings = SweepSettings(), workdir: Any = None, *, seed: int = 0,
                 n_startup: int | None = None, overrides: Mapping[str, float] | None = None,
                 stop: StopSignal | None = None, overwrite: bool = False,
                 on_round: Callable[[dict], None] | None = None, info: Mapping[str, Any] | None = None) -> SearchRun:
    """`rounds` rounds of TPE, `batch` candidates each trained as one population; as `python -m
    lrlab.experiments.bayes_search` runs it: with a `workdir`, resumable, writing results.json,
    search.png and the Optuna study TPE asked and was told."""
    opt = optimizers.get(optimizer)
    ranges = parse_ranges(ranges, opt) if isinstance(ranges, list) else ranges
    details = search_details("bayes", rounds=rounds, batch=batch, n_startup=n_startup)

    def train(scope: Scope) -> Trained:
        result = train_bayes(task, opt, ranges, rounds, batch, settings, seed, n_startup=n_startup,
                             overrides=overrides, scope=scope, stop=stop, on_round=on_round)
        return search_trained(result, opt, ranges, seed, details)

    return run(EXPERIMENT, SearchRun, identity=search_identity(task, opt, ranges, seed, overrides, settings, details),
               task=task, settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
