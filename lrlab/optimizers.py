"""Optimizer registry: name -> Optax chain whose hyperparameters are per-member data.

Every float hyperparameter (the learning rate first) is injected with `optax.inject_hyperparams`,
so it lives in the optimizer state as an array on the population axis: a new value never
recompiles, and population-based methods can overwrite it between segments.

Defaults are TensorFlow 1's, which the study (Mack 2018) used:
  sgd       tf.train.GradientDescentOptimizer    w -= lr * g
  momentum  tf.train.MomentumOptimizer(lr, 0.5)  a = 0.5 a + g; w -= lr * a (no Nesterov)
  adam      tf.train.AdamOptimizer               b1 0.9, b2 0.999, eps 1e-8 (TF adds eps to the
            uncorrected sqrt(v); Optax to the bias-corrected one: the two differ by a factor
            sqrt(1 - b2^t) on eps alone, immaterial at 1e-8)
  adagrad   tf.train.AdagradOptimizer            accumulator starts at 0.1, no epsilon
  adadelta  tf.train.AdadeltaOptimizer           rho 0.95, eps 1e-8
  rmsprop   tf.train.RMSPropOptimizer            decay 0.9, eps 1e-10 inside the sqrt, mean
            square starts at 1.0 (TF1 initialises it to ones), no momentum, not centred
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrlab.schedules import ScheduleSpec, factor_schedule


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimizer family: an Optax factory and its TF1-default hyperparameters."""

    name: str
    factory: Callable[..., optax.GradientTransformation]
    hparams: Mapping[str, float]  # per-member (injected) hyperparameters besides learning_rate
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fixed at init


def _momentum(learning_rate, momentum):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=False)


def _adam(learning_rate, b1, b2, eps):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _adagrad(learning_rate, initial_accumulator_value):
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=0.0)


def _adadelta(learning_rate, rho, eps):
    return optax.adadelta(learning_rate, rho=rho, eps=eps)


def _rmsprop(learning_rate, decay, eps, initial_scale):
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, initial_scale=initial_scale)


REGISTRY: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec("sgd", optax.sgd, {}),
    "momentum": OptimizerSpec("momentum", _momentum, {"momentum": 0.5}),
    "adam": OptimizerSpec("adam", _adam, {"b1": 0.9, "b2": 0.999, "eps": 1e-8}),
    "adagrad": OptimizerSpec("adagrad", _adagrad, {}, {"initial_accumulator_value": 0.1}),
    "adadelta": OptimizerSpec("adadelta", _adadelta, {"rho": 0.95, "eps": 1e-8}),
    "rmsprop": OptimizerSpec("rmsprop", _rmsprop, {"decay": 0.9, "eps": 1e-10}, {"initial_scale": 1.0}),
}
OPTIMIZERS = tuple(REGISTRY)


def parse_optimizer_list(text: str) -> list[str]:
    """'adam', 'sgd,adam' or 'all' -> names, in registry order for 'all'; ValueError if unknown."""
    if text.strip() == "all":
        return list(OPTIMIZERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if not names or unknown:
        raise ValueError(f"unknown optimizer {', '.join(unknown) or repr(text)}: "
                         f"choose from {', '.join(OPTIMIZERS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"optimizer listed twice in {text!r}")
    return names


def default_hparams(name: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The per-member hyperparameters of `name` (TF1 defaults), with `overrides` that apply to it."""
    spec = REGISTRY[name]
    hparams = dict(spec.hparams)
    for key, value in (overrides or {}).items():
        if key in hparams:
            hparams[key] = float(value)
    return hparams


def population_hparams(
    name: str, learning_rates: Any, overrides: Mapping[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Per-member hyperparameters of a population of `name`: one member per learning rate, the
    other hyperparameters (TF1 defaults, then `overrides`) the same for all, float32[K] each."""
    lr_K = np.asarray(learning_rates, np.float32).reshape(-1)
    return {"learning_rate": lr_K,
            **{k: np.full(lr_K.shape, v, np.float32) for k, v in default_hparams(name, overrides).items()}}


def _scheduled(factory: Callable[..., optax.GradientTransformation],
               factor: optax.Schedule) -> Callable[..., optax.GradientTransformation]:
    """`factory` whose learning rate becomes the schedule `learning_rate * factor(count)`.

    The signature is kept (functools.wraps), so inject_hyperparams still injects `learning_rate`:
    the peak stays per-member state, the schedule counts each member's own steps.
    """
    @functools.wraps(factory)
    def build(learning_rate, **kwargs):
        return factory(learning_rate=lambda count: learning_rate * factor(count), **kwargs)

    return build


def make_optimizer(name: str, static_overrides: Mapping[str, Any] | None = None,
                   schedule: ScheduleSpec | None = None) -> optax.GradientTransformation:
    """The Optax transformation of `name` with every float hyperparameter injected as state, and
    the learning rate (the peak, with a schedule) multiplied by `schedule`'s factor."""
    spec = REGISTRY[name]
    static = {**spec.static, **{k: v for k, v in (static_overrides or {}).items() if k in spec.static}}
    placeholders = {"learning_rate": 0.0, **spec.hparams}
    factory = spec.factory
    if schedule is not None and (schedule.name != "constant" or schedule.warmup_steps):
        factory = _scheduled(factory, factor_schedule(schedule))
    injected = optax.inject_hyperparams(factory, static_args=tuple(static))
    return injected(**placeholders, **static)


def init_population_state(
    tx: optax.GradientTransformation, params_K: Any, hparams_K: Mapping[str, jax.Array]
) -> optax.OptState:
    """vmap(tx.init) over members, then write each member's hyperparameters into its state."""
    state = jax.vmap(tx.init)(params_K)
    hyper = dict(state.hyperparams)
    for key, value_K in hparams_K.items():
        if key not in hyper:
            raise KeyError(f"optimizer has no hyperparameter {key!r} (has {sorted(hyper)})")
        hyper[key] = jnp.asarray(value_K, dtype=hyper[key].dtype).reshape(hyper[key].shape)
    return state._replace(hyperparams=hyper)

