"""Sweeps: populations of members (an optimizer and each member's hyperparameters) trained on a
task, as one vectorized program each, or one member after another (the sequential baseline).

`run_sweep` is what every experiment trains with: the data split of the settings, one engine
configuration per population, the segment loop (`loop.train`) with its hooks (successive
halving), checkpoints in the run's scope, the test-set evaluation, and one record per member.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from lrlab import digests
from lrlab.engine import loop, lowering, memory, placement, population, protocols
from lrlab.engine.config import EngineConfig
from lrlab.engine.population import TrainData
from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.optim.optimizers import Optimizer
from lrlab.store import records as records_lib
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.task import sampling
from lrlab.task import task as task_lib
from lrlab.task.task import Task
from lrlab.training import replicates, retirement
from lrlab.training.pruning import SuccessiveHalving
from lrlab.training.settings import SweepSettings

EVAL_CHUNK = 250  # evaluation examples per chunk (the evaluation is a lax.map over chunks)


def engine_config(task: Task, optimizer: Optimizer, settings: SweepSettings, eval_chunk: int) -> EngineConfig:
    """The engine configuration of one population under `settings`."""
    return EngineConfig(task=task, optimizer=optimizer, batch_size=settings.batch_size, eval_chunk=eval_chunk,
                        distinct_seeds=settings.distinct_seeds, member_chunk=settings.member_chunk,
                        schedule=settings.schedule, dtype=settings.dtype, augment=settings.augment,
                        patience=settings.patience,
                        stream_every=protocols.stream_every(settings.protocol, settings.budget.eval_every))


def check_fits(task: Task, settings: SweepSettings, populations: Sequence[Members] = ()) -> None:
    """The settings that must fit the task's data, and each population the devices' memory
    (`memory.check`), checked before any work: ValueError naming the setting (as the command
    line's flag) and the data's size otherwise, memory.TooLarge for a population too large."""
    task.probe()
    n = task.num_train
    if settings.patience and not 0 < settings.validation_examples < n:
        raise ValueError(f"validation_examples={settings.validation_examples}: {task.name} has only {n:,} training "
                         "examples (early stopping holds them out of training)")
    n_train = n - (settings.validation_examples if settings.patience else 0)
    if settings.batch_size > n_train:
        raise ValueError(f"batch_size={settings.batch_size}: more than the {n_train:,} examples {task.name} trains on")
    if task.eval is None and settings.eval_examples > n_train:
        raise ValueError(f"eval_examples={settings.eval_examples}: the target is measured on a subset of the "
                         f"{n_train:,} training examples of {task.name}: give at most that many")
    data_bytes = memory.tree_bytes(task.train) + (memory.tree_bytes(task.eval) if task.eval is not None else 0)
    for members in populations:
        memory.check(engine_config(task, members.optimizer, settings, EVAL_CHUNK), members.size * settings.seeds,
                     data_bytes)


def sweep_data(task: Task, settings: SweepSettings) -> tuple[TrainData, int]:
    """The device-resident data of a sweep and its evaluation chunk (`task.split`: with early
    stopping, `validation_examples` training examples are held out)."""
    check_fits(task, settings)
    splits = task_lib.split(task, settings.eval_examples, settings.seed,
                         settings.validation_examples if settings.patience else 0)
    eval_chunk = min(EVAL_CHUNK, task_lib.num_examples(splits.eval))
    return population.make_train_data(splits.train, splits.eval, eval_chunk, splits.val), eval_chunk


def identity(task: Task, members: Members, settings: SweepSettings, **extra: Any) -> dict[str, Any]:
    """What a population's checkpoint must match to be resumed (JSON): task, optimizer, members, settings."""
    return {**task.identity(), "optimizer": members.optimizer.name, "population": members.name,
            "hparams": members.to_json(), "settings": settings.to_json(), **extra}


def api_identity(task: Task, populations: Sequence[Members], settings: Any, **extra: Any) -> dict[str, Any]:
    """What a workdir claimed from Python must match on resume (the command line saves its flags)."""
    return {"task": task.identity(), "populations": {m.name: m.to_json() for m in populations},
            "settings": settings.to_json(),
            "optimizer_code": {m.name: digests.code_digest(m.optimizer.factory) for m in populations}, **extra}


def lowered_programs(cfg: EngineConfig, pop: population.Population, data: TrainData, settings: SweepSettings,
                     scope: Scope, mesh: jax.sharding.Mesh | None = None) -> tuple[loop.Programs, lowering.Choice]:
    """The programs of `pop` (on `mesh`, default `placement.mesh_for` its size) under the lowering
    chosen for it (`lowering.choose`: measured, or the settings' `lowering`, `member_chunk` and `loop_order`),
    which `scope` keeps so that a resumed run reuses it."""
    mesh = mesh if mesh is not None else placement.mesh_for(pop.size)
    choice = lowering.choose(cfg, pop, data, sampling.data_key(settings.seed), settings.budget.max_steps, mesh,
                             conv=settings.lowering, member_chunk=settings.member_chunk,
                             loop_order=settings.loop_order, saved=scope.saved_lowering())
    scope.save_lowering(choice.to_json())
    return loop.Programs(choice.lowering.applied_to(cfg), mesh), choice


def test_metrics(cfg: EngineConfig, final: population.Population) -> dict[str, np.ndarray] | None:
    """Each member's metrics on the task's test set (None without one)."""
    if cfg.task.test is None:
        return None
    return loop.evaluate_members(cfg, population.eval_variables(cfg, final), cfg.task.test)


def train_population(task: Task, members: Members, settings: SweepSettings, data: TrainData, eval_chunk: int, *,
                     scope: Scope = NO_SCOPE, stop: StopSignal | None = None,
                     hooks: Sequence[loop.Hook] = (), desc: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One population trained (vectorized, or one member after another with `settings.sequential`),
    checkpointed in `scope`; returns its member records and its timing. With `settings.seeds` > 1
    every member is trained as that many replicates (records in a row, each with its `seed`)."""
    cfg = engine_config(task, members.optimizer, settings, eval_chunk)
    seed_K = None
    if settings.seeds > 1:
        members, seed_K = replicates.expand(members, settings.seeds, settings.seed)
    memory.check(cfg, members.size, memory.tree_bytes(data))
    start = time.perf_counter()
    ident = identity(task, members, settings)
    hooks = list(hooks)
    if settings.prune is not None:
        hooks.append(SuccessiveHalving(settings.prune, settings.budget.max_steps, settings.budget.eval_every))
    hooks += retirement.hooks(settings.retire, task, data, 1 if settings.sequential else members.size,
                              settings.budget.max_steps,
                              settings.schedule.warmup_steps if settings.schedule is not None else 0)
    if settings.sequential:
        out, programs, choice = train_sequential(cfg, members, data, settings, scope, ident, stop=stop, hooks=hooks,
                                                 desc=desc, seed_K=seed_K)
    else:
        pop = population.init_population(cfg, members.hparams, settings.seed, seed_K=seed_K)
        programs, choice = lowered_programs(cfg, pop, data, settings, scope)
        out = loop.train(pop, data, settings.budget, sampling.data_key(settings.seed), programs,
                         freeze_at_target=settings.stop_at_target, repack=settings.repack,
                         progress=settings.progress, desc=desc, hooks=hooks, checkpoints=scope.checkpoints(ident),
                         stop=stop)
    test_start = time.perf_counter()
    tests = test_metrics(programs.cfg, out.final)
    test_seconds = time.perf_counter() - test_start
    records = records_lib.member_records(members.name, members.hparams, out.final, out.curves, out.seconds_to_target,
                                     tests, settings.batch_size, task.target_key, task.metric_keys())
    for record, seed in zip(records, [] if seed_K is None else seed_K):
        record["seed"] = int(seed)
    for hook in hooks:
        if isinstance(hook, retirement.Retirement):
            retirement.name_rules(records, hook.tracker.reason)
    stats = {
        "mode": "sequential" if settings.sequential else "vectorized",
        "members": members.size,
        "compile_seconds": out.compile_seconds,
        "train_seconds": out.train_seconds,
        "test_eval_seconds": test_seconds,
        "wall_seconds": time.perf_counter() - start,
        "segments": out.segments,
        "population_sizes": out.population_sizes,
        "compactions": out.compactions,
        "lowering": choice.to_json(),
    }
    return records, stats


def run_sweep(task: Task, populations: Sequence[Members], settings: SweepSettings, *, scope: Scope = NO_SCOPE,
              stop: StopSignal | None = None,
              make_hooks: Callable[[Members, EngineConfig], Sequence[loop.Hook]] | None = None,
              ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Trains each population in turn (each checkpointed in scope/<its name>/ and resumed from there:
    a finished one is restored, not retrained). `make_hooks(members, cfg)` gives a population's extra
    hooks. Returns the member records (results.json) and per-population timing."""
    names = [m.name for m in populations]
    if len(set(names)) != len(names):
        raise ValueError(f"population names must differ (they name checkpoint folders): {', '.join(names)}")
    data, eval_chunk = sweep_data(task, settings)
    records, stats = [], {}
    for members in populations:
        hooks = () if make_hooks is None else make_hooks(members, engine_config(task, members.optimizer, settings,
                                                                                  eval_chunk))
        population_records, stats[members.name] = train_population(
            task, members, settings, data, eval_chunk, scope=scope.child(members.name), stop=stop,
            hooks=hooks, desc=members.name)
        records += population_records
    return records, stats


def train_sequential(cfg: EngineConfig, members: Members, data: TrainData, settings: SweepSettings, scope: Scope,
                     ident: dict[str, Any], *, stop: StopSignal | None = None, hooks: Sequence[loop.Hook] = (),
                     desc: str = "", seed_K: np.ndarray | None = None
                     ) -> tuple[loop.RunOutput, loop.Programs, lowering.Choice]:
    """The baseline: the same members trained one after another (K=1 each), each timed on its own
    clock as the study measured it, each checkpointed in scope/member-<i>/. One compiled program
    serves every member (hyperparameters are data), lowered as chosen for the first."""
    first = population.init_population(cfg, members.subset([0]).hparams, settings.seed, member_ids=np.array([0]),
                                       seed_K=None if seed_K is None else seed_K[:1])
    programs, choice = lowered_programs(cfg, first, data, settings, scope, placement.make_mesh(jax.local_devices()[:1]))
    cfg = programs.cfg
    outputs, reasons = [], []
    for i in range(members.size):
        one = members.subset([i])
        pop = population.init_population(cfg, one.hparams, settings.seed, member_ids=np.array([i]),
                                      seed_K=None if seed_K is None else seed_K[i:i + 1])
        # each member's run its own copy of a hook's state (retirement's streaks)
        hooks_i = [_Shifted(hook, i) if isinstance(hook, loop.SegmentCallback) else copy.deepcopy(hook)
                   for hook in hooks]
        outputs.append(loop.train(pop, data, settings.budget, sampling.data_key(settings.seed), programs,
                                    freeze_at_target=settings.stop_at_target, repack=False,
                                    progress=settings.progress, desc=f"{desc} member {i + 1}/{members.size}",
                                    checkpoints=scope.child(f"member-{i}").checkpoints({**ident, "member": i}),
                                    stop=stop, hooks=hooks_i))
        reasons.append(next((h.tracker.reason[0] for h in hooks_i if isinstance(h, retirement.Retirement)), ""))
    for hook in hooks:  # the rule that retired each member, as a population's hook would hold it
        if isinstance(hook, retirement.Retirement):
            hook.tracker.reason = np.asarray(reasons, object)
    final = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *[o.final for o in outputs])
    return loop.RunOutput(
        final=final,
        curves=[o.curves[0] for o in outputs],
        seconds_to_target=np.concatenate([o.seconds_to_target for o in outputs]),
        seconds_trained=np.concatenate([o.seconds_trained for o in outputs]),
        compile_seconds=programs.compile_seconds,
        train_seconds=sum(o.train_seconds for o in outputs),
        segments=sum(o.segments for o in outputs),
        population_sizes=[1],
        steps_run=max(o.steps_run for o in outputs),
    ), programs, choice


class _Shifted(loop.SegmentCallback):
    """A segment callback of the whole population, given member i's one-member runs (positions + i)."""

    def __init__(self, hook: loop.SegmentCallback, offset: int):
        super().__init__(lambda sub, entries, pos, step: hook.fn(sub, entries, pos + offset, step))
