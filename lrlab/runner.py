"""Drives populations through segments: timing, re-packing, curves, progress; and the sequential mode.

The engine (`population.py`) is pure and jitted; this module is the only Python loop. Between
segments it reads the members' status, records curves, stops on budget, and re-packs the still
running members into a smaller population so finished members stop costing compute.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lrlab import data as data_lib
from lrlab import population as pop_lib
from lrlab.pruning import PruneSpec, rung_cut
from lrlab.checkpoints import Interrupted, RunCheckpoints, StopSignal
from lrlab.population import EngineConfig, Population, TrainData
from lrlab.schedules import ScheduleSpec

# Called after each segment with (population on device, positions of its real members in the original
# population, step). It may return extra per-member metrics {name: values[n_real]}: each member that
# got this segment's curve entry gets curve[name].append(value), checkpointed with the curves.
SegmentCallback = Callable[[Population, np.ndarray, int], "dict[str, np.ndarray] | None"]


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
    """Compiled segment programs keyed by (population size, steps): each compiled once, timed.

    Members are sharded over `mesh` (default: all devices); population sizes are multiples of its
    size (`multiple`), reached with padding members.
    """

    def __init__(self, cfg: EngineConfig, mesh: jax.sharding.Mesh | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else pop_lib.make_mesh()
        self.multiple = self.mesh.size
        self._compiled: dict[tuple[int, int], Any] = {}
        self._jitted: dict[int, Callable] = {}
        self.compile_seconds = 0.0

    def get(self, num_steps: int, args: tuple) -> Callable:
        pop = args[0]
        key = (pop.size, num_steps)
        if key not in self._compiled:
            if num_steps not in self._jitted:
                self._jitted[num_steps] = pop_lib.make_segment_fn(self.cfg, num_steps, self.mesh)
            start = time.perf_counter()
            self._compiled[key] = self._jitted[num_steps].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    def shard(self, pop: Population) -> Population:
        return pop_lib.place(pop, pop_lib.member_sharding(self.mesh))

    def replicate(self, tree: Any) -> Any:
        return pop_lib.place(tree, pop_lib.replicated(self.mesh))


def _status_counts(status: np.ndarray) -> dict[str, int]:
    """Members per status for the progress bar (statuses nobody has are left out, except running)."""
    counts = {name: int(np.sum(status == code)) for code, name in enumerate(pop_lib.STATUS_NAMES)
              if code != pop_lib.PADDING}
    return {name: n for name, n in counts.items() if n or name == "running"}


def _merge(full: Population | None, pos: np.ndarray, sub: Population) -> Population:
    """Writes the real members of `sub` into `full` (or `sub` is still the whole population)."""
    return sub if full is None else pop_lib.scatter_members(full, pos, sub)


def _pack(full: Population, members: np.ndarray, size: int, programs: Programs) -> tuple[Population, np.ndarray]:
    """The population of `members` (positions in `full`) padded to `size` with copies of the first,
    marked PADDING, sharded over the mesh. Returns it and the position of each of its entries."""
    pos = np.concatenate([members, np.full(size - members.size, members[0])]).astype(np.int64)
    sub = pop_lib.gather_members(full, pos)
    is_pad = jnp.arange(size) >= members.size
    sub = sub.replace(status=jnp.where(is_pad, pop_lib.PADDING, sub.status))
    return programs.shard(sub), pos


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
    checkpoints: RunCheckpoints | None = None,
    stop: StopSignal | None = None,
    segment_callback: SegmentCallback | None = None,
    prune: PruneSpec | None = None,
) -> RunOutput:
    """Trains `pop` until no member is running; returns the finished population and its curves.

    With `prune`, successive halving stops the weakest running members at its rungs (PRUNED).
    With early stopping (cfg.patience), each member's returned variables are its best ones.

    With `checkpoints`, it resumes from the latest one (if any) and saves one every
    `checkpoints.every` segments, at the end, and when `stop` is requested (then raises
    `Interrupted`). A resumed run gives the uninterrupted run's results: batches depend only on
    (data_key, step), and the re-packed population is rebuilt from the saved statuses.
    `segment_callback` (see SegmentCallback) runs outside the training clock; what it returns is
    stored in the curves, so it survives a resume too.
    """
    k = pop.size
    curves = [{"step": [], "train_accuracy": [], "loss": [], "seconds": []} for _ in range(k)]
    seconds_to_target = np.full(k, np.nan)
    seconds_trained = np.zeros(k)
    step, segments, sizes, train_seconds = 0, 0, [], 0.0
    status = np.full(k, pop_lib.RUNNING)
    full = None  # every member, once `sub` is no longer the whole population (which it donates)
    restored = checkpoints.restore(pop, programs.mesh) if checkpoints is not None else None
    if restored is not None:
        full, state = restored
        step, segments, sizes, train_seconds = state["step"], state["segments"], state["sizes"], state["train_seconds"]
        status = np.asarray(state["status"])
        curves = state["curves"]
        seconds_to_target = np.asarray(state["seconds_to_target"], np.float64)
        seconds_trained = np.asarray(state["seconds_trained"], np.float64)

    def host_state() -> dict[str, Any]:
        return {"step": step, "segments": segments, "sizes": sizes, "train_seconds": train_seconds,
                "status": status.tolist(), "curves": curves, "seconds_to_target": seconds_to_target.tolist(),
                "seconds_trained": seconds_trained.tolist()}

    def save() -> None:
        checkpoints.save(segments, _merge(full, pos[:n_real], sub), host_state())

    rungs = set(prune.rungs(budget.max_steps, budget.eval_every)) if prune is not None else set()
    last_accuracy = lambda: np.array([c["train_accuracy"][-1] if c["train_accuracy"] else np.nan for c in curves])
    reached_at = lambda: np.array([c["step"][-1] if status[m] == pop_lib.REACHED else -1
                                   for m, c in enumerate(curves)])
    running = np.flatnonzero(status == pop_lib.RUNNING)
    multiple = programs.multiple
    if restored is not None:  # rebuild the population the uninterrupted run would hold now
        size = pop_lib.bucket_size(running.size, k, multiple) if repack else pop_lib.round_up(k, multiple)
        members = running if repack else np.arange(k)
        sub, pos = _pack(full, members, size, programs) if running.size else (None, np.arange(0))
        n_real = members.size
    elif k % multiple:  # pad to a multiple of the device count
        full = programs.replicate(pop)
        sub, pos = _pack(full, np.arange(k), pop_lib.round_up(k, multiple), programs)
        n_real = k
    else:
        sub, pos, n_real = programs.shard(pop), np.arange(k), k
    if not sizes:
        sizes = [sub.size]
    data = programs.replicate(data)
    target = jnp.float32(budget.target_accuracy)
    max_steps = jnp.int32(budget.max_steps)
    bar = tqdm.tqdm(total=budget.max_steps, initial=step, desc=desc, unit="step", disable=not progress,
                    leave=True, dynamic_ncols=True)
    while running.size:
        num_steps = min(budget.eval_every, budget.max_steps - step)
        args = (sub, data, jnp.int32(step), data_key, target, max_steps)
        program = programs.get(num_steps, args)
        start = time.perf_counter()
        sub, metrics = program(*args)
        sub_status = pop_lib.to_host(sub.status)  # the one host synchronisation per segment
        train_seconds += time.perf_counter() - start
        step += num_steps
        segments += 1
        if budget.max_seconds is not None and train_seconds >= budget.max_seconds:
            sub = sub.replace(status=jnp.where(sub.status == pop_lib.RUNNING, pop_lib.EXHAUSTED, sub.status))
            sub_status = pop_lib.to_host(sub.status)
        acc, val_acc, loss, trained = pop_lib.to_host((metrics.accuracy, metrics.val_accuracy, sub.loss,
                                                       sub.steps_trained))
        recorded = []  # entries of `sub` whose member got a curve entry this segment
        for i in range(n_real):
            m = pos[i]
            if status[m] != pop_lib.RUNNING:
                continue
            recorded.append(i)
            curve = curves[m]
            curve["step"].append(int(trained[i]))
            curve["train_accuracy"].append(float(acc[i]))
            curve["loss"].append(float(loss[i]))
            curve["seconds"].append(train_seconds)
            if programs.cfg.patience:
                curve.setdefault("val_accuracy", []).append(float(val_acc[i]))
            seconds_trained[m] = train_seconds
            if sub_status[i] == pop_lib.REACHED:
                seconds_to_target[m] = train_seconds
            status[m] = sub_status[i]
        if segment_callback is not None:
            extra = segment_callback(sub, pos[:n_real], step) or {}
            for name, values in extra.items():
                for i in recorded:
                    curves[pos[i]].setdefault(name, []).append(float(values[i]))
        if prune is not None and step in rungs:
            cut = rung_cut(status, last_accuracy(), reached_at(), prune.eta)
            if cut.size:
                status[cut] = pop_lib.PRUNED
                is_cut = np.isin(pos, cut) & (np.arange(sub.size) < n_real)
                sub = sub.replace(status=jnp.where(programs.shard(jnp.asarray(is_cut)), pop_lib.PRUNED, sub.status))
        bar.update(num_steps)
        bar.set_postfix(_status_counts(status), refresh=False)
        running = np.flatnonzero(status == pop_lib.RUNNING)
        if running.size and repack:
            size = pop_lib.bucket_size(running.size, k, multiple)
            if size < sub.size:
                full = _merge(full, pos[:n_real], sub)
                sub, pos = _pack(full, running, size, programs)
                n_real = running.size
                sizes.append(size)
        if checkpoints is not None and (stop is not None and stop.requested or checkpoints.due(segments)
                                        or not running.size):
            save()
        if checkpoints is not None and stop is not None and stop.requested and running.size:
            bar.close()
            raise Interrupted(stop.requested, step, checkpoints.directory)
    bar.close()
    if sub is not None:
        full = _merge(full, pos[:n_real], sub)
    return RunOutput(
        final=pop_lib.restore_best(pop_lib.to_host(full)),
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
    checkpoint_dir: pathlib.Path | None = None,
    checkpoint_every: int = 10,
    identity: dict[str, Any] | None = None,
    stop: StopSignal | None = None,
    segment_callback: SegmentCallback | None = None,
) -> RunOutput:
    """The baseline: the same members trained one after another (K=1 each), each timed on its own.

    One compiled program serves every member (hyperparameters are data). seconds_to_target is each
    member's own wall-clock, as the study measured it.
    """
    k = len(hparams_K["learning_rate"])
    programs = Programs(cfg, pop_lib.make_mesh(jax.local_devices()[:1]))
    outputs = []
    for i in range(k):
        member_hparams = {name: np.asarray(values)[i : i + 1] for name, values in hparams_K.items()}
        pop = pop_lib.init_population(cfg, member_hparams, image_shape, seed, member_ids=np.array([i]))
        checkpoints = None if checkpoint_dir is None else RunCheckpoints(
            checkpoint_dir / f"member-{i}", {**(identity or {}), "member": i}, checkpoint_every)
        callback = None if segment_callback is None else (  # positions in the whole population
            lambda sub, pos, step, i=i: segment_callback(sub, pos + i, step))
        outputs.append(
            train(pop, data, budget, data_key, programs, repack=False, progress=progress,
                  desc=f"{desc} member {i + 1}/{k}", checkpoints=checkpoints, stop=stop,
                  segment_callback=callback)
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


def test_accuracy(cfg: EngineConfig, variables_K: Any, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy of every member on a held-out set, vectorized over members (variables_K:
    `Population.variables`, the parameters and any model state)."""
    images_E, labels_E, weight_E = pop_lib.pad_to_chunks(images, labels, cfg.eval_chunk)
    return np.asarray(pop_lib.make_eval_fn(cfg)(variables_K, images_E, labels_E, weight_E))


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
    checkpoint_dir: pathlib.Path | None = None  # None: no checkpoints (and no resume)
    checkpoint_every: int = 10  # segments between checkpoints (0: only at the end and on a signal)
    schedule: ScheduleSpec | None = None  # learning-rate schedule (None: constant)
    dtype: str = "float32"  # compute dtype; weights and optimizer state stay float32
    augment: tuple[float, float] | None = None  # (max shift pixels, max degrees) or None
    patience: int = 0  # early stopping after this many evaluations without improvement; 0: off
    validation_examples: int = 5000  # held out of the training set for early stopping (patience > 0)
    prune: PruneSpec | None = None  # successive halving (vectorized runs only)


