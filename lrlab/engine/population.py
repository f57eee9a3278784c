"""A population: K members of one task and optimizer family, every leaf of its pytree with a
leading member axis K, and how it is initialised; the data it trains on, on the device.

The program that trains it is built in `segment.py` (a `lax.scan` of the member-mapped step of
`step.py`, then a vectorized evaluation and the status update); Python only runs between segments
(`loop.py`); placement on devices and re-packing are host helpers (`placement.py`).

Member status:
  running    still training
  reached    the target met at an evaluation: steps_to_target recorded, frozen
  diverged   non-finite loss or parameters: it stops there, and its state goes back to the start of
             the segment it diverged in, so NaN never stays in its state (or reaches anyone else's)
  exhausted  budget (steps or seconds) spent without reaching the target
  padding    fills the population to a multiple of the device count; trains nothing
  pruned     stopped at a rung of successive halving for ranking low (--prune=sha)
  stopped    early stopping: no validation improvement for `patience` evaluations (best kept)
  retired    at chance, or out of pace for the target, for several evaluations: failed, stopped (--retire)

Training techniques are static settings of the program (`config.EngineConfig`): the compute dtype
(16-bit compute on float32 master weights, with dynamic loss scaling for float16), the task's
augmentation drawn from each step's key, model state such as batch statistics (per member), and
early stopping on a held-out validation set. The target is measured on the evaluation set, or,
under a streaming protocol (`stream_every`, protocols.py), as the running mean of the target metric
over the training batches; replicates (`seed_K`, training/replicates.py) give members their own
seeds' initialisation, dropout and batch order.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from lrlab.engine.config import EngineConfig
from lrlab.task import sampling
from lrlab.task.task import Task

RUNNING, REACHED, DIVERGED, EXHAUSTED, PADDING, PRUNED, STOPPED = 0, 1, 2, 3, 4, 5, 6
RETIRED = 7  # at chance or out of pace for several evaluations (retirement.py, --retire)
STATUS_NAMES = ("running", "reached", "diverged", "exhausted", "padding", "pruned", "stopped", "retired")
FLOAT16_INITIAL_SCALE = 2.0**15  # dynamic loss scaling (float16): the starting scale (step.py)
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


def eval_variables(cfg: EngineConfig, pop: Population) -> dict[str, Any]:
    """What evaluation applies the model to, per member: the parameters the optimizer evaluates
    (a schedule-free method's averaged point; the trained parameters otherwise) and the model state."""
    return {"params": cfg.optimizer.evaluated_params(pop.opt_state, pop.params), **pop.model_state}


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
    """Moves a run's data to the device once (`task.Splits`' arrays); pads the evaluation and
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
        rng_K, batch_key_K = keys_U[replicate_K], jnp.stack([sampling.data_key(int(s)) for s in seeds_U])[replicate_K]
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
