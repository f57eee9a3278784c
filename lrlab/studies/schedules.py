"""TODO: split from lrlab.variants"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.optim.schedules import ScheduleSpec
from lrlab.store.result import Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.variants import VariantsRun, train_variants, variants_body, variants_identity


def schedules(task: Task, members: Members, schedule_specs: Mapping[str, ScheduleSpec | None],
              settings: SweepSettings = SweepSettings(), workdir: Any = None, *, stop: StopSignal | None = None,
              overwrite: bool = False, info: Mapping[str, Any] | None = None) -> VariantsRun:
    """The valley of `members` once per schedule (name -> spec; None: constant, no warmup), each
    member's rate the schedule's peak; as `python -m lrlab.experiments.schedules` runs it."""
    variants = {name: (task, dataclasses.replace(settings, schedule=spec)) for name, spec in schedule_specs.items()}
    specs = {name: dataclasses.asdict(spec) if spec else None for name, spec in schedule_specs.items()}
    warmup = {spec.warmup_steps for spec in schedule_specs.values() if spec is not None} - {0}
    suffix = f", {warmup.pop()}-step warmup" if len(warmup) == 1 else ""

    def train(scope: Scope) -> Trained:
        records, timing = train_variants(variants, members, "schedule", scope=scope, stop=stop)
        return Trained(variants_body("schedules", "schedule", members, variants, specs, records, timing, suffix),
                       members=records)

    return run("schedules", VariantsRun, identity=variants_identity(task, members, settings, variants), task=task,
               settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
