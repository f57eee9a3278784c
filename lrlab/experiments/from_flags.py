"""What the flags mean to the library: the task, the populations and the settings a command trains
with, each one clear line on a bad value (one place, so a new flag reaches every experiment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lrlab.engine import memory
from lrlab.engine.loop import Budget
from lrlab.experiments.command import fail
from lrlab.experiments.common_flags import FLAGS, HPARAM_FLAGS, parse_hparam_axes, parse_rates
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers, schedules
from lrlab.store import views
from lrlab.task import classification, datasets, models
from lrlab.task import dataset as dataset_lib
from lrlab.task import task as task_lib
from lrlab.training import pruning, retirement, sweep
from lrlab.training.settings import SweepSettings


def load_dataset() -> dataset_lib.Dataset:
    """The dataset of --dataset / --data_dir, or one clear line naming the flag."""
    try:
        return datasets.load_dataset(FLAGS.dataset, FLAGS.data_dir)
    except dataset_lib.DatasetError as e:
        fail(f"--dataset={FLAGS.dataset}: {e}")


def task(width: float | None = None, batch_norm: bool | None = None, dataset: dataset_lib.Dataset | None = None
         ) -> task_lib.Task:
    """The task of the flags: --task's, with --target_goal; or the built-in image classification of
    --model (at `width`, with `batch_norm` if given) on --dataset, target --target_accuracy.
    One clear line on failure."""
    if FLAGS.task:
        try:
            built = task_lib.load_task(FLAGS.task)
        except ValueError as e:
            fail(f"--task={FLAGS.task}: {e}")
        try:
            return built if FLAGS.target_goal is None else built.with_target(FLAGS.target_goal)
        except ValueError as e:
            fail(f"--target_goal={FLAGS.target_goal:g}: {e}")
    ds = dataset or load_dataset()
    model = models.make_model(FLAGS.model, FLAGS.width if width is None else width, ds.num_classes, FLAGS.conv_impl,
                              batch_norm=FLAGS.batch_norm if batch_norm is None else batch_norm)
    goal = FLAGS.target_accuracy if FLAGS.target_goal is None else FLAGS.target_goal
    if not 0 < goal <= 1:
        fail(f"--target_goal={goal:g}: an accuracy's goal must lie in (0, 1]")
    info = {"model_name": FLAGS.model, "width": FLAGS.width if width is None else width}
    return classification.image_classification(model, ds, target_accuracy=goal,
                                      augment=(FLAGS.augment_shift, FLAGS.augment_degrees), info=info)


def check_data(task: task_lib.Task, populations: Sequence[members_lib.Members] = (), **replace: Any) -> None:
    """The flags that must fit the task's data, and the populations the devices' memory
    (`sweep.check_fits`), checked before any work: one line naming the flag otherwise."""
    try:
        sweep.check_fits(task, settings(**replace), populations)
    except memory.TooLarge as e:
        fail(f"--num_lrs / --lrs / --width: {e}")
    except ValueError as e:
        fail(f"--{e}")


def optimizer_names() -> list[str]:
    return optimizers.parse_optimizer_list(FLAGS.optimizer)


def optimizer(name: str) -> optimizers.Optimizer:
    """The optimizer --optimizer names (a registry name or MODULE:NAME), or one clear line."""
    try:
        return optimizers.get(name)
    except ValueError as e:
        fail(f"--optimizer={name}: {e}")


def hparam_overrides(name: str) -> dict[str, float]:
    """The fixed hyperparameters the flags give `name` (a registry optimizer's --<opt>_<hp> flags),
    besides the learning rate."""
    return {hp: float(FLAGS[flag].value) for flag, (opt, hp) in HPARAM_FLAGS.items() if opt == name}


def learning_rates() -> np.ndarray:
    """--lrs if given, else --num_lrs log-spaced from --lr_min to --lr_max."""
    if FLAGS.lrs:
        return np.array(sorted(parse_rates(FLAGS.lrs)), np.float64)
    return np.geomspace(FLAGS.lr_min, FLAGS.lr_max, FLAGS.num_lrs)


def members(name: str, lrs: Any) -> members_lib.Members:
    """The population of optimizer `name` the flags describe: the learning rates times each --hparam
    axis it has, its other hyperparameters from the flags (or its defaults). One clear line on error."""
    opt = optimizer(name)
    axes = parse_hparam_axes(FLAGS.hparam)
    try:
        return members_lib.grid(opt, learning_rate=lrs, **{**hparam_overrides(opt.name), **{
            k: v for k, v in axes.items() if k in opt.hparams}})
    except ValueError as e:
        fail(f"--optimizer={name}: {e}")


def populations(lrs: Any) -> list[members_lib.Members]:
    """One population per --optimizer entry (`members`); every --hparam must belong to one of them."""
    names = optimizer_names()
    pops = [members(name, lrs) for name in names]
    unknown = [k for k in parse_hparam_axes(FLAGS.hparam) if not any(k in p.optimizer.hparams for p in pops)]
    if unknown:
        fail(f"--hparam: no optimizer of --optimizer={FLAGS.optimizer} has {', '.join(unknown)}")
    return pops


def schedule_spec() -> schedules.ScheduleSpec | None:
    """The learning-rate schedule of the schedule flags (None: constant, no warmup)."""
    if FLAGS.schedule == "constant" and not FLAGS.warmup_steps:
        return None
    return schedules.ScheduleSpec(FLAGS.schedule, FLAGS.decay_steps, FLAGS.decay_factor, FLAGS.sgdr_period,
                                  FLAGS.sgdr_mult, FLAGS.warmup_steps, FLAGS.max_steps)


def budget() -> Budget:
    return Budget(FLAGS.max_steps, FLAGS.max_seconds, FLAGS.eval_every)


def settings(**replace: Any) -> SweepSettings:
    """Everything the library's training needs from the shared flags: one place, so a new training
    flag reaches every experiment (`replace` overrides fields)."""
    values = dict(
        budget=budget(), batch_size=FLAGS.batch_size, eval_examples=FLAGS.eval_examples, seed=FLAGS.seed,
        distinct_seeds=FLAGS.distinct_seeds, sequential=FLAGS.sequential, repack=FLAGS.repack,
        member_chunk=FLAGS.member_chunk, lowering=FLAGS.lowering, loop_order=FLAGS.loop_order, progress=FLAGS.progress,
        schedule=schedule_spec(),
        dtype=FLAGS.dtype,
        augment=FLAGS.augment, patience=FLAGS.patience if FLAGS.early_stopping else 0,
        validation_examples=FLAGS.validation_examples, protocol=FLAGS.protocol, seeds=FLAGS.seeds,
        prune=pruning.PruneSpec(FLAGS.prune_min_steps, FLAGS.prune_eta) if FLAGS.prune == "sha" else None,
        retire=retirement.RetireSpec(FLAGS.retire_grace_steps, FLAGS.retire_evaluations, FLAGS.retire_margin,
                                     FLAGS.retire_pace, FLAGS.retire_pace_grace_steps, FLAGS.retire_pace_evaluations)
        if FLAGS.retire else None,
        views=views.Views(FLAGS.optuna_storage, FLAGS.tensorboard))
    values.update(replace)
    try:
        return SweepSettings(**values)
    except ValueError as e:
        fail(str(e))
