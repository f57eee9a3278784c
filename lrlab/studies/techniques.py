"""TODO: split from lrlab.variants"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.store.result import Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.variants import (
    TECHNIQUES,
    VariantsRun,
    parse_names,
    technique_variant,
    train_variants,
    variants_body,
    variants_identity,
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

    def train(scope: Scope) -> Trained:
        records, timing = train_variants(variants, members, "technique", scope=scope, stop=stop)
        return Trained(variants_body("techniques", "technique", members, variants, {}, records, timing),
                       members=records)

    return run("techniques", VariantsRun, identity=variants_identity(task, members, settings, variants), task=task,
               settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
