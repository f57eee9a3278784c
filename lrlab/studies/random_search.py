"""TODO: split from lrlab.search"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from lrlab.engine.stop import StopSignal
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store import records
from lrlab.store import workdir as workdir_lib
from lrlab.store.workdir import NO_SCOPE
from lrlab.task.task import Task
from lrlab.training.search import (
    OBJECTIVE,
    Ranges,
    SearchRun,
    describe_ranges,
    parse_ranges,
    train_bayes,
    train_random,
)
from lrlab.training.settings import SweepSettings


def random_search(task: Task, optimizer: str | Optimizer, ranges: Ranges | list[str], num_samples: int = 48,
                  settings: SweepSettings = SweepSettings(), workdir: Any = None, *, seed: int = 0,
                  overrides: Mapping[str, float] | None = None, stop: StopSignal | None = None,
                  overwrite: bool = False, info: Mapping[str, Any] | None = None) -> SearchRun:
    """`num_samples` candidates drawn from `ranges` (NAME:LOW:HIGH entries, or parsed) with `seed`,
    trained as one population; as `python -m lrlab.experiments.random_search` runs it: with a
    `workdir`, resumable, writing results.json and search.png."""
    return _search(task, optimizer, ranges, settings, workdir, "random", seed=seed, num_samples=num_samples,
                   overrides=overrides, stop=stop, overwrite=overwrite, info=info)


def _search(task: Task, optimizer: str | Optimizer, ranges: Ranges | list[str], settings: SweepSettings,
            workdir: Any, method: str, *, seed: int = 0, num_samples: int = 48, rounds: int = 4, batch: int = 8,
            n_startup: int | None = None, overrides: Mapping[str, float] | None = None,
            stop: StopSignal | None = None, overwrite: bool = False, on_round: Callable[[dict], None] | None = None,
            info: Mapping[str, Any] | None = None) -> SearchRun:
    """The command around a search: claim the workdir, train resumably, save results.json and search.png."""
    if method not in ("random", "bayes"):
        raise ValueError(f"method must be 'random' or 'bayes', got {method!r}")
    started = time.perf_counter()
    opt = optimizers.get(optimizer)
    ranges = parse_ranges(ranges, opt) if isinstance(ranges, list) else ranges
    if method == "random":
        details = {"num_samples": num_samples, "candidates": f"{num_samples} candidates"}
    else:
        details = {"rounds": rounds, "batch": batch, "n_startup": n_startup or batch,
                   "sampler": "optuna TPESampler(multivariate, constant_liar)",
                   "candidates": f"{rounds} rounds x {batch} candidates"}
    experiment = f"{method}_search"
    identity = {"task": task.identity(), "optimizer": opt.name, "ranges": describe_ranges(ranges), "seed": seed,
                "overrides": dict(overrides or {}), "settings": settings.to_json(), **details}
    run = workdir_lib.resolve(workdir, experiment, identity, overwrite)
    if run is not None and run.finished:
        return SearchRun(run.read_results(), {"results": run.results_path})
    scope = run.scope() if run is not None else NO_SCOPE
    try:
        if method == "random":
            result = train_random(task, opt, ranges, num_samples, settings, seed, overrides=overrides, scope=scope,
                                   stop=stop, on_round=on_round)
        else:
            result = train_bayes(task, opt, ranges, rounds, batch, settings, seed, n_startup=n_startup,
                                  overrides=overrides, scope=scope, stop=stop, on_round=on_round)
    finally:
        if run is not None:
            run.close()
    summary = {**records.run_header(experiment), **records.task_header(task, settings), **(info or {}),
               "search": {"optimizer": opt.name, "ranges": describe_ranges(ranges), "seed": seed, **details},
               "objective": OBJECTIVE, **result.to_json()}
    out = SearchRun(summary)
    if run is not None:
        out.paths = run.save(summary, {"search.png": out.plot}, started=started, members=result.records,
                             views=settings.views, study=result.study, ranges=ranges)
    return out