def run_identity(optimizer: str, hparams_K: dict[str, np.ndarray], settings: SweepSettings,
                 static_overrides: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (JSON): the model, optimizer and members."""
    return {"model": repr(settings.model), "optimizer": optimizer,
            "hparams": {name: [float(v) for v in np.asarray(values)] for name, values in hparams_K.items()},
            "static": [list(kv) for kv in static_overrides], "batch_size": settings.batch_size,
            "seed": settings.seed, "distinct_seeds": settings.distinct_seeds,
            "sequential": settings.sequential, "repack": settings.repack,
            "schedule": dataclasses.asdict(settings.schedule) if settings.schedule else None,
            "dtype": settings.dtype, "augment": list(settings.augment) if settings.augment else None,
            "patience": settings.patience,
            "validation_examples": settings.validation_examples if settings.patience else 0,
            "prune": dataclasses.asdict(settings.prune) if settings.prune else None}


def sweep_data(dataset: Any, settings: SweepSettings) -> tuple[TrainData, int]:
    """The device-resident training data of a sweep and its evaluation chunk.

    With early stopping, `validation_examples` training images (drawn by the seed) are held out:
    training and the target's evaluation subset use the rest, early stopping the held-out ones.
    """
    images, labels = dataset.train_images, dataset.train_labels
    val_images = val_labels = None
    if settings.patience:
        train_idx, val_idx = data_lib.split_validation(len(labels), settings.validation_examples, settings.seed)
        val_images, val_labels = images[val_idx], labels[val_idx]
        images, labels = images[train_idx], labels[train_idx]
    eval_idx = data_lib.eval_subset_indices(len(labels), settings.eval_examples, settings.seed)
    eval_chunk = min(250, len(eval_idx))
    return pop_lib.make_train_data(images, labels, eval_idx, eval_chunk, val_images, val_labels), eval_chunk


def sweep_config(settings: SweepSettings, optimizer: str, eval_chunk: int,
                 static_overrides: tuple[tuple[str, float], ...] = ()) -> EngineConfig:
    """The engine configuration of one optimizer's population under `settings`."""
    return EngineConfig(model=settings.model, optimizer=optimizer, batch_size=settings.batch_size,
                        eval_chunk=eval_chunk, distinct_seeds=settings.distinct_seeds,
                        member_chunk=settings.member_chunk, schedule=settings.schedule,
                        static_overrides=static_overrides, dtype=settings.dtype, augment=settings.augment,
                        patience=settings.patience)


def run_sweep(
    dataset: Any,
    population_hparams: dict[str, dict[str, np.ndarray]],
    static_overrides: dict[str, tuple[tuple[str, float], ...]],
    settings: SweepSettings,
    stop: StopSignal | None = None,
    make_segment_callback: Callable[[str, EngineConfig], SegmentCallback | None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Trains one population per optimizer (population_hparams: optimizer -> hparams_K).

    With `settings.checkpoint_dir`, each optimizer's training checkpoints to its own folder there
    and resumes from it; a finished one is restored, not retrained. `make_segment_callback(optimizer,
    cfg)` gives each optimizer's `train` its segment callback. Returns the member records
    (results.json) and per-optimizer timing statistics.
    """
    from lrlab import results as results_lib

    if settings.sequential and settings.prune is not None:
        raise ValueError("pruning ranks members against each other: it needs a vectorized run, not sequential")
    data, eval_chunk = sweep_data(dataset, settings)
    data_key = jax.random.fold_in(jax.random.PRNGKey(settings.seed), 2**20)
    records, stats = [], {}
    for optimizer, hparams_K in population_hparams.items():
        cfg = sweep_config(settings, optimizer, eval_chunk, static_overrides.get(optimizer, ()))
        start = time.perf_counter()
        identity = run_identity(optimizer, hparams_K, settings, cfg.static_overrides)
        ckpt_dir = None if settings.checkpoint_dir is None else settings.checkpoint_dir / optimizer
        callback = None if make_segment_callback is None else make_segment_callback(optimizer, cfg)
        if settings.sequential:
            out = train_sequential(cfg, hparams_K, data, settings.budget, settings.seed, data_key,
                                   dataset.image_shape, progress=settings.progress, desc=optimizer,
                                   checkpoint_dir=ckpt_dir, checkpoint_every=settings.checkpoint_every,
                                   identity=identity, stop=stop, segment_callback=callback)
        else:
            pop = pop_lib.init_population(cfg, hparams_K, dataset.image_shape, settings.seed)
            checkpoints = None if ckpt_dir is None else RunCheckpoints(ckpt_dir, identity, settings.checkpoint_every)
            out = train(pop, data, settings.budget, data_key, Programs(cfg), repack=settings.repack,
                        progress=settings.progress, desc=optimizer, checkpoints=checkpoints, stop=stop,
                        segment_callback=callback, prune=settings.prune)
        test_start = time.perf_counter()
        test_acc = test_accuracy(cfg, out.final.variables, dataset.test_images, dataset.test_labels)
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


def train_variants(dataset: Any, optimizer: str, hparams_K: dict[str, np.ndarray],
                   static_overrides: tuple[tuple[str, float], ...], variants: dict[str, SweepSettings], field: str,
                   stop: StopSignal | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One population of the same members per variant of the settings (a schedule, a technique),
    each checkpointed in its own folder; returns the member records, each with `field` = its
    variant's name, and per-variant timing."""
    members, timing = [], {}
    for n, (name, settings) in enumerate(variants.items()):
        if settings.progress:
            print(f"{field} {name} ({n + 1} of {len(variants)})", flush=True)
        records, stats = run_sweep(dataset, {optimizer: hparams_K}, {optimizer: static_overrides}, settings, stop=stop)
        members += [{field: name, **r} for r in records]
        timing[name] = stats[optimizer]
        reached = sum(r["status"] == "reached" for r in records)
        print(f"{field} {name}: {reached} of {len(records)} rates reached the target; compile "
              f"{stats[optimizer]['compile_seconds']:.1f} s, training {stats[optimizer]['train_seconds']:.1f} s",
              flush=True)
    return members, timing
