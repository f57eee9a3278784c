"""The learning-rate-free family, as registry entries: optax.contrib's prodigy, dadapt_adamw, dog,
dowg, cocob, mechanize (of Adam), momo and momo_adam, the schedule-free schedule_free_adamw and
schedule_free_sgd, and optax's polyak_sgd, each at its optax defaults.

Each method's `learning_rate` is a multiplier of its own step size: 1.0 is the method as published
(momo_adam's 0.01 and schedule_free_adamw's 0.0025 times the multiplier), so sweeping it draws the
method's own valley around 1, and "learning-rate-free" means that valley is wide and flat there.
Two properties are general optimizer facts, not special cases in the engine:
  needs_value   the update reads each member's loss (`update(..., value=loss)`): momo, polyak_sgd
  eval_params   evaluation reads other parameters than training (`eval_params(opt_state, params)`):
                the schedule-free methods' averaged point (optax's schedule_free_eval_params)
A schedule-free method takes no schedule (it is the point of it): `takes_schedule` is False.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import optax
from optax import contrib

from lrlab.optim.hparams import HParam

MULTIPLIER = HParam(1.0, 0.0, math.inf, open_low=True, search=(1e-3, 1e3, True),
                    help="Multiplier of the method's own step size (1: the method as published).")
MOMO_ADAM_STEP = 0.01  # optax.contrib.momo_adam's default learning rate
SCHEDULE_FREE_ADAMW_STEP = 0.0025  # optax.contrib.schedule_free_adamw's default learning rate


# What the engine must know of the Optax functions that need it, once: for the registry's methods
# below, and for the same functions passed as they are (`lrlab.optimizer(optax.contrib.momo)`).
PROPERTIES: dict[Any, dict[str, Any]] = {
    contrib.momo: {"needs_value": True},
    contrib.momo_adam: {"needs_value": True},
    optax.polyak_sgd: {"needs_value": True},
    contrib.schedule_free_adamw: {"eval_params": contrib.schedule_free_eval_params, "takes_schedule": False},
    contrib.schedule_free_sgd: {"eval_params": contrib.schedule_free_eval_params, "takes_schedule": False},
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One learning-rate-free method: its factory of the multiplier, and the Optax function it wraps
    (whose `PROPERTIES` it has)."""

    factory: Callable[[Any], optax.GradientTransformation]
    wraps: Callable[..., optax.GradientTransformation]
    kind: str = "lr_free"  # "lr_free", or "schedule_free" (tuned, but without a schedule)

    @property
    def properties(self) -> dict[str, Any]:
        return PROPERTIES.get(self.wraps, {})


def _prodigy(learning_rate):
    return contrib.prodigy(learning_rate)


def _dadapt_adamw(learning_rate):
    return contrib.dadapt_adamw(learning_rate)


def _dog(learning_rate):
    return contrib.dog(learning_rate)


def _dowg(learning_rate):
    return contrib.dowg(learning_rate)


def _cocob(learning_rate):
    return contrib.cocob(learning_rate)


def _mechanize(learning_rate):
    return contrib.mechanize(optax.adam(learning_rate))


def _momo(learning_rate):
    return contrib.momo(learning_rate)


def _momo_adam(learning_rate):
    return contrib.momo_adam(learning_rate * MOMO_ADAM_STEP)


def _schedule_free_adamw(learning_rate):
    return contrib.schedule_free_adamw(learning_rate * SCHEDULE_FREE_ADAMW_STEP)


def _schedule_free_sgd(learning_rate):
    return contrib.schedule_free_sgd(learning_rate)


def _polyak_sgd(learning_rate):
    return optax.polyak_sgd(scaling=learning_rate)


METHODS: dict[str, Method] = {
    "prodigy": Method(_prodigy, contrib.prodigy),
    "dadapt_adamw": Method(_dadapt_adamw, contrib.dadapt_adamw),
    "dog": Method(_dog, contrib.dog),
    "dowg": Method(_dowg, contrib.dowg),
    "cocob": Method(_cocob, contrib.cocob),
    "mechanize": Method(_mechanize, contrib.mechanize),
    "momo": Method(_momo, contrib.momo),
    "momo_adam": Method(_momo_adam, contrib.momo_adam),
    "polyak_sgd": Method(_polyak_sgd, optax.polyak_sgd),
    "schedule_free_adamw": Method(_schedule_free_adamw, contrib.schedule_free_adamw, kind="schedule_free"),
    "schedule_free_sgd": Method(_schedule_free_sgd, contrib.schedule_free_sgd, kind="schedule_free"),
}
