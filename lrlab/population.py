"""The population engine: K members of one task and optimizer family trained as one program.

A `Population` is a pytree whose every leaf has a leading member axis K. `make_segment` builds one
function: `lax.scan` over `num_steps` steps of a member-mapped step, then a vectorized evaluation of
the task's metrics on its evaluation set and the status update. Python only runs between segments
(`runner.py`); placement on devices and re-packing are host helpers (`packing.py`).

Member status:
  running    still training
  reached    the target met at an evaluation: steps_to_target recorded, frozen
  diverged   non-finite loss or parameters: the update that produced them is dropped and the member
             is frozen by a mask, so NaN never reaches its state (or anyone else's)
  exhausted  budget (steps or seconds) spent without reaching the target
  padding    fills the population to a multiple of the device count; trains nothing
  pruned     stopped at a rung of successive halving for ranking low (runner, --prune=sha)
  stopped    early stopping: no validation improvement for `patience` evaluations (best kept)
  retired    at chance, or out of pace for the target, for several evaluations: failed, stopped (--retire)

Training techniques are static settings of the program (EngineConfig): the compute dtype (16-bit
compute on float32 master weights, with dynamic loss scaling for float16), the task's augmentation
drawn from each step's key, model state such as batch statistics (per member), and early stopping
on a held-out validation set. The target is measured on the evaluation set, or, under a streaming
protocol (`stream_every`, protocols.py), as the running mean of the target metric over the training
batches, from each step's own training outputs; replicates (`seed_K`, replicates.py) give members
their own seeds' initialisation, dropout and batch order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrlab import data as data_lib
from lrlab import protocols
from lrlab.optimizers import Optimizer
from lrlab.lr_schedules import ScheduleSpec
from lrlab.tasks import Task

RUNNING, REACHED, DIVERGED, EXHAUSTED, PADDING, PRUNED, STOPPED = 0, 1, 2, 3, 4, 5, 6
RETIRED = 7  # at chance or out of pace for several evaluations (retirement.py, --retire)
STATUS_NAMES = ("running", "reached", "diverged", "exhausted", "padding", "pruned", "stopped", "retired")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FLOAT16_INITIAL_SCALE = 2.0**15  # dynamic loss scaling (float16): the starting scale,
SCALE_PERIOD = 2000  # doubled after this many steps without overflow, halved at each overflow
NO_STEP = -1  # steps_to_target of a member that has not reached the target
# Keys a member derives from its own: fold_in(rng, salt), then the step.
DROPOUT_SALT, BATCH_ORDER_SALT, AUGMENT_SALT = 1, 2, 3


class Population(flax.struct.PyTreeNode):
    """Every leaf has a leading member axis K."""

    params: Any
    opt_state: Any  # includes the per-member hyperparameters (opt_state.hyperparams)
    rng: jax.Array  # uint32[K, 2]: dropout key (and init / batch order with distinct seeds)
    member: jax.Array  # int32[K]: index of the member in the whole run (stable across re-packing)
    status: jax.Array  # int32[K]
    steps_trained: jax.Array  # int32[K]
    steps_to_target: jax.Array  # int32[K], NO_STEP until reached
    target_value: jax.Array  # float32[K]: the target metric at the latest evaluation
    loss: jax.Array  # float32[K], mean training loss over the latest chunk (the loop keeps the interval's)
    model_state: Any = flax.struct.field(default_factory=dict)  # non-trained collections (batch_stats)
    loss_scale: jax.Array | None = None  # float32[K]: 1, or float16's dynamic loss scale
    scale_steps: jax.Array | None = None  # int32[K]: steps since the loss scale last changed
    best: Any = None  # early stopping: the variables at the best validation score (else None)
    best_score: jax.Array | None = None  # float32[K]: best validation score so far (-inf before any)
    evals_since_best: jax.Array | None = None  # int32[K]
    stream_sum: jax.Array | None = None  # float32[K]: streaming protocols, the target metric summed over the
    stream_count: jax.Array | None = None  # float32[K]: training batches taken so far, and their examples
    batch_key: jax.Array | None = None  # uint32[K, 2]: replicates (replicates.py): each member's batch-order key

    @property
    def size(self) -> int:
        return int(self.status.shape[0])

    @property
    def variables(self) -> dict[str, Any]:
        """What the model's apply takes: the parameters and the model state, per member."""
        return {"params": self.params, **self.model_state}


