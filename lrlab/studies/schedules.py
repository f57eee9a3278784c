"""TODO: split from lrlab.variants"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.optim.schedules import ScheduleSpec
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.variants import VariantsRun, _compare


def schedules(task: Task, members: Members, schedule_specs: Mapping[str, ScheduleSpec | None],
              settings: SweepSettings = SweepSettings(), workdir: Any = None, *, stop: StopSignal | None = None,
              overwrite: bool = False, info: Mapping[str, Any] | None = None) -> VariantsRun:
    """The valley of `members` once per schedule (name -> spec; None: constant, no warmup), each
    member's rate the schedule's peak; as `python -m lrlab.experiments.schedules` runs it."""
    variants = {name: (task, dataclasses.replace(settings, schedule=spec)) for name, spec in schedule_specs.items()}
    specs = {name: dataclasses.asdict(spec) if spec else None for name, spec in schedule_specs.items()}
    warmup = {spec.warmup_steps for spec in schedule_specs.values() if spec is not None} - {0}
    suffix = f", {warmup.pop()}-step warmup" if len(warmup) == 1 else ""
    return _compare("schedules", "schedule", task, members, settings, variants, specs, workdir, stop, overwrite,
                    info, suffix)
