"""The static settings of a population program (`EngineConfig`): a change here compiles a new program."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from lrlab.optim.optimizers import Optimizer
from lrlab.optim.schedules import ScheduleSpec
from lrlab.task import conv as conv_lib
from lrlab.task.task import Task

STEPS_OUTER, MEMBERS_OUTER = "steps_outer", "members_outer"  # the loop orders (segment.make_training)
LOOP_ORDERS = (STEPS_OUTER, MEMBERS_OUTER)
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static settings of a population program (a change here compiles a new program)."""

    task: Task
    optimizer: Optimizer
    batch_size: int = 100
    eval_chunk: int = 250
    distinct_seeds: bool = False  # False: all members share init, dropout and batch order
    member_chunk: int = 0  # members per vmap inside the member loop; 0: the prior (member_map.member_chunk_size)
    loop_order: str = STEPS_OUTER  # LOOP_ORDERS: each step over every member chunk, or each chunk over the segment
    conv: str = conv_lib.MATMUL  # the formulation of the model's convolutions (conv.FORMULATIONS; lowering.py)
    schedule: ScheduleSpec | None = None  # learning-rate schedule shape; the peak rate is per member
    dtype: str = "float32"  # compute dtype (COMPUTE_DTYPES); parameters and optimizer state stay float32
    augment: bool = False  # apply the task's augmentation to training batches
    patience: int = 0  # early stopping: evaluations without validation improvement; 0: off
    stream_every: int = 0  # streaming protocols (protocols.py): the running mean takes every n-th step's batch

    def __post_init__(self):
        if self.conv not in conv_lib.FORMULATIONS:
            raise ValueError(f"conv must be one of {', '.join(conv_lib.FORMULATIONS)}, got {self.conv!r}")
        if self.loop_order not in LOOP_ORDERS:
            raise ValueError(f"loop_order must be one of {', '.join(LOOP_ORDERS)}, got {self.loop_order!r}")
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.dtype!r}")
        if self.patience < 0 or self.stream_every < 0:
            raise ValueError(f"patience and stream_every must be >= 0, got {self.patience}, {self.stream_every}")
        if self.augment and self.task.augment is None:
            raise ValueError(f"task {self.task.name} has no augmentation to apply")
        if self.distinct_seeds and not self.task.model.reseedable:
            raise ValueError("distinct seeds need a model that initialises from a key: give an NNX "
                             "constructor (rngs -> module), not a module instance")

    @property
    def compute_dtype(self) -> Any:
        return COMPUTE_DTYPES[self.dtype]

    def make_tx(self) -> optax.GradientTransformation:
        return self.optimizer.make_tx(self.schedule)