class SegmentMetrics(NamedTuple):
    """What a segment measured besides the new population."""

    metrics: dict[str, jax.Array]  # name -> float32[K]: the task's metrics on its evaluation set
    step_loss: jax.Array  # float32[K, S]: each step's training loss (NaN where the member did not step)
    val: dict[str, jax.Array]  # name -> float32[K] on the validation set (early stopping), else empty


class TrainData(NamedTuple):
    """Device-resident arrays (pytrees with a leading example axis): the training set, the
    evaluation set (padded to a multiple of the eval chunk, weight 0 on padding), early stopping's
    validation set."""

    train: Any
    eval: Any
    eval_weight: jax.Array  # float32[E]
    val: Any = None
    val_weight: jax.Array | None = None

    @property
    def num_train(self) -> int:
        return int(jax.tree_util.tree_leaves(self.train)[0].shape[0])


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static settings of a population program (a change here compiles a new program)."""

    task: Task
    optimizer: Optimizer
    batch_size: int = 100
    eval_chunk: int = 250
    distinct_seeds: bool = False  # False: all members share init, dropout and batch order
    member_chunk: int = 0  # members per vmap inside the member loop; 0: per backend (see member_map)
    schedule: ScheduleSpec | None = None  # learning-rate schedule shape; the peak rate is per member
    dtype: str = "float32"  # compute dtype (COMPUTE_DTYPES); parameters and optimizer state stay float32
    augment: bool = False  # apply the task's augmentation to training batches
    patience: int = 0  # early stopping: evaluations without validation improvement; 0: off
    stream_every: int = 0  # streaming protocols (protocols.py): the running mean takes every n-th step's batch

    def __post_init__(self):
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


def pad_to_chunks(arrays: Any, chunk: int) -> tuple[Any, jax.Array]:
    """Pads an evaluation set (dict of arrays) to a multiple of `chunk`; the weight marks the real
    examples. Returns device arrays."""
    n = int(np.shape(jax.tree_util.tree_leaves(arrays)[0])[0])
    pad = (-n) % chunk
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    padded = {k: jnp.asarray(np.concatenate([np.asarray(v), np.zeros((pad,) + np.shape(v)[1:], np.asarray(v).dtype)]))
              for k, v in arrays.items()}
    return padded, jnp.asarray(weight)


def make_train_data(train: Any, evaluation: Any, eval_chunk: int, val: Any = None) -> TrainData:
    """Moves a run's data to the device once (`tasks.Splits`' arrays); pads the evaluation and
    validation sets to a multiple of `eval_chunk`."""
    eval_arrays, eval_weight = pad_to_chunks(evaluation, eval_chunk)
    val_arrays, val_weight = (None, None) if val is None else pad_to_chunks(val, eval_chunk)
    return TrainData({k: jnp.asarray(v) for k, v in train.items()}, eval_arrays, eval_weight, val_arrays, val_weight)


def init_population(
    cfg: EngineConfig,
    hparams_K: dict[str, np.ndarray],
    seed: int,
    member_ids: np.ndarray | None = None,
    seed_K: np.ndarray | None = None,
) -> Population:
    """A fresh population: one member per entry of hparams_K['learning_rate'].

    With shared seeds every member starts from the same parameters (the study's "same seed for every
    run"); with distinct seeds member i uses the seed folded with its index. With `seed_K`
    (replicates) member i is the shared-seed run of seed seed_K[i]: its initialisation, dropout
    keys and batch order (`batch_key`), each drawn once per distinct seed.
    """
    lr_K = np.asarray(hparams_K["learning_rate"], np.float32)
    k = lr_K.shape[0]
    member = np.arange(k, dtype=np.int32) if member_ids is None else np.asarray(member_ids, np.int32)
    root = jax.random.PRNGKey(seed)
    batch_key_K = None
    if seed_K is not None:
        if cfg.distinct_seeds or not cfg.task.model.reseedable:
            raise ValueError("replicates (seeds > 1) need shared seeds (not distinct_seeds) and a model that "
                             "initialises from a key (an NNX constructor, not an instance)")
        seeds_U, replicate_K = np.unique(np.asarray(seed_K, np.int64), return_inverse=True)
        keys_U = jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds_U])
        rng_K, batch_key_K = keys_U[replicate_K], jnp.stack([data_lib.data_key(int(s)) for s in seeds_U])[replicate_K]
        variables_U = _init_variables(cfg.task, keys_U, shared=False)
        variables_K = dict(jax.tree_util.tree_map(lambda v: v[replicate_K], variables_U))
    elif cfg.distinct_seeds:
        rng_K = jax.vmap(lambda m: jax.random.fold_in(root, m))(jnp.asarray(member))
    else:
        rng_K = jnp.broadcast_to(root, (k,) + root.shape)
    if seed_K is None:
        variables_K = dict(_init_variables(cfg.task, rng_K, shared=not cfg.distinct_seeds))
    params_K = variables_K.pop("params")
    opt_state = cfg.optimizer.init_state(params_K, hparams_K, cfg.schedule)
    return Population(
        params=params_K,
        model_state=variables_K,
        loss_scale=jnp.full((k,), FLOAT16_INITIAL_SCALE if cfg.dtype == "float16" else 1.0, jnp.float32),
        scale_steps=jnp.zeros((k,), jnp.int32),
        best=jax.tree_util.tree_map(jnp.copy, {"params": params_K, **variables_K}) if cfg.patience else None,
        best_score=jnp.full((k,), -jnp.inf, jnp.float32),
        evals_since_best=jnp.zeros((k,), jnp.int32),
        stream_sum=jnp.zeros((k,), jnp.float32) if cfg.stream_every else None,
        stream_count=jnp.zeros((k,), jnp.float32) if cfg.stream_every else None,
        batch_key=batch_key_K,
        opt_state=opt_state,
        rng=rng_K,
        member=jnp.asarray(member),
        status=jnp.full((k,), RUNNING, jnp.int32),
        steps_trained=jnp.zeros((k,), jnp.int32),
        steps_to_target=jnp.full((k,), NO_STEP, jnp.int32),
        target_value=jnp.zeros((k,), jnp.float32),
        loss=jnp.full((k,), jnp.nan, jnp.float32),
    )


@functools.partial(jax.jit, static_argnums=0)
def _init_one(model: Any, rng: jax.Array, x: Any) -> Any:
    """One member's initial variables from its key (compiled once per model, whatever K)."""
    return model.init(jax.random.fold_in(rng, 0), x)


def _init_variables(task: Task, rng_K: jax.Array, shared: bool) -> Any:
    """Each member's initial variables (parameters, model state): one initialisation broadcast to
    all with a shared seed, else one per member's key, stacked."""
    k = rng_K.shape[0]
    x = task.example_input()
    if shared:
        one = _init_one(task.model, rng_K[0], x)
        return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (k,) + v.shape), one)
    return jax.tree_util.tree_map(lambda *vs: jnp.stack(vs), *[_init_one(task.model, r, x) for r in rng_K])


