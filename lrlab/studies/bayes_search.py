"""TODO: split from lrlab.search"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from lrlab.engine.stop import StopSignal
from lrlab.optim.optimizers import Optimizer
from lrlab.studies.random_search import _search
from lrlab.task.task import Task
from lrlab.training.search import Ranges, SearchRun
from lrlab.training.settings import SweepSettings


def bayes_search(task: Task, optimizer: str | Optimizer, ranges: Ranges | list[str], rounds: int = 4, batch: int = 8,
                 settings: SweepSettings = SweepSettings(), workdir: Any = None, *, seed: int = 0,
                 n_startup: int | None = None, overrides: Mapping[str, float] | None = None,
                 stop: StopSignal | None = None, overwrite: bool = False,
                 on_round: Callable[[dict], None] | None = None, info: Mapping[str, Any] | None = None) -> SearchRun:
    """`rounds` rounds of TPE, `batch` candidates each trained as one population; as `python -m
    lrlab.experiments.bayes_search` runs it."""
    return _search(task, optimizer, ranges, settings, workdir, "bayes", seed=seed, rounds=rounds, batch=batch,
                   n_startup=n_startup, overrides=overrides, stop=stop, overwrite=overwrite, on_round=on_round,
                   info=info)
