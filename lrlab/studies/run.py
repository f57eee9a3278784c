"""The one run skeleton every study follows, and the result object every study returns.

    resolve the workdir (claim it with the study's identity; a finished run is reloaded, not retrained)
      -> train (checkpointed in the run's scope)  -> close the checkpoints, whatever happened
      -> the results.json summary: run header, task header, the study's body
      -> save: Orbax results, figures, views of the member records, results.json (atomically)

A study is a function that builds its identity and its `train(scope) -> Trained`, and calls `run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from absl import logging

from lrlab.engine import devices
from lrlab.store import records
from lrlab.store import workdir as workdir_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import NO_SCOPE, Scope

R = TypeVar("R", bound=StudyResult)


def run(experiment: str, result_type: type[R], *, identity: Mapping[str, Any], task: Any, settings: Any,
        train: Callable[[Scope], Trained], workdir: str | os.PathLike | workdir_lib.Workdir | None = None,
        overwrite: bool = False, info: Mapping[str, Any] | None = None) -> R:
    """Runs a study through the skeleton (see the module docstring).

    `identity` is what the workdir must match to be resumed; `task` and `settings` give the header
    (`records.task_header`); `info` joins the summary (the command line's flags); the body of
    `train`'s `Trained` comes last and may override the header (model_scaling's widths).
    """
    started = time.perf_counter()
    if not isinstance(workdir, workdir_lib.Workdir) and (hint := devices.single_device_hint()):
        logging.info(hint)  # the command line splits the host itself (--cpu_devices)
    identity = {**identity, "content": task.fingerprint()}  # the data and the model's code, by content
    handle = workdir_lib.resolve(workdir, experiment, identity, overwrite)
    try:
        if handle is not None and handle.finished:
            return result_type(handle.read_results(), {"results": handle.results_path})
        try:
            trained = train(handle.scope() if handle is not None else NO_SCOPE)
        finally:
            if handle is not None:
                handle.close()
        info = dict(info or {})
        stages = {**info.pop("stage_seconds", {}), "sweep": time.perf_counter() - started}
        summary = {**records.run_header(experiment), **records.task_header(task, settings), **info,
                   "stage_seconds": stages, **trained.body}
        result = result_type(summary)
        if handle is not None:
            result.paths = handle.save(summary, result.figures(), trained.orbax, started, members=trained.members,
                                       views=getattr(settings, "views", None), study=trained.optuna_study,
                                       ranges=trained.ranges)
        return result
    finally:
        if handle is not None:
            handle.release()