def member_chunk_size(requested: int, k: int, weights_per_member: int, backend: str | None = None) -> int:
    """Members vmapped together: the largest divisor of k not above the target.

    The target is `requested`, or per backend when 0. Elsewhere than CPU: all K (one vmap). On
    CPU a wide vmap outgrows the caches as models grow (benchmarks/member_chunking.py, 2 cores:
    tutorial_cnn at K=8 ran 1.12x the single-member speed in chunks of 1 but 0.40x as one vmap;
    small_cnn at K=48 ran 1.8-2.0x in chunks of 1 to 8), so the target is 2^20 weights per chunk,
    between 1 and 4 members.
    """
    backend = backend or jax.default_backend()
    if requested:
        target = requested
    elif backend == "cpu":
        target = min(4, max(1, (1 << 20) // max(weights_per_member, 1)))
    else:
        target = k
    return max(d for d in range(1, min(target, k) + 1) if k % d == 0)


def members_and_chunk(cfg: EngineConfig, params_K: Any, per_device: int | None = None) -> tuple[int, int]:
    """(members, members per vmap chunk) of the member loop over `params_K`; `per_device`: the
    members one device's loop runs when params_K is the whole population (the host's view)."""
    leaves = jax.tree_util.tree_leaves(params_K)
    k = leaves[0].shape[0]
    loop_k = per_device if per_device is not None else k
    return loop_k, member_chunk_size(cfg.member_chunk, loop_k, sum(x.size for x in leaves) // k)


def member_map(fn: Callable, in_axes: tuple, k: int, chunk: int, busy: int | None = None,
               idle: Callable | None = None) -> Callable:
    """vmap of `fn` over k members, as a `lax.map` over chunks of `chunk` vmapped members.

    Arguments with in_axes None are shared by all members (broadcast, never copied). With `busy`
    (the index of a per-member bool argument), a chunk with no busy member skips `fn` (a
    `lax.cond`, so its work is not done) and gives `idle`'s outputs instead (default: zeros):
    finished and padding members then cost only their chunk's copy, and the loop compacts the
    running ones into as few chunks as it can (runner.Loop.repack_running) without recompiling.
    """
    vfn = jax.vmap(fn, in_axes=in_axes)
    if chunk >= k:
        return vfn
    split = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k // chunk, chunk) + a.shape[1:]), x)
    merge = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k,) + a.shape[2:]), x)
    vidle = jax.vmap(idle, in_axes=in_axes) if idle is not None else None

    def mapped(*args):
        per_member = [split(x) for x, ax in zip(args, in_axes) if ax == 0]

        def one_chunk(chunk_args):
            it = iter(chunk_args)
            call = [next(it) if ax == 0 else x for x, ax in zip(args, in_axes)]
            if busy is None:
                return vfn(*call)
            skip = vidle if vidle is not None else (lambda *a: jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(vfn, *a)))
            return jax.lax.cond(jnp.any(call[busy]), vfn, skip, *call)

        return merge(jax.lax.map(one_chunk, per_member))

    return mapped


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every element of every floating leaf is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves] + [jnp.bool_(True)]))


