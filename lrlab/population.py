"""The population engine: K members of one model and optimizer family trained as one program.

A `Population` is a pytree whose every leaf has a leading member axis K. `make_segment_fn` builds
one jitted function: `lax.scan` over `num_steps` steps of a `vmap`-ed step, then a vectorized
evaluation on the fixed training subset and the status update. Python only runs between segments.

Member status:
  running    still training
  reached    training-subset accuracy >= target at an evaluation: steps_to_target recorded, frozen
  diverged   non-finite loss or parameters: the update that produced them is dropped and the member
             is frozen by a mask, so NaN never reaches its state (or anyone else's)
  exhausted  budget (steps or seconds) spent without reaching the target
  pruned     stopped at a rung of successive halving for ranking low (runner, --prune=sha)
  stopped    early stopping: no validation improvement for `patience` evaluations (best kept)

Training techniques are static settings of the program (EngineConfig): the compute dtype (16-bit
compute on float32 master weights, with dynamic loss scaling for float16), augmentation drawn
from each step's key, batch normalization (its statistics are model state, per member), and
early stopping on a held-out validation set.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lrlab import data as data_lib
from lrlab import optimizers
from lrlab.schedules import ScheduleSpec

RUNNING, REACHED, DIVERGED, EXHAUSTED, PADDING, PRUNED, STOPPED = 0, 1, 2, 3, 4, 5, 6
STATUS_NAMES = ("running", "reached", "diverged", "exhausted", "padding", "pruned", "stopped")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FLOAT16_INITIAL_SCALE = 2.0**15  # dynamic loss scaling (float16): the starting scale,
SCALE_PERIOD = 2000  # doubled after this many steps without overflow, halved at each overflow
NO_STEP = -1  # steps_to_target of a member that has not reached the target


class Population(flax.struct.PyTreeNode):
    """Every leaf has a leading member axis K."""

    params: Any
    opt_state: Any  # includes the per-member hyperparameters (opt_state.hyperparams)
    rng: jax.Array  # uint32[K, 2]: dropout key (and init / batch order with distinct seeds)
    member: jax.Array  # int32[K]: index of the member in the whole run (stable across re-packing)
    status: jax.Array  # int32[K]
    steps_trained: jax.Array  # int32[K]
    steps_to_target: jax.Array  # int32[K], NO_STEP until reached
    train_accuracy: jax.Array  # float32[K], at the latest evaluation
    loss: jax.Array  # float32[K], mean training loss over the latest segment
    model_state: Any = flax.struct.field(default_factory=dict)  # non-trained collections (batch_stats)
    loss_scale: jax.Array | None = None  # float32[K]: 1, or float16's dynamic loss scale
    scale_steps: jax.Array | None = None  # int32[K]: steps since the loss scale last changed
    best: Any = None  # early stopping: the variables at the best validation accuracy (else None)
    best_accuracy: jax.Array | None = None  # float32[K]: best validation accuracy so far (-1 before any)
    evals_since_best: jax.Array | None = None  # int32[K]

    @property
    def size(self) -> int:
        return int(self.status.shape[0])

    @property
    def variables(self) -> dict[str, Any]:
        """What `model.apply` takes: the parameters and the model state, per member."""
        return {"params": self.params, **self.model_state}


class SegmentMetrics(NamedTuple):
    """What a segment measured besides the new population."""

    accuracy: jax.Array  # float32[K]: training-subset accuracy after the segment
    step_loss: jax.Array  # float32[K, S]: each step's training loss (NaN where the member did not step)
    val_accuracy: jax.Array  # float32[K]: validation accuracy (early stopping), NaN without it


class TrainData(NamedTuple):
    """Device-resident uint8 images and int32 labels: the training set and the fixed eval subset."""

    train_images: jax.Array  # uint8[N, H, W, C]
    train_labels: jax.Array  # int32[N]
    eval_images: jax.Array  # uint8[E, H, W, C], E a multiple of the eval chunk
    eval_labels: jax.Array  # int32[E]
    eval_weight: jax.Array  # float32[E]: 1 for real examples, 0 for chunk padding
    val_images: jax.Array | None = None  # uint8[V, H, W, C]: held out from training (early stopping)
    val_labels: jax.Array | None = None  # int32[V]
    val_weight: jax.Array | None = None  # float32[V]


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Static settings of a population program (a change here compiles a new program)."""

    model: nn.Module
    optimizer: str
    batch_size: int = 100
    eval_chunk: int = 250
    distinct_seeds: bool = False  # False: all members share init, dropout and batch order
    member_chunk: int = 0  # members per vmap inside the member loop; 0: per backend (see member_map)
    static_overrides: tuple[tuple[str, float], ...] = ()
    schedule: ScheduleSpec | None = None  # learning-rate schedule shape; the peak rate is per member
    dtype: str = "float32"  # compute dtype (COMPUTE_DTYPES); parameters and optimizer state stay float32
    augment: tuple[float, float] | None = None  # (max shift in pixels, max rotation in degrees)
    patience: int = 0  # early stopping: evaluations without validation improvement; 0: off

    def __post_init__(self):
        if self.dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {self.dtype!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")

    @property
    def compute_dtype(self) -> Any:
        return COMPUTE_DTYPES[self.dtype]

    def make_tx(self) -> optax.GradientTransformation:
        return optimizers.make_optimizer(self.optimizer, dict(self.static_overrides), self.schedule)


def make_train_data(
    train_images: np.ndarray, train_labels: np.ndarray, eval_idx: np.ndarray, eval_chunk: int,
    val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
) -> TrainData:
    """Moves the dataset to the device once; pads the eval subset (and the validation set, if
    given) to a multiple of `eval_chunk`."""
    eval_images, eval_labels, eval_weight = pad_to_chunks(
        train_images[eval_idx], train_labels[eval_idx], eval_chunk
    )
    val = (None, None, None) if val_images is None else pad_to_chunks(val_images, val_labels, eval_chunk)
    return TrainData(
        jnp.asarray(train_images, jnp.uint8),
        jnp.asarray(train_labels, jnp.int32),
        eval_images,
        eval_labels,
        eval_weight,
        *val,
    )


def pad_to_chunks(images: np.ndarray, labels: np.ndarray, chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Pads an evaluation set to a multiple of `chunk`; the weight marks the real examples."""
    n = len(labels)
    pad = (-n) % chunk
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return jnp.asarray(images, jnp.uint8), jnp.asarray(labels, jnp.int32), jnp.asarray(weight)


def init_population(
    cfg: EngineConfig,
    hparams_K: dict[str, np.ndarray],
    image_shape: tuple[int, ...],
    seed: int,
    member_ids: np.ndarray | None = None,
) -> Population:
    """A fresh population: one member per entry of hparams_K['learning_rate'].

    With shared seeds every member starts from the same parameters (the study's "same seed for every
    run"); with distinct seeds member i uses the seed folded with its index.
    """
    lr_K = np.asarray(hparams_K["learning_rate"], np.float32)
    k = lr_K.shape[0]
    member = np.arange(k, dtype=np.int32) if member_ids is None else np.asarray(member_ids, np.int32)
    root = jax.random.PRNGKey(seed)
    if cfg.distinct_seeds:
        rng_K = jax.vmap(lambda m: jax.random.fold_in(root, m))(jnp.asarray(member))
    else:
        rng_K = jnp.broadcast_to(root, (k,) + root.shape)
    variables_K = dict(_init_variables(cfg.model, rng_K, tuple(image_shape), shared=not cfg.distinct_seeds))
    params_K = variables_K.pop("params")
    tx = cfg.make_tx()
    opt_state = optimizers.init_population_state(tx, params_K, hparams_K)
    return Population(
        params=params_K,
        model_state=variables_K,
        loss_scale=jnp.full((k,), FLOAT16_INITIAL_SCALE if cfg.dtype == "float16" else 1.0, jnp.float32),
        scale_steps=jnp.zeros((k,), jnp.int32),
        best=jax.tree_util.tree_map(jnp.copy, {"params": params_K, **variables_K}) if cfg.patience else None,
        best_accuracy=jnp.full((k,), -1.0, jnp.float32),
        evals_since_best=jnp.zeros((k,), jnp.int32),
        opt_state=opt_state,
        rng=rng_K,
        member=jnp.asarray(member),
        status=jnp.full((k,), RUNNING, jnp.int32),
        steps_trained=jnp.zeros((k,), jnp.int32),
        steps_to_target=jnp.full((k,), NO_STEP, jnp.int32),
        train_accuracy=jnp.zeros((k,), jnp.float32),
        loss=jnp.full((k,), jnp.nan, jnp.float32),
    )


def member_chunk_size(requested: int, k: int, weights_per_member: int) -> int:
    """Members vmapped together: the largest divisor of k not above the target.

    The target is `requested`, or per backend when 0. Elsewhere than CPU: all K (one vmap). On
    CPU a wide vmap outgrows the caches as models grow (benchmarks/member_chunking.py, 2 cores:
    tutorial_cnn at K=8 ran 1.12x the single-member speed in chunks of 1 but 0.40x as one vmap;
    small_cnn at K=48 ran 1.8-2.0x in chunks of 1 to 8), so the target is 2^20 weights per chunk,
    between 1 and 4 members.
    """
    if requested:
        target = requested
    elif jax.default_backend() == "cpu":
        target = min(4, max(1, (1 << 20) // max(weights_per_member, 1)))
    else:
        target = k
    return max(d for d in range(1, min(target, k) + 1) if k % d == 0)


def _members_and_chunk(cfg: EngineConfig, params_K: Any) -> tuple[int, int]:
    leaves = jax.tree_util.tree_leaves(params_K)
    k = leaves[0].shape[0]
    return k, member_chunk_size(cfg.member_chunk, k, sum(x.size for x in leaves) // k)


def member_map(fn: Callable, in_axes: tuple, k: int, chunk: int) -> Callable:
    """vmap of `fn` over k members, as a `lax.map` over chunks of `chunk` vmapped members.

    Arguments with in_axes None are shared by all members (broadcast, never copied).
    """
    vfn = jax.vmap(fn, in_axes=in_axes)
    if chunk >= k:
        return vfn
    split = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k // chunk, chunk) + a.shape[1:]), x)
    merge = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k,) + a.shape[2:]), x)

    def mapped(*args):
        per_member = [split(x) for x, ax in zip(args, in_axes) if ax == 0]

        def one_chunk(chunk_args):
            it = iter(chunk_args)
            return vfn(*[next(it) if ax == 0 else x for x, ax in zip(args, in_axes)])

        return merge(jax.lax.map(one_chunk, per_member))

    return mapped


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_one(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> Any:
    """One member's initial variables from its key (compiled once per model, whatever K)."""
    return model.init(jax.random.fold_in(rng, 0), jnp.zeros((1,) + image_shape, jnp.float32))


def _init_variables(model: nn.Module, rng_K: jax.Array, image_shape: tuple[int, ...], shared: bool) -> Any:
    """Each member's initial variables (parameters, batch statistics): one initialisation
    broadcast to all with a shared seed, else one per member's key, stacked."""
    k = rng_K.shape[0]
    if shared:
        one = _init_one(model, rng_K[0], image_shape)
        return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (k,) + x.shape), one)
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[_init_one(model, r, image_shape) for r in rng_K])


def cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B).mean()


def tree_all_finite(tree: Any) -> jax.Array:
    """True when every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)] + [jnp.bool_(True)]))


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
    """
    tx = cfg.make_tx()
    dtype = cfg.compute_dtype
    dynamic_scale = cfg.dtype == "float16"

    def member_step(state: MemberState, rng, active, images_B, labels_B, step):
        x = data_lib.to_float(images_B)
        if cfg.augment is not None:
            x = data_lib.augment_batch(jax.random.fold_in(jax.random.fold_in(rng, 3), step), x, *cfg.augment)
        x = x.astype(dtype)
        dropout_key = jax.random.fold_in(jax.random.fold_in(rng, 1), step)
        mutable = list(state.model_state)

        def loss_fn(p):
            variables = {"params": cast_floats(p, dtype), **state.model_state}
            logits, model_state = cfg.model.apply(variables, x, train=True, rngs={"dropout": dropout_key},
                                                  mutable=mutable)
            loss = cross_entropy(logits.astype(jnp.float32), labels_B)
            return loss * state.loss_scale, (loss, model_state)

        (_, (loss, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(lambda g: g / state.loss_scale, grads)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        loss_finite = jnp.isfinite(loss)
        overflow = (loss_finite & ~tree_all_finite(grads) & (state.loss_scale > 1.0)) if dynamic_scale else False
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
        return kept._replace(loss_scale=loss_scale, scale_steps=scale_steps), loss, diverged

    return member_step


def make_accuracy_fn(cfg: EngineConfig) -> Callable:
    """accuracy_K(variables_K, images, labels, weight): vectorized over members, chunked over examples.

    variables_K is what `model.apply` takes, per member: {"params": ..., and any model state}.
    """

    def accuracy(variables_K, images_E, labels_E, weight_E):
        chunk = cfg.eval_chunk
        n_chunks = images_E.shape[0] // chunk
        images = images_E.reshape((n_chunks, chunk) + images_E.shape[1:])
        labels = labels_E.reshape(n_chunks, chunk)
        weight = weight_E.reshape(n_chunks, chunk)

        k, chunk = _members_and_chunk(cfg, variables_K["params"])
        dtype = cfg.compute_dtype
        logits_fn = lambda v, x: cfg.model.apply({**v, "params": cast_floats(v["params"], dtype)}, x.astype(dtype))
        apply_K = member_map(logits_fn, (0, None), k, chunk)

        def chunk_correct(xs):
            x, y, w = xs
            logits_KBC = apply_K(variables_K, data_lib.to_float(x))
            return jnp.sum((jnp.argmax(logits_KBC, -1) == y) * w, axis=-1)

        correct_K = jax.lax.map(chunk_correct, (images, labels, weight)).sum(0)
        return correct_K / jnp.sum(weight_E)

    return accuracy


MEMBERS = "members"  # the mesh axis the population is sharded over


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every host) along the member axis."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (MEMBERS,))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (member) axis split over the mesh; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(MEMBERS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (the dataset, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Puts a pytree of arrays (the same values on every host) onto `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def to_host(tree: Any) -> Any:
    """A pytree of (possibly sharded, possibly multi-host) arrays as numpy arrays on every host."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)


def make_segment_fn(cfg: EngineConfig, num_steps: int, mesh: Mesh | None = None) -> Callable:
    """`make_segment` with the members sharded over `mesh` (default all devices), jitted, donated.

    `shard_map` runs the same per-member program on each device's slice of the population, with
    the dataset replicated: members never talk to each other, so no collective is needed. One
    code path for one device and many; the population size must be a multiple of the mesh size.
    """
    mesh = mesh if mesh is not None else make_mesh()
    members, whole = PartitionSpec(MEMBERS), PartitionSpec()
    sharded = jax.shard_map(make_segment(cfg, num_steps), mesh=mesh,
                            in_specs=(members, whole, whole, whole, whole, whole),
                            out_specs=(members, members), check_vma=False)
    return jax.jit(sharded, donate_argnums=0)


def make_segment(cfg: EngineConfig, num_steps: int) -> Callable:
    """Builds segment(pop, data, step0, data_key, target, max_steps) -> (pop, SegmentMetrics), unjitted.

    `num_steps` optimizer steps for every running member (one `lax.scan` of a `vmap`-ed step),
    then the training-subset accuracy of all members, then reached / exhausted marking. Learning
    rates, target and budget are data: changing them never recompiles.
    """
    member_step = make_member_step(cfg)
    accuracy_fn = make_accuracy_fn(cfg)

    def segment(pop: Population, data: TrainData, step0, data_key, target, max_steps):
        n = data.train_labels.shape[0]
        if cfg.distinct_seeds:  # each member its own batch order: idx[K, S, B]
            member_keys = jax.vmap(lambda r: jax.random.fold_in(r, 2))(pop.rng)
            idx = jax.vmap(lambda k: data_lib.segment_batch_indices(k, step0, num_steps, n, cfg.batch_size))(
                member_keys
            )
            idx_steps = jnp.swapaxes(idx, 0, 1)
            batch_axis = 0
        else:  # shared order: the batch is broadcast to all members, not copied
            idx_steps = data_lib.segment_batch_indices(data_key, step0, num_steps, n, cfg.batch_size)
            batch_axis = None
        k, chunk = _members_and_chunk(cfg, pop.params)
        vstep = member_map(member_step, (0, 0, 0, batch_axis, batch_axis, None), k, chunk)

        def body(carry, xs):
            state, status, steps_trained, loss_sum = carry
            t, idx = xs
            active = status == RUNNING
            state, loss, diverged = vstep(state, pop.rng, active, data.train_images[idx], data.train_labels[idx],
                                          step0 + t)
            status = jnp.where(diverged, DIVERGED, status)
            stepped = active & ~diverged
            steps_trained = steps_trained + stepped.astype(jnp.int32)
            loss_sum = loss_sum + jnp.where(stepped, loss, 0.0)
            return (state, status, steps_trained, loss_sum), jnp.where(stepped, loss, jnp.nan)

        state0 = MemberState(pop.params, pop.opt_state, pop.model_state, pop.loss_scale, pop.scale_steps)
        carry = (state0, pop.status, pop.steps_trained, jnp.zeros((k,), jnp.float32))
        (state, status, steps_trained, loss_sum), loss_SK = jax.lax.scan(
            body, carry, (jnp.arange(num_steps), idx_steps)
        )
        was_running = pop.status == RUNNING
        n_stepped = steps_trained - pop.steps_trained
        loss = jnp.where(n_stepped > 0, loss_sum / jnp.maximum(n_stepped, 1), pop.loss)
        variables = {"params": state.params, **state.model_state}
        acc_K = accuracy_fn(variables, data.eval_images, data.eval_labels, data.eval_weight)
        running = status == RUNNING
        reached = running & (acc_K >= target)
        status = jnp.where(reached, REACHED, status)
        new_pop = pop.replace(
            params=state.params, opt_state=state.opt_state, model_state=state.model_state,
            loss_scale=state.loss_scale, scale_steps=state.scale_steps, status=status,
            steps_trained=steps_trained, steps_to_target=jnp.where(reached, steps_trained, pop.steps_to_target),
            train_accuracy=jnp.where(was_running, acc_K, pop.train_accuracy), loss=loss,
        )
        val_acc_K = jnp.full((k,), jnp.nan, jnp.float32)
        if cfg.patience:
            val_acc_K = accuracy_fn(variables, data.val_images, data.val_labels, data.val_weight)
            new_pop = early_stopping_update(new_pop, variables, val_acc_K, running, cfg.patience)
        exhausted = (new_pop.status == RUNNING) & (steps_trained >= max_steps)
        new_pop = new_pop.replace(status=jnp.where(exhausted, EXHAUSTED, new_pop.status))
        return new_pop, SegmentMetrics(acc_K, loss_SK.T, val_acc_K)

    return segment


def early_stopping_update(pop: Population, variables_K: Any, val_acc_K: jax.Array, evaluated_K: jax.Array,
                          patience: int) -> Population:
    """After an evaluation of the members in `evaluated_K`: keep the variables of each one whose
    validation accuracy improved, and stop (STOPPED) a still-running member after `patience`
    evaluations without improvement."""
    improved = evaluated_K & (val_acc_K > pop.best_accuracy)
    keep_new = lambda best, new: jnp.where(improved.reshape((-1,) + (1,) * (new.ndim - 1)), new, best)
    evals_since = jnp.where(improved, 0, pop.evals_since_best + evaluated_K.astype(jnp.int32))
    stop = (pop.status == RUNNING) & (evals_since >= patience)
    return pop.replace(best=jax.tree_util.tree_map(keep_new, pop.best, variables_K),
                       best_accuracy=jnp.where(improved, val_acc_K, pop.best_accuracy),
                       evals_since_best=evals_since, status=jnp.where(stop, STOPPED, pop.status))


def restore_best(pop: Population) -> Population:
    """Early stopping's result: every member's variables at its best validation accuracy."""
    if pop.best is None:
        return pop
    best = dict(pop.best)
    return pop.replace(params=best.pop("params"), model_state=best)


def make_eval_fn(cfg: EngineConfig) -> Callable:
    """evaluate(variables_K, images, labels, weight) -> accuracy_K, jitted (used for the test set)."""
    return jax.jit(make_accuracy_fn(cfg))


def gather_members(pop: Population, idx: np.ndarray) -> Population:
    """The sub-population of members at positions `idx` (re-packing)."""
    idx = jnp.asarray(idx)
    return jax.tree_util.tree_map(lambda x: x[idx], pop)


def scatter_members(full: Population, idx: np.ndarray, sub: Population) -> Population:
    """Writes the first len(idx) members of `sub` back into `full` at positions `idx`."""
    n = len(idx)
    idx = jnp.asarray(idx)
    return jax.tree_util.tree_map(lambda f, s: f.at[idx].set(s[:n]), full, sub)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_size(n_running: int, full_size: int, multiple: int = 1) -> int:
    """Population size to re-pack `n_running` members into: the next power of two, at most K,
    rounded up to a multiple of the device count.

    Few distinct sizes means few compilations (log2 K at most).
    """
    size = 1
    while size < n_running:
        size *= 2
    return round_up(min(size, full_size), multiple)
