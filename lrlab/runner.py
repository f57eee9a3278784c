"""Drives populations through segments: timing, re-packing, curves, progress; and the sequential mode.

The engine (`population.py`) is pure and jitted; this module is the only Python loop. Between
segments it reads the members' status, records curves, stops on budget, and re-packs the still
running members into a smaller population so finished members stop costing compute.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lrlab import population as pop_lib
from lrlab.population import EngineConfig, Population, TrainData


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a member stops: target accuracy reached, or steps / seconds spent."""

    target_accuracy: float = 0.97
    max_steps: int = 3000
    max_seconds: float | None = None  # wall-clock training seconds (compilation excluded)
    eval_every: int = 50


@dataclasses.dataclass
class RunOutput:
    """Everything a run measured, member-indexed by position in the original population (host)."""

    final: Population  # numpy leaves, K members, in the original order
    curves: list[dict[str, list[float]]]  # per member: step, train_accuracy, loss, seconds
    seconds_to_target: np.ndarray  # float64[K], nan when not reached
    seconds_trained: np.ndarray  # float64[K]
    compile_seconds: float
    train_seconds: float  # wall-clock seconds of training (compilation excluded)
    segments: int = 0
    population_sizes: list[int] = dataclasses.field(default_factory=list)


class Programs:
    """Compiled segment programs keyed by (population size, steps): each compiled once, timed."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self._compiled: dict[tuple[int, int], Any] = {}
        self._jitted: dict[int, Callable] = {}
        self.compile_seconds = 0.0

    def get(self, num_steps: int, args: tuple) -> Callable:
        pop = args[0]
        key = (pop.size, num_steps)
        if key not in self._compiled:
            if num_steps not in self._jitted:
                self._jitted[num_steps] = pop_lib.make_segment_fn(self.cfg, num_steps)
            start = time.perf_counter()
            self._compiled[key] = self._jitted[num_steps].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]


def _status_counts(status: np.ndarray) -> dict[str, int]:
    return {name: int(np.sum(status == code)) for code, name in enumerate(pop_lib.STATUS_NAMES[:4])}


def _merge(full: Population | None, pos: np.ndarray, sub: Population) -> Population:
    """Writes the real members of `sub` into `full` (or `sub` is still the whole population)."""
    return sub if full is None else pop_lib.scatter_members(full, pos, sub)


def _to_host(tree: Any) -> Any:
    return jax.tree_util.tree_map(np.asarray, tree)


def train(
    pop: Population,
    data: TrainData,
    budget: Budget,
    data_key: jax.Array,
    programs: Programs,
    *,
    repack: bool = True,
    progress: bool = True,
    desc: str = "",
) -> RunOutput:
    """Trains `pop` until no member is running; returns the finished population and its curves."""
    k = pop.size
    curves = [{"step": [], "train_accuracy": [], "loss": [], "seconds": []} for _ in range(k)]
    seconds_to_target = np.full(k, np.nan)
    seconds_trained = np.zeros(k)
    # sub[i] is member pos[i]; entries >= n_real are padding. `full` holds every member once the
    # population has been re-packed (before that `sub` is the whole population: it is donated).
    full, sub, pos, n_real = None, pop, np.arange(k), k
    step, segments, sizes, train_seconds = 0, 0, [k], 0.0
    target = jnp.float32(budget.target_accuracy)
    max_steps = jnp.int32(budget.max_steps)
    bar = tqdm.tqdm(total=budget.max_steps, desc=desc, unit="step", disable=not progress, leave=True,
                    dynamic_ncols=True)
    status = np.full(k, pop_lib.RUNNING)
    while True:
        num_steps = min(budget.eval_every, budget.max_steps - step)
        args = (sub, data, jnp.int32(step), data_key, target, max_steps)
        program = programs.get(num_steps, args)
        start = time.perf_counter()
        sub, acc_K = program(*args)
        sub_status = np.asarray(sub.status)  # the one host synchronisation per segment
        train_seconds += time.perf_counter() - start
        step += num_steps
        segments += 1
        if budget.max_seconds is not None and train_seconds >= budget.max_seconds:
            sub = sub.replace(status=jnp.where(sub.status == pop_lib.RUNNING, pop_lib.EXHAUSTED, sub.status))
            sub_status = np.asarray(sub.status)
        acc, loss, trained = np.asarray(acc_K), np.asarray(sub.loss), np.asarray(sub.steps_trained)
        for i in range(n_real):
            m = pos[i]
            if status[m] != pop_lib.RUNNING:
                continue
            curve = curves[m]
            curve["step"].append(int(trained[i]))
            curve["train_accuracy"].append(float(acc[i]))
            curve["loss"].append(float(loss[i]))
            curve["seconds"].append(train_seconds)
            seconds_trained[m] = train_seconds
            if sub_status[i] == pop_lib.REACHED:
                seconds_to_target[m] = train_seconds
            status[m] = sub_status[i]
        counts = _status_counts(status)
        bar.update(num_steps)
        bar.set_postfix(counts, refresh=False)
        running = np.flatnonzero(sub_status[:n_real] == pop_lib.RUNNING)
        if running.size == 0:
            break
        size = pop_lib.bucket_size(running.size, k)
        if repack and size < sub.size:
            full = _merge(full, pos[:n_real], sub)
            real = pos[running]
            pos = np.concatenate([real, np.full(size - real.size, real[0])])
            sub = pop_lib.gather_members(full, pos)
            is_pad = jnp.arange(size) >= real.size
            sub = sub.replace(status=jnp.where(is_pad, pop_lib.PADDING, sub.status))
            n_real = real.size
            sizes.append(size)
    bar.close()
    full = _merge(full, pos[:n_real], sub)
    return RunOutput(
        final=_to_host(full),
        curves=curves,
        seconds_to_target=seconds_to_target,
        seconds_trained=seconds_trained,
        compile_seconds=programs.compile_seconds,
        train_seconds=train_seconds,
        segments=segments,
        population_sizes=sizes,
    )


def train_sequential(
    cfg: EngineConfig,
    hparams_K: dict[str, np.ndarray],
    data: TrainData,
    budget: Budget,
    seed: int,
    data_key: jax.Array,
    image_shape: tuple[int, ...],
    *,
    progress: bool = True,
    desc: str = "",
) -> RunOutput:
    """The baseline: the same members trained one after another (K=1 each), each timed on its own.

    One compiled program serves every member (hyperparameters are data). seconds_to_target is each
    member's own wall-clock, as the study measured it.
    """
    k = len(hparams_K["learning_rate"])
    programs = Programs(cfg)
    outputs = []
    for i in range(k):
        member_hparams = {name: np.asarray(values)[i : i + 1] for name, values in hparams_K.items()}
        pop = pop_lib.init_population(cfg, member_hparams, image_shape, seed, member_ids=np.array([i]))
        outputs.append(
            train(pop, data, budget, data_key, programs, repack=False, progress=progress,
                  desc=f"{desc} member {i + 1}/{k}")
        )
    final = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *[o.final for o in outputs])
    return RunOutput(
        final=final,
        curves=[o.curves[0] for o in outputs],
        seconds_to_target=np.concatenate([o.seconds_to_target for o in outputs]),
        seconds_trained=np.concatenate([o.seconds_trained for o in outputs]),
        compile_seconds=programs.compile_seconds,
        train_seconds=sum(o.train_seconds for o in outputs),
        segments=sum(o.segments for o in outputs),
        population_sizes=[1],
    )


def test_accuracy(cfg: EngineConfig, params_K: Any, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy of every member on a held-out set, vectorized over members."""
    images_E, labels_E, weight_E = pop_lib.pad_to_chunks(images, labels, cfg.eval_chunk)
    return np.asarray(pop_lib.make_eval_fn(cfg)(params_K, images_E, labels_E, weight_E))


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What a learning-rate sweep needs besides the dataset, optimizers and rates."""

    model: Any  # flax module
    budget: Budget
    batch_size: int = 100
    eval_examples: int = 2000
    seed: int = 0
    distinct_seeds: bool = False
    sequential: bool = False
    repack: bool = True
    member_chunk: int = 0
    progress: bool = True


def run_sweep(
    dataset: Any,
    population_hparams: dict[str, dict[str, np.ndarray]],
    static_overrides: dict[str, tuple[tuple[str, float], ...]],
    settings: SweepSettings,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Trains one population per optimizer (population_hparams: optimizer -> hparams_K).

    Returns the member records (results.json) and per-optimizer timing statistics.
    """
    from lrlab import data as data_lib
    from lrlab import results as results_lib

    eval_idx = data_lib.eval_subset_indices(len(dataset.train_labels), settings.eval_examples, settings.seed)
    eval_chunk = min(250, len(eval_idx))
    data = pop_lib.make_train_data(dataset.train_images, dataset.train_labels, eval_idx, eval_chunk)
    data_key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 2**20)
    records, stats = [], {}
    for optimizer, hparams_K in population_hparams.items():
        cfg = EngineConfig(model=settings.model, optimizer=optimizer, batch_size=settings.batch_size,
                           eval_chunk=eval_chunk, distinct_seeds=settings.distinct_seeds,
                           member_chunk=settings.member_chunk,
                           static_overrides=static_overrides.get(optimizer, ()))
        start = time.perf_counter()
        if settings.sequential:
            out = train_sequential(cfg, hparams_K, data, settings.budget, settings.seed, data_key,
                                   dataset.image_shape, progress=settings.progress, desc=optimizer)
        else:
            pop = pop_lib.init_population(cfg, hparams_K, dataset.image_shape, settings.seed)
            out = train(pop, data, settings.budget, data_key, Programs(cfg), repack=settings.repack,
                        progress=settings.progress, desc=optimizer)
        test_start = time.perf_counter()
        test_acc = test_accuracy(cfg, out.final.params, dataset.test_images, dataset.test_labels)
        test_seconds = time.perf_counter() - test_start
        records += results_lib.member_records(optimizer, hparams_K, out.final, out.curves,
                                              out.seconds_to_target, test_acc, settings.batch_size)
        stats[optimizer] = {
            "mode": "sequential" if settings.sequential else "vectorized",
            "members": len(hparams_K["learning_rate"]),
            "compile_seconds": out.compile_seconds,
            "train_seconds": out.train_seconds,
            "test_eval_seconds": test_seconds,
            "wall_seconds": time.perf_counter() - start,
            "segments": out.segments,
            "population_sizes": out.population_sizes,
        }
    return records, stats
