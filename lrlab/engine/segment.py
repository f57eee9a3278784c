"""A segment: `lax.scan` over steps of the member-mapped step, then a vectorized evaluation of the
task's metrics and the status update (reached, exhausted, early stopping).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lrlab.engine import devices, protocols
from lrlab.engine.config import MEMBERS_OUTER, EngineConfig
from lrlab.engine.member_map import member_map, members_and_chunk
from lrlab.engine.population import (
    BATCH_ORDER_SALT,
    DIVERGED,
    EXHAUSTED,
    REACHED,
    RUNNING,
    STOPPED,
    Population,
    TrainData,
    eval_variables,
)
from lrlab.engine.step import MemberState, cast_floats, make_member_step, tree_select
from lrlab.task import sampling


class SegmentMetrics(NamedTuple):
    """What a segment measured besides the new population."""

    metrics: dict[str, jax.Array]  # name -> float32[K]: the task's metrics on its evaluation set
    step_loss: jax.Array  # float32[K, S]: each step's training loss (NaN where the member did not step)
    val: dict[str, jax.Array]  # name -> float32[K] on the validation set (early stopping), else empty


def make_metrics_fn(cfg: EngineConfig) -> Callable:
    """metrics(variables_K, arrays_E, weight_E, busy_K=None) -> {name: float32[K]}: each of the
    task's metrics, the weighted mean over the examples, vectorized over members, chunked over
    examples.

    variables_K is what the model's apply takes, per member: {"params": ..., and any model state}.
    With `busy_K` (bool[K]), chunks of members none of which is busy are not evaluated (their
    metrics are meaningless; see `member_map`).
    """
    task = cfg.task
    names = tuple(task.metrics)

    def evaluate(variables_K, arrays_E, weight_E, busy_K=None):
        chunk = cfg.eval_chunk
        n_chunks = weight_E.shape[0] // chunk
        arrays = jax.tree_util.tree_map(lambda a: a.reshape((n_chunks, chunk) + a.shape[1:]), arrays_E)
        weight = weight_E.reshape(n_chunks, chunk)

        k, member_chunk = members_and_chunk(cfg, variables_K["params"])
        dtype = cfg.compute_dtype

        def outputs_fn(v, busy, x):
            del busy  # only member_map reads it
            variables = {**v, "params": cast_floats(v["params"], dtype)}
            outputs, _ = task.model.apply(variables, cast_floats(x, dtype), False, conv=cfg.conv)
            return cast_floats(outputs, jnp.float32)

        skips = busy_K is not None
        apply_K = member_map(outputs_fn, (0, 0, None), k, member_chunk, busy=1 if skips else None)
        busy = busy_K if skips else jnp.ones((k,), bool)

        def chunk_sums(xs):
            batch, w = xs
            outputs_K = apply_K(variables_K, busy, task.inputs(batch))
            per_example = lambda fn: jax.vmap(lambda out: fn(out, batch))(outputs_K)  # [K, B]
            return jnp.stack([jnp.sum(per_example(task.metrics[name]) * w, axis=-1) for name in names])  # [M, K]

        sums_MK = jax.lax.map(chunk_sums, (arrays, weight)).sum(0)
        means_MK = sums_MK / jnp.sum(weight_E)
        return {name: means_MK[i] for i, name in enumerate(names)}

    return evaluate


def shares_batch_order(cfg: EngineConfig, pop: Population) -> bool:
    """True when every member follows one batch order (the data key's); False when each member has
    its own (distinct seeds, or replicates' batch keys)."""
    return not (cfg.distinct_seeds or pop.batch_key is not None)


def batch_order(cfg: EngineConfig, pop: Population, data_key: jax.Array, num_train: int,
                place: Callable[[Any], Any]) -> sampling.EpochOrders | jax.Array:
    """What a segment's `order` comes from: the epochs (`sampling.EpochOrders`, each segment's rows
    put in place by `place`) of the shared order or, with replicates, of each seed's; or, where every
    member has its own order (distinct seeds), the key."""
    if pop.batch_key is not None:  # one order per seed, not one per member: U permutations an epoch, not K
        keys_U2 = np.unique(devices.to_host(pop.batch_key), axis=0)
        return sampling.EpochOrders(keys_U2, num_train, cfg.batch_size, place)
    if not shares_batch_order(cfg, pop):
        return data_key
    return sampling.EpochOrders(data_key, num_train, cfg.batch_size, place)


def make_training(cfg: EngineConfig, num_steps: int) -> Callable:
    """Builds train(pop, data, step0, order) -> (pop, loss_SK), unjitted: `num_steps` optimizer
    steps for every running member, with each step's training loss (float32[S, K], NaN where a
    member did not step). A member that diverges stops there (its steps and losses end) and gets
    back its state from the segment's start, as does every member that was not running: no
    non-finite value stays in a state. The part of a segment that trains, and what `lowering` times.
    `order`: the shared batch order's `sampling.BatchOrder` (from the loop's `sampling.EpochOrders`)
    or its key (the permutations drawn here); with replicates, the seeds' `sampling.SeedBatchOrders`
    or any key (each member's drawn here from its `batch_key`); with distinct seeds, any key (unused).

    Two loop orders compute the same thing (`cfg.loop_order`): a `lax.scan` over steps of the
    member-mapped step (each step visits every member), or the member map of each chunk's own scan
    over the segment's steps (a chunk's state stays in place for the whole segment instead of being
    read and written by every step's member loop).
    """
    member_step = make_member_step(cfg)

    def steps_scan(step_fn: Callable, carry, rng, data: TrainData, step0, idx_steps):
        """The segment's steps of `step_fn` (one member, a chunk or the population: every quantity
        is per member and elementwise), from `carry` = (state, status, steps_trained, loss_sum,
        stream); returns the carry and each step's loss (NaN where a member did not step)."""

        def body(carry, xs):
            state, status, steps_trained, loss_sum, stream = carry
            t, idx = xs
            active = status == RUNNING
            batch = jax.tree_util.tree_map(lambda a: a[idx], data.train)
            state, loss, diverged, metric_sum = step_fn(state, rng, active, batch, step0 + t)
            status = jnp.where(diverged, DIVERGED, status)
            stepped = active & ~diverged
            steps_trained = steps_trained + stepped.astype(jnp.int32)
            loss_sum = loss_sum + jnp.where(stepped, loss, 0.0)
            if cfg.stream_every:
                stream = protocols.stream_update(*stream, metric_sum, cfg.batch_size, stepped, steps_trained,
                                                 cfg.stream_every)
            return (state, status, steps_trained, loss_sum, stream), jnp.where(stepped, loss, jnp.nan)

        return jax.lax.scan(body, carry, (jnp.arange(num_steps), idx_steps))

    def member_idle(state: MemberState, rng, active, batch, step):
        """What member_step gives a member that does not train (a chunk with none running)."""
        del rng, active, batch, step
        return state, jnp.float32(jnp.nan), jnp.bool_(False), jnp.float32(0.0)

    def chunk_idle(carry, rng, busy, data, step0, idx_steps):
        """What a chunk's segment gives when none of its members runs: its carry, no losses."""
        del rng, busy, data, step0, idx_steps
        return carry, jnp.full((num_steps,), jnp.nan, jnp.float32)

    def train(pop: Population, data: TrainData, step0, order):
        n = data.num_train
        if isinstance(order, sampling.SeedBatchOrders):  # replicates: each member reads its seed's order
            idx_USB = jax.vmap(lambda orders_EN: sampling.indices_in_orders(
                orders_EN, order.first_epoch, step0, num_steps, n, cfg.batch_size))(order.orders_UEN)
            # which of the U seeds each member replicates (its batch key's row), as init_population drew it
            replicate_K = jnp.argmax(jnp.all(pop.batch_key[:, None, :] == order.keys_U2[None, :, :], axis=-1), axis=1)
            idx_KSB = idx_USB[replicate_K]
            batch_axis = 0
        elif not shares_batch_order(cfg, pop):  # each member its own batch order: idx[K, S, B]
            member_keys = pop.batch_key if pop.batch_key is not None else jax.vmap(
                lambda r: jax.random.fold_in(r, BATCH_ORDER_SALT))(pop.rng)
            idx_KSB = jax.vmap(lambda key: sampling.segment_batch_indices(key, step0, num_steps, n, cfg.batch_size))(
                member_keys
            )
            batch_axis = 0
        elif isinstance(order, sampling.BatchOrder):  # shared order, drawn by the host loop once per epoch
            idx_SB = sampling.indices_in_orders(order.orders_EN, order.first_epoch, step0, num_steps, n,
                                                cfg.batch_size)
            batch_axis = None  # the batch is broadcast to all members, not copied
        else:  # shared order from its key
            idx_SB = sampling.segment_batch_indices(order, step0, num_steps, n, cfg.batch_size)
            batch_axis = None
        k, chunk = members_and_chunk(cfg, pop.params)
        state0 = MemberState(pop.params, pop.opt_state, pop.model_state, pop.loss_scale, pop.scale_steps)
        stream0 = (pop.stream_sum, pop.stream_count) if cfg.stream_every else ()
        carry = (state0, pop.status, pop.steps_trained, jnp.zeros((k,), jnp.float32), stream0)
        if cfg.loop_order == MEMBERS_OUTER:
            segment_of = lambda c, rng, busy, data, step0, idx: steps_scan(member_step, c, rng, data, step0, idx)  # noqa: E731
            run = member_map(segment_of, (0, 0, 0, None, None, batch_axis), k, chunk, busy=2, idle=chunk_idle)
            idx = idx_KSB if batch_axis == 0 else idx_SB
            carry, loss_KS = run(carry, pop.rng, pop.status == RUNNING, data, step0, idx)
            loss_SK = loss_KS.T
        else:
            vstep = member_map(member_step, (0, 0, 0, batch_axis, None), k, chunk, busy=2, idle=member_idle)
            idx_steps = jnp.swapaxes(idx_KSB, 0, 1) if batch_axis == 0 else idx_SB
            carry, loss_SK = steps_scan(vstep, carry, pop.rng, data, step0, idx_steps)
        state, status, steps_trained, loss_sum, stream = carry
        if cfg.dtype != "float16":  # keep what the members that trained cleanly computed; restore the rest
            state = tree_select((pop.status == RUNNING) & (status != DIVERGED), state, state0)
        n_stepped = steps_trained - pop.steps_trained
        trained = pop.replace(params=state.params, opt_state=state.opt_state, model_state=state.model_state,
                              loss_scale=state.loss_scale, scale_steps=state.scale_steps, status=status,
                              steps_trained=steps_trained,
                              loss=jnp.where(n_stepped > 0, loss_sum / jnp.maximum(n_stepped, 1), pop.loss))
        if cfg.stream_every:
            trained = trained.replace(stream_sum=stream[0], stream_count=stream[1])
        return trained, loss_SK

    return train


def make_segment(cfg: EngineConfig, num_steps: int) -> Callable:
    """Builds segment(pop, data, step0, order, goal, max_steps, evaluate) -> (pop, SegmentMetrics),
    unjitted (`order` as in `make_training`).

    `num_steps` optimizer steps for every running member (`make_training`), then, when `evaluate`
    (a boolean array: data, so one program serves both), the task's metrics for all members and
    reached / stopped / exhausted marking; otherwise the segment only trains (a chunk between two
    evaluations: the loop checks for a stop signal between chunks, and the metrics come back NaN).
    Hyperparameters, goal and budget are data too: changing them never recompiles (a goal of the
    target's `unreachable` value freezes no member).
    """
    train = make_training(cfg, num_steps)
    metrics_fn = make_metrics_fn(cfg)
    target = cfg.task.target

    def segment(pop: Population, data: TrainData, step0, order, goal, max_steps, evaluate):
        trained, loss_SK = train(pop, data, step0, order)
        k = pop.size
        stream_name = protocols.stream_name(target.metric)  # the running mean joins the metrics (and the curves)
        names = tuple(cfg.task.metrics) + ((stream_name,) if cfg.stream_every else ())
        nan_K = jnp.full((k,), jnp.nan, jnp.float32)

        def evaluated(trained: Population):
            variables = eval_variables(cfg, trained)
            was_running = pop.status == RUNNING  # every member whose evaluation is recorded
            metrics_K = metrics_fn(variables, data.eval, data.eval_weight, was_running)
            running = trained.status == RUNNING
            if cfg.stream_every:  # the study's rule: the running mean, strictly above the goal
                value_K = metrics_K[stream_name] = protocols.stream_mean(trained.stream_sum, trained.stream_count)
                reached = running & protocols.exceeds(target.mode, value_K, goal)
            else:
                value_K = metrics_K[target.metric]
                reached = running & target.reached(value_K, goal)
            new_pop = trained.replace(status=jnp.where(reached, REACHED, trained.status),
                                      steps_to_target=jnp.where(reached, trained.steps_trained, pop.steps_to_target),
                                      target_value=jnp.where(pop.status == RUNNING, value_K, pop.target_value))
            val_K = {}
            if cfg.patience:
                val_K = metrics_fn(variables, data.val, data.val_weight, was_running)
                new_pop = early_stopping_update(new_pop, variables, target.score(val_K[target.metric]), running,
                                                cfg.patience)
            exhausted = (new_pop.status == RUNNING) & (new_pop.steps_trained >= max_steps)
            return new_pop.replace(status=jnp.where(exhausted, EXHAUSTED, new_pop.status)), metrics_K, val_K

        def skipped(trained: Population):
            val_K = {name: nan_K for name in cfg.task.metrics} if cfg.patience else {}
            return trained, {name: nan_K for name in names}, val_K

        new_pop, metrics_K, val_K = jax.lax.cond(evaluate, evaluated, skipped, trained)
        return new_pop, SegmentMetrics(metrics_K, loss_SK.T, val_K)

    return segment


def early_stopping_update(pop: Population, variables_K: Any, val_score_K: jax.Array, evaluated_K: jax.Array,
                          patience: int) -> Population:
    """After an evaluation of the members in `evaluated_K`: keep the variables of each one whose
    validation score (higher is better) improved, and stop (STOPPED) a still-running member after
    `patience` evaluations without improvement."""
    improved = evaluated_K & (val_score_K > pop.best_score)
    keep_new = lambda best, new: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, best)
    evals_since = jnp.where(improved, 0, pop.evals_since_best + evaluated_K.astype(jnp.int32))
    stop = (pop.status == RUNNING) & (evals_since >= patience)
    return pop.replace(best=jax.tree_util.tree_map(keep_new, pop.best, variables_K),
                       best_score=jnp.where(improved, val_score_K, pop.best_score),
                       evals_since_best=evals_since, status=jnp.where(stop, STOPPED, pop.status))


def restore_best(pop: Population) -> Population:
    """Early stopping's result: every member's variables at its best validation score."""
    if pop.best is None:
        return pop
    best = dict(pop.best)
    return pop.replace(params=best.pop("params"), model_state=best)