def tree_select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise `where` with a scalar predicate (per member under vmap)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


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
    """One optimizer step of one member; frozen (no change) unless `active` and the result finite.

    The forward and backward passes run in `cfg.dtype` on a cast copy of the float32 weights, so
    gradients, optimizer state and updates stay float32. With float16 the loss is scaled by the
    member's dynamic loss scale: a step whose gradients overflow is skipped and the scale halved
    (it is divergence only once the scale is down to 1); SCALE_PERIOD clean steps double it.
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
            outputs, model_state = task.model.apply(variables, x, True, dropout_key)
            outputs = cast_floats(outputs, jnp.float32)
            loss = task.loss(outputs, batch).mean()
            metric_sum = task.metrics[task.target.metric](outputs, batch).sum() if cfg.stream_every else 0.0
            return loss * state.loss_scale, (loss, model_state, jax.lax.stop_gradient(metric_sum))

        (_, (loss, model_state, metric_sum)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale, grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
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
        kept = tree_select(keep, new_state, state)
        return kept._replace(loss_scale=loss_scale, scale_steps=scale_steps), loss, diverged, metric_sum

    return member_step


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
            outputs, _ = task.model.apply(variables, cast_floats(x, dtype), False)
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


def make_segment(cfg: EngineConfig, num_steps: int) -> Callable:
    """Builds segment(pop, data, step0, data_key, goal, max_steps, evaluate) -> (pop, SegmentMetrics),
    unjitted.

    `num_steps` optimizer steps for every running member (one `lax.scan` of a member-mapped step),
    then, when `evaluate` (a boolean array: data, so one program serves both), the task's metrics
    for all members and reached / stopped / exhausted marking; otherwise the segment only trains
    (a chunk between two evaluations: the loop checks for a stop signal between chunks, and the
    metrics come back NaN). Hyperparameters, goal and budget are data too: changing them never
    recompiles (a goal of the target's `unreachable` value freezes no member).
    """
    member_step = make_member_step(cfg)
    metrics_fn = make_metrics_fn(cfg)
    target = cfg.task.target

    def member_idle(state: MemberState, rng, active, batch, step):
        """What member_step gives a member that does not train (a chunk with none running)."""
        del rng, active, batch, step
        return state, jnp.float32(jnp.nan), jnp.bool_(False), jnp.float32(0.0)

    def segment(pop: Population, data: TrainData, step0, data_key, goal, max_steps, evaluate):
        n = data.num_train
        if cfg.distinct_seeds or pop.batch_key is not None:  # each member its own batch order: idx[K, S, B]
            member_keys = pop.batch_key if pop.batch_key is not None else jax.vmap(
                lambda r: jax.random.fold_in(r, BATCH_ORDER_SALT))(pop.rng)
            idx = jax.vmap(lambda key: data_lib.segment_batch_indices(key, step0, num_steps, n, cfg.batch_size))(
                member_keys
            )
            idx_steps = jnp.swapaxes(idx, 0, 1)
            batch_axis = 0
        else:  # shared order: the batch is broadcast to all members, not copied
            idx_steps = data_lib.segment_batch_indices(data_key, step0, num_steps, n, cfg.batch_size)
            batch_axis = None
        k, chunk = members_and_chunk(cfg, pop.params)
        vstep = member_map(member_step, (0, 0, 0, batch_axis, None), k, chunk, busy=2, idle=member_idle)

        def body(carry, xs):
            state, status, steps_trained, loss_sum, stream = carry
            t, idx = xs
            active = status == RUNNING
            batch = jax.tree_util.tree_map(lambda a: a[idx], data.train)
            state, loss, diverged, metric_sum = vstep(state, pop.rng, active, batch, step0 + t)
            status = jnp.where(diverged, DIVERGED, status)
            stepped = active & ~diverged
            steps_trained = steps_trained + stepped.astype(jnp.int32)
            loss_sum = loss_sum + jnp.where(stepped, loss, 0.0)
            if cfg.stream_every:
                stream = protocols.stream_update(*stream, metric_sum, cfg.batch_size, stepped, steps_trained,
                                                 cfg.stream_every)
            return (state, status, steps_trained, loss_sum, stream), jnp.where(stepped, loss, jnp.nan)

        state0 = MemberState(pop.params, pop.opt_state, pop.model_state, pop.loss_scale, pop.scale_steps)
        stream0 = (pop.stream_sum, pop.stream_count) if cfg.stream_every else ()
        carry = (state0, pop.status, pop.steps_trained, jnp.zeros((k,), jnp.float32), stream0)
        (state, status, steps_trained, loss_sum, stream), loss_SK = jax.lax.scan(
            body, carry, (jnp.arange(num_steps), idx_steps)
        )
        n_stepped = steps_trained - pop.steps_trained
        trained = pop.replace(params=state.params, opt_state=state.opt_state, model_state=state.model_state,
                              loss_scale=state.loss_scale, scale_steps=state.scale_steps, status=status,
                              steps_trained=steps_trained,
                              loss=jnp.where(n_stepped > 0, loss_sum / jnp.maximum(n_stepped, 1), pop.loss))
        if cfg.stream_every:
            trained = trained.replace(stream_sum=stream[0], stream_count=stream[1])
        stream_name = protocols.stream_name(target.metric)  # the running mean joins the metrics (and the curves)
        names = tuple(cfg.task.metrics) + ((stream_name,) if cfg.stream_every else ())
        nan_K = jnp.full((k,), jnp.nan, jnp.float32)

        def evaluated(trained: Population):
            variables = trained.variables
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
