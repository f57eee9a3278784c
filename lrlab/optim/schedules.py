"""Learning-rate schedules as multipliers of each member's peak rate, built from Optax schedules.

A schedule here is a function of the member's own step count returning a factor whose peak is 1;
the optimizer's learning rate is `peak_lr_K * factor(count)`. The peak stays per-member data (a new
rate never recompiles); the schedule's shape is static, shared by the population.
"""

from __future__ import annotations

import dataclasses

import optax

SCHEDULES = ("constant", "step", "exponential", "cosine_restarts", "one_cycle")
RANGE_TEST = "range_test"  # internal (lr_finder): the LR range test's exponential ramp, not a --schedule


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """The shape of a schedule (hashable: it is part of the compiled program)."""

    name: str = "constant"
    decay_steps: int = 1000  # step / exponential: steps per decay by decay_factor
    decay_factor: float = 0.5  # range_test: the ramp's first factor (lr_min / lr_max)
    period: int = 1000  # cosine_restarts: first period (SGDR T_0)
    period_mult: float = 2.0  # cosine_restarts: each period this times the previous (SGDR T_mult)
    warmup_steps: int = 0  # linear warmup from 0 to the peak before the schedule (all schedules)
    total_steps: int = 3000  # one_cycle: the cycle's length; cosine_restarts: cycles cover it; range_test: the ramp

    def __post_init__(self):
        if self.name not in SCHEDULES + (RANGE_TEST,):
            raise ValueError(f"unknown schedule {self.name!r}: choose from {', '.join(SCHEDULES)}")
        if min(self.decay_steps, self.period, self.total_steps) < 1 or self.warmup_steps < 0:
            raise ValueError("schedule steps must be positive (warmup_steps >= 0)")
        if not 0 < self.decay_factor <= 1 or self.period_mult < 1:
            raise ValueError("decay_factor must be in (0, 1] and period_mult >= 1")


def _cosine_restarts(spec: ScheduleSpec) -> optax.Schedule:
    """SGDR (Loshchilov & Hutter 2017): cosine from 1 to 0 over periods T_0, T_0*m, ... covering total_steps."""
    periods, length = [], 0.0
    while length < spec.total_steps:
        period = max(1, round(spec.period * spec.period_mult ** len(periods)))
        periods.append(period)
        length += period
    return optax.sgdr_schedule([{"init_value": 1.0, "peak_value": 1.0, "decay_steps": p, "warmup_steps": 0,
                                 "end_value": 0.0} for p in periods])


def factor_schedule(spec: ScheduleSpec) -> optax.Schedule:
    """step count -> multiplier of the peak learning rate (peak 1)."""
    base = {
        "constant": lambda: optax.constant_schedule(1.0),
        "step": lambda: optax.exponential_decay(1.0, spec.decay_steps, spec.decay_factor, staircase=True),
        "exponential": lambda: optax.exponential_decay(1.0, spec.decay_steps, spec.decay_factor),
        "cosine_restarts": lambda: _cosine_restarts(spec),
        "one_cycle": lambda: optax.cosine_onecycle_schedule(spec.total_steps, 1.0),
        RANGE_TEST: lambda: range_test_factor(spec.decay_factor, spec.total_steps),
    }[spec.name]()
    if not spec.warmup_steps:
        return base
    warmup = optax.linear_schedule(0.0, 1.0, spec.warmup_steps)
    return optax.join_schedules([warmup, base], [spec.warmup_steps])


def range_test_factor(start_factor: float, num_steps: int) -> optax.Schedule:
    """The LR range test's ramp (internal, not in SCHEDULES): a factor rising geometrically from
    `start_factor` (lr_min / lr_max) at step 0 to 1 at step num_steps - 1, then held at 1.

    With the injected peak lr_max, the rate at step t is lr_min * (lr_max / lr_min)^(t / (num_steps - 1)).
    """
    if not 0 < start_factor <= 1 or num_steps < 2:
        raise ValueError(f"start_factor must be in (0, 1] and num_steps >= 2, got {start_factor}, {num_steps}")
    return optax.exponential_decay(start_factor, num_steps - 1, 1.0 / start_factor, end_value=1.0)
