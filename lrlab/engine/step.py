"""One optimizer step of one member (vmapped over the population by `member_map`): 16-bit compute
on float32 weights with dynamic loss scaling, and divergence contained by a mask.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lrlab.engine.config import EngineConfig
from lrlab.engine.population import AUGMENT_SALT, DROPOUT_SALT

SCALE_PERIOD = 2000  # doubled after this many steps without overflow, halved at each overflow


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every element of every floating leaf is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] + [jnp.bool_(True)]))


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise `where` with a predicate on the leading axis (a scalar per member under vmap, or
    bool[K] over a population's leaves)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred.reshape(pred.shape + (1,) * (a.ndim - pred.ndim)), a, b),
                                  on_true, on_false)


class MemberState(NamedTuple):
    """What one optimizer step changes for a member (a slice of the Population)."""

    params: Any
    opt_state: Any
    model_state: Any
    loss_scale: jax.Array
    scale_steps: jax.Array


def cast_floats(tree: Any, dtype: Any) -> Any:
    """The floating-point leaves of `tree` in `dtype` (the 16-bit compute copy of the weights)."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def make_member_step(cfg: EngineConfig) -> Callable:
    """One optimizer step of one member, and whether it diverged (a non-finite loss, parameter or
    model state) while `active`.

    The forward and backward passes run in `cfg.dtype` on a cast copy of the float32 weights, so
    gradients, optimizer state and updates stay float32. With float16 the loss is scaled by the
    member's dynamic loss scale: a step whose gradients overflow is skipped and the scale halved
    (it is divergence only once the scale is down to 1); SCALE_PERIOD clean steps double it, and a
    step is kept only when active and finite. Otherwise the state is returned as computed: the
    segment keeps the states of the members that trained without diverging and restores the others
    once, at its end (`segment.make_training`), where a select after every step would cost an extra
    pass over every parameter and moment (a fifth of a small MLP's step on a CPU).
    Returns (state, loss, diverged, metric_sum): metric_sum is the target metric summed over the
    batch from this step's training outputs (streaming protocols; a constant 0 otherwise).
    """
    tx = cfg.make_tx()
    task = cfg.task
    dtype = cfg.compute_dtype
    dynamic_scale = cfg.dtype == "float16"

    def member_step(state: MemberState, rng, active, batch, step):
        x = task.inputs(batch)
        if cfg.augment:
            x = task.augment(jax.random.fold_in(jax.random.fold_in(rng, AUGMENT_SALT), step), x)
        x = cast_floats(x, dtype)
        dropout_key = jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_SALT), step)

        def loss_fn(p):
            variables = {"params": cast_floats(p, dtype), **state.model_state}
            outputs, model_state = task.model.apply(variables, x, True, dropout_key, cfg.conv)
            outputs = cast_floats(outputs, jnp.float32)
            loss = task.loss(outputs, batch).mean()
            metric_sum = task.metrics[task.target.metric](outputs, batch).sum() if cfg.stream_every else 0.0
            scaled = loss * state.loss_scale if dynamic_scale else loss
            return scaled, (loss, model_state, jax.lax.stop_gradient(metric_sum))

        (_, (loss, model_state, metric_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        if dynamic_scale:
            grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale, grads)
        extra = {"value": loss} if cfg.optimizer.needs_value else {}  # the member's own (unscaled) loss
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params, **extra)
        new_params = optax.apply_updates(state.params, updates)
        loss_finite = jnp.isfinite(loss)
        overflow = jnp.bool_(False)  # a bool either way: the idle branch of member_map gives one
        if dynamic_scale:
            overflow = loss_finite & ~tree_all_finite(grads) & (state.loss_scale > 1.0)
        finite = loss_finite & tree_all_finite(new_params) & tree_all_finite(model_state)
        keep = active & finite & ~overflow
        diverged = active & ~finite & ~overflow
        loss_scale, scale_steps = state.loss_scale, state.scale_steps
        if dynamic_scale:
            grow = keep & (scale_steps + 1 >= SCALE_PERIOD)
            loss_scale = jnp.where(active & overflow, loss_scale / 2, jnp.where(grow, loss_scale * 2, loss_scale))
            scale_steps = jnp.where(active & overflow | grow, 0, scale_steps + keep.astype(jnp.int32))
        new_state = MemberState(new_params, new_opt_state, model_state, loss_scale, scale_steps)
        if not dynamic_scale:  # the segment restores the members that did not train cleanly
            return new_state, loss, diverged, metric_sum
        kept = tree_select(keep, new_state, state)
        return kept._replace(loss_scale=loss_scale, scale_steps=scale_steps), loss, diverged, metric_sum

    return member_step
