"""How members train besides the task and their hyperparameters (`SweepSettings`): the budget, the
batch, the seed, the techniques, the protocol, retirement. Every experiment takes one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lrlab.engine import lowering, protocols
from lrlab.engine.loop import Budget
from lrlab.optim.schedules import ScheduleSpec
from lrlab.store.views import Views
from lrlab.training.pruning import PruneSpec
from lrlab.training.retirement import RetireSpec


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """How members train, besides the task and their hyperparameters."""

    budget: Budget = Budget()
    batch_size: int = 100
    eval_examples: int = 2000  # the fixed training subset the target is measured on (a task without `eval`)
    seed: int = 0
    distinct_seeds: bool = False
    sequential: bool = False
    repack: bool = True
    member_chunk: int = 0  # members per vmap in each device's member loop; 0: chosen (engine/lowering.py)
    lowering: str = "auto"  # the convolutions' formulation (lowering.CHOICES); auto: chosen by measurement
    loop_order: str = "auto"  # steps over member chunks, or chunks over steps (lowering.LOOP_CHOICES); auto: measured
    progress: bool = True
    schedule: ScheduleSpec | None = None  # learning-rate schedule (None: constant)
    dtype: str = "float32"  # compute dtype; weights and optimizer state stay float32
    augment: bool = False  # apply the task's augmentation to training batches
    patience: int = 0  # early stopping after this many evaluations without improvement; 0: off
    validation_examples: int = 5000  # held out of the training set for early stopping (patience > 0)
    prune: PruneSpec | None = None  # successive halving (vectorized runs only)
    stop_at_target: bool = True  # False: members train on past the target (optimizer_comparison's curves)
    views: Views = Views()  # the Optuna study, TensorBoard runs and members.csv written at the end (views.py)
    protocol: str = protocols.DEFAULT  # how the target is measured (protocols.PROTOCOLS): subset, streaming, ...
    seeds: int = 1  # replicates of every member (replicates.py): seeds seed, seed + 1, ..., in one program
    retire: RetireSpec | None = RetireSpec()  # retire hopeless members (retirement.py); None: off

    def __post_init__(self):
        if self.sequential and self.prune is not None:
            raise ValueError("pruning ranks members against each other: it needs a vectorized run, not sequential")
        if min(self.batch_size, self.eval_examples) < 1 or self.seed < 0:
            raise ValueError("batch_size and eval_examples must be at least 1, the seed at least 0")
        protocols.check(self.protocol)
        if self.lowering not in lowering.CHOICES:
            raise ValueError(f"lowering must be one of {', '.join(lowering.CHOICES)}, got {self.lowering!r}")
        if self.loop_order not in lowering.LOOP_CHOICES:
            raise ValueError(f"loop_order must be one of {', '.join(lowering.LOOP_CHOICES)}, got {self.loop_order!r}")
        if self.seeds < 1 or (self.seeds > 1 and self.distinct_seeds):
            raise ValueError(f"seeds={self.seeds}: must be at least 1, and 1 with distinct_seeds (each member its "
                             "own seed already)")

    def to_json(self) -> dict[str, Any]:
        """What decides the results (JSON): every field but the progress display and member chunks."""
        out = dataclasses.asdict(self)
        for operational in ("progress", "member_chunk", "lowering", "loop_order"):
            out.pop(operational)
        out.pop("views")  # where results are also written, not what they are
        if not self.patience:
            out.pop("validation_examples")
        if self.protocol == protocols.DEFAULT:  # absent: the default (runs from before the field compare equal)
            out.pop("protocol")
        if self.seeds == 1:
            out.pop("seeds")
        if self.retire is None:  # as runs made before retirement existed saved it: they resume with it off
            out.pop("retire")
        elif not self.retire.pace:  # as runs made before the pace rule existed saved it
            for name in ("pace", "pace_grace_steps", "pace_evaluations"):
                out["retire"].pop(name)
        return out
