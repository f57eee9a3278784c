"""TODO: split from lrlab.variants"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.variants import (
    TECHNIQUES,
    VariantsRun,
    _compare,
    parse_names,
    technique_variant,
)


def techniques(task: Task, members: Members, names: Sequence[str] = TECHNIQUES,
               settings: SweepSettings = SweepSettings(), workdir: Any = None, *, batch_norm_task: Task | None = None,
               patience: int = 5, stop: StopSignal | None = None, overwrite: bool = False,
               info: Mapping[str, Any] | None = None) -> VariantsRun:
    """The valley of `members` once per technique, each switched on alone (`technique_variant`);
    as `python -m lrlab.experiments.techniques` runs it."""
    names = parse_names(list(names), TECHNIQUES, "technique")
    variants = {name: technique_variant(name, task, settings, batch_norm_task=batch_norm_task, patience=patience)
                for name in names}
    return _compare("techniques", "technique", task, members, settings, variants, {}, workdir, stop, overwrite, info)
