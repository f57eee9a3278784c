"""Target protocols: how "reached the target" is measured, selected by name.

subset (lrlab's default): every `eval_every` steps, the task's target metric on a fixed evaluation
    set (a subset of the training set, or the task's own `eval`), the model in evaluation mode
    (dropout off); reached at metric >= goal (<= for a "min" target). It measures the weights of
    that step.
streaming (the study's lr sweep, Octavian-ai/learning-rates hooks.py `EarlyStopping` with a
    `tf.metrics.accuracy` streaming metric, checked every 50th step): the running mean of the
    target metric over the training batches of every `eval_every`-th step since the start
    (predictions of that step's training forward pass, dropout active), checked at those steps;
    reached when the mean exceeds the goal strictly (below it, for a "min" target).
streaming_every_step (the study's model-size task, where `LastMetricHook` fetches the metric every
    step): the same running mean over every training batch, still checked every `eval_every` steps.

A running mean since the start remembers the first, untrained batches, so it crosses a goal later
than the instantaneous accuracy does: steps to target under a streaming protocol are at least, and
usually well above, the subset protocol's.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

SUBSET, STREAMING, STREAMING_EVERY_STEP = "subset", "streaming", "streaming_every_step"
PROTOCOLS = (SUBSET, STREAMING, STREAMING_EVERY_STEP)
DEFAULT = SUBSET


def check(protocol: str) -> None:
    """ValueError naming the protocols when `protocol` is none of them."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")


def stream_every(protocol: str, eval_every: int) -> int:
    """The engine's period of the running mean: it takes the training batch of every n-th step
    (0: the subset protocol, no running mean)."""
    check(protocol)
    return {SUBSET: 0, STREAMING: eval_every, STREAMING_EVERY_STEP: 1}[protocol]


def describe(protocol: str, eval_every: int) -> str:
    """Which training batches a streaming protocol's running mean takes, in words."""
    every = stream_every(protocol, eval_every)
    return "every step's" if every == 1 else f"every {every}th step's"


def stream_name(metric: str) -> str:
    """The running mean's name among the segment's metrics (and in the curves, `train_<name>`)."""
    return f"streaming_{metric}"


def stream_update(sum_K: jnp.ndarray, count_K: jnp.ndarray, batch_sum_K: jnp.ndarray, batch_size: int,
                  took_step_K: jnp.ndarray, steps_trained_K: jnp.ndarray, every: int) -> tuple[Any, Any]:
    """The running mean's sums after one step: a member that took the step adds its batch's metric
    sum and size when its step count (this step included) is a multiple of `every`."""
    take_K = took_step_K & (steps_trained_K % every == 0)
    return (sum_K + jnp.where(take_K, batch_sum_K, 0.0),
            count_K + jnp.where(take_K, jnp.float32(batch_size), 0.0))


def stream_mean(sum_K: jnp.ndarray, count_K: jnp.ndarray) -> jnp.ndarray:
    """The running mean (NaN before any batch was taken)."""
    return jnp.where(count_K > 0, sum_K / jnp.maximum(count_K, 1.0), jnp.nan)


def exceeds(mode: str, value: Any, goal: Any) -> Any:
    """The study's strict comparison (hooks.py: `t > self.target`): value > goal for a "max" target,
    value < goal for a "min" one. NaN never exceeds."""
    return value > goal if mode == "max" else value < goal
