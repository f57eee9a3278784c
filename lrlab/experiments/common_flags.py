"""The absl flags every experiment shares, their validators, and the names by which a command line
speaks of its settings. Only the experiment modules read FLAGS; a bad value stops before any work
with one line.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from lrlab.engine import config, lowering, protocols
from lrlab.optim import hparams, optimizers, schedules
from lrlab.store import views
from lrlab.task import models
from lrlab.training import retirement

FLAGS = flags.FLAGS


def hparam_flag(optimizer: str, hparam: str) -> str:
    """The flag of a registry optimizer's hyperparameter: --adam_b1, --rmsprop_eps, --momentum."""
    return optimizer if hparam == optimizer else f"{optimizer}_{hparam}"


# flag -> (registry optimizer, hyperparameter): every default, range and help from optimizers.REGISTRY.
HPARAM_FLAGS = {hparam_flag(opt, hp): (opt, hp) for opt, spec in optimizers.REGISTRY.items()
                for hp in spec.hparams if hp != hparams.LEARNING_RATE}


# Flags that describe lrlab's built-in image tasks; --task brings its own.
BUILT_IN_TASK_FLAGS = ("model", "width", "dataset", "data_dir", "batch_norm", "conv_impl", "augment_shift",
                       "augment_degrees", "target_accuracy")


# Flags that change how a run is carried out, not what it computes: a resumed run may change them.
MAX_INT32 = 2**31 - 1  # the device's step counters and sizes are int32
MAX_SEED = 2**31 - 1  # seeds, and seed + replicate, must stay a PRNG key's int32
MAX_MEMBERS = 1_000_000  # more learning rates than any grid needs; the memory check refuses what does not fit
OPERATIONAL_FLAGS = frozenset({"workdir", "overwrite", "checkpoint_every", "cpu_devices", "distributed",
                               "coordinator_address", "num_processes", "process_id", "progress", "data_dir",
                               "member_chunk", "lowering", "loop_order"})


OPERATIONAL_FLAGS |= {"optuna_storage", "tensorboard"}  # where the results are also written (views.py)


def _check(condition: bool, message: str) -> bool:
    if not condition:
        raise flags.ValidationError(message)
    return True


def _parsed(parse):
    """A validator from `parse(value)`: its ValueError becomes the flag's one-line error."""
    def check(value) -> bool:
        try:
            parse(value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    return check


def parse_rates(values: list[str] | None) -> list[float] | None:
    """--lrs: positive finite numbers, each once (compared as values: 1e-3 and 0.001 are one rate)."""
    if values is None:
        return None
    if not [v for v in values if v.strip()]:
        raise ValueError("is empty: give at least one learning rate")
    try:
        lrs = [float(v) for v in values]
    except ValueError:
        raise ValueError(f"learning rates must be numbers, got {','.join(values)}") from None
    if not all(np.isfinite(lr) and lr > 0 for lr in lrs):
        raise ValueError("learning rates must be positive and finite")
    twice = sorted({f"{lr:g}" for lr in lrs if lrs.count(lr) > 1})
    if twice:
        raise ValueError(f"learning rate {', '.join(twice)} listed twice: give each rate once")
    return lrs


def parse_hparam_axes(entries: list[str]) -> dict[str, list[float]]:
    """--hparam entries NAME=V1[,V2...] (repeatable) -> {name: values}: each a grid axis of the
    population (one value: the same for every member). ValueError naming the bad entry."""
    axes: dict[str, list[float]] = {}
    for entry in entries:
        name, sep, text = (part.strip() for part in entry.partition("="))
        if not sep or not name or not text:
            raise ValueError(f"{entry!r} is not NAME=VALUE[,VALUE...] (for example weight_decay=1e-4,1e-3)")
        if name == hparams.LEARNING_RATE:
            raise ValueError(f"{entry!r}: give learning rates with --lrs or the grid flags")
        if name in axes:
            raise ValueError(f"{entry!r}: {name} given twice")
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"{entry!r}: the values must be numbers") from None
        if len(set(values)) != len(values):
            raise ValueError(f"{entry!r}: a value is listed twice")
        axes[name] = values
    return axes


def define_flags(default_optimizer: str = "adam", rate_grid: bool = True) -> None:
    """Defines the flags every experiment shares, with validators.

    rate_grid=False leaves out the learning-rate grid (--lr_min, --lr_max, --num_lrs, --lrs), for an
    experiment that chooses its rates otherwise (and may define its own --lrs).
    """
    flags.DEFINE_string("task", None, "A task of your own: MODULE:CALLABLE returning an lrlab Task (model, loss, "
                        "metrics, target, data), imported by name. Replaces --model, --dataset and their flags.")
    flags.DEFINE_string("optimizer", default_optimizer,
                        f"One of {', '.join(optimizers.OPTIMIZERS)}, a comma list, 'all' (the study's six: "
                        f"{', '.join(optimizers.STUDY_OPTIMIZERS)}), or MODULE:NAME naming an Optax factory of float "
                        "hyperparameters (each may vary per member). For the learning-rate-free methods (prodigy "
                        "onwards) the learning rate is a multiplier of the method's own step size (1: as published).")
    flags.DEFINE_multi_string("hparam", [], "NAME=V1[,V2...]: a hyperparameter's values (repeat the flag per "
                              "hyperparameter); the population is their product with the learning rates.")
    flags.DEFINE_enum("model", "small_cnn", models.MODELS,
                      "small_cnn (3.5k weights, fast on CPU); tutorial_cnn (the study's 3.3M-weight CNN).")
    flags.DEFINE_float("width", 1.0, "Width multiplier of the model's layers: conv filters, and "
                       "tutorial_cnn's dense units (the study: 1 to 10; its lr sweep: 3).")
    flags.DEFINE_string("dataset", "mnist", "'mnist' (shipped with lrlab) or 'tfds:NAME' (prepared under --data_dir).")
    flags.DEFINE_string("data_dir", None, "Folder of the dataset files (mnist: the shipped copy by default).")
    if rate_grid:
        flags.DEFINE_float("lr_min", 1e-6, "Lowest learning rate of the log-spaced grid.")
        flags.DEFINE_float("lr_max", 100.0, "Highest learning rate of the log-spaced grid.")
        flags.DEFINE_integer("num_lrs", 48, "Number of log-spaced learning rates (the study: 48).")
        flags.DEFINE_list("lrs", None, "Explicit learning rates (comma list); overrides the grid flags.")
    flags.DEFINE_integer("batch_size", 100, "Examples per step (the study: 100).")
    flags.DEFINE_integer("eval_every", 50, "Steps between evaluations: the resolution of steps to target.")
    flags.DEFINE_integer("eval_examples", 2000, "Size of the fixed training subset that measures the target "
                         "(a --task with its own evaluation set uses that).")
    flags.DEFINE_integer("max_steps", 3000, "Step budget per member.")
    flags.DEFINE_float("max_seconds", None, "Wall-clock budget in training seconds (the study: 120 per run). "
                       "Vectorized: the population's clock; --sequential: each member's own.")
    flags.DEFINE_float("target_accuracy", 0.97, "Training-subset accuracy that counts as trained, in (0, 1].")
    flags.DEFINE_float("target_goal", None, "With --task: the goal of the task's target metric (default: the task's).")
    flags.DEFINE_integer("seed", 0, "Seed of everything: initialisation, batch order, dropout, eval subset.")
    flags.DEFINE_bool("distinct_seeds", False, "Give each member its own initialisation, dropout and batch "
                      "order; by default all share them, as the study did.")
    flags.DEFINE_bool("sequential", False, "Train the members one after another (K=1 each), timing each "
                      "as the study did: the baseline of the vectorized run.")
    flags.DEFINE_bool("repack", True, "Re-pack still-running members into a smaller population so finished "
                      "members stop costing compute.")
    flags.DEFINE_enum("conv_impl", "auto", models.CONV_IMPLS, "Convolution formulation of the built-in models' "
                      "conv blocks: auto follows --lowering.")
    flags.DEFINE_enum("lowering", lowering.AUTO, lowering.CHOICES, "Formulation of the model's convolutions (nn.Conv, "
                      "nnx.Conv, the built-in conv blocks): xla (as written) or matmul (im2col); auto: the faster, "
                      "measured at the start of a run large enough to repay it, and kept for its resume.")
    flags.DEFINE_integer("member_chunk", 0, "Members vmapped together in each device's member loop (0: measured "
                         "with --lowering; otherwise fixed).")
    flags.DEFINE_enum("loop_order", lowering.AUTO, lowering.LOOP_CHOICES, "How a segment loops: steps_outer (each "
                      "step runs every member chunk) or members_outer (each member chunk runs all the segment's steps "
                      "in turn); auto: measured with --lowering. Results are the same either way.")
    flags.DEFINE_string("workdir", None, "Output folder (default: runs/<experiment>-<time>). Rerunning a "
                        "command with the same --workdir resumes it from its latest checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Discard what --workdir holds (results, checkpoints) and start again.")
    flags.DEFINE_integer("checkpoint_every", 10, "Segments (of --eval_every steps) between checkpoints; 0: only "
                         "at the end of each optimizer and on SIGTERM / Ctrl-C.")
    flags.DEFINE_string("cpu_devices", "auto", "On CPU, split the host into this many JAX devices and shard the "
                        "population over them. auto: one per core this process may use (measured faster: "
                        "benchmarks/cpu_devices.py), one per process with --distributed; 1 (or 0): one device.")
    flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM). "
                      "Default: when the environment names more than one TPU worker, or with --coordinator_address.")
    flags.DEFINE_string("coordinator_address", None, "--distributed without a cluster environment: HOST:PORT of "
                        "process 0, which every process joins (with --num_processes and --process_id).")
    flags.DEFINE_integer("num_processes", None, "With --coordinator_address: how many processes join.", lower_bound=1)
    flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's index, 0 to "
                         "--num_processes - 1.", lower_bound=0)
    flags.DEFINE_enum("schedule", "constant", schedules.SCHEDULES, "Learning-rate schedule; each member's rate "
                      "is its peak: step and exponential decay, SGDR cosine restarts, one-cycle.")
    flags.DEFINE_enum("dtype", "float32", list(config.COMPUTE_DTYPES), "Compute dtype of the forward and "
                      "backward passes; weights and optimizer state stay float32 (float16 adds dynamic loss scaling).")
    flags.DEFINE_bool("batch_norm", False, "Batch normalization in each conv block, statistics per member.")
    flags.DEFINE_bool("augment", False, "On-device augmentation (the task's; images: random shifts and rotations "
                      "drawn from each step's key).")
    flags.DEFINE_float("augment_shift", 2.0, "--augment: largest shift in pixels, each way.")
    flags.DEFINE_float("augment_degrees", 10.0, "--augment: largest rotation in degrees, each way.")
    flags.DEFINE_bool("early_stopping", False, "Stop a member when its validation score has not improved for "
                      "--patience evaluations, and keep its best variables.")
    flags.DEFINE_integer("patience", 5, "--early_stopping: evaluations (of --eval_every steps) without improvement.")
    flags.DEFINE_integer("validation_examples", 5000, "--early_stopping: training examples held out as the "
                         "validation set.")
    flags.DEFINE_enum("prune", "none", ["none", "sha"], "sha: successive halving, stop the weakest running members "
                      "at rungs of --prune_min_steps x --prune_eta^i steps, keeping the top 1/eta.")
    flags.DEFINE_integer("prune_min_steps", 200, "--prune=sha: the first rung, in steps.")
    flags.DEFINE_integer("prune_eta", 3, "--prune=sha: keep the top 1/eta at each rung (>= 2).")
    flags.DEFINE_bool("retire", True, "Retire (stop training) a member whose target metric stays at chance (the "
                      "best constant predictor's, plus --retire_margin) for --retire_evaluations evaluations in a "
                      "row after --retire_grace_steps, or that cannot reach the target within the step budget even "
                      "at --retire_pace times its best pace so far (see --retire_pace); status 'retired'. "
                      "--noretire: train every member to the end.")
    flags.DEFINE_integer("retire_grace_steps", retirement.RetireSpec.grace_steps,
                         "--retire: no member is retired before this step.")
    flags.DEFINE_integer("retire_evaluations", retirement.RetireSpec.evaluations,
                         "--retire: consecutive evaluations at chance that retire a member.")
    flags.DEFINE_float("retire_margin", retirement.RetireSpec.margin,
                       "--retire: how far above chance (in the target metric's units) still counts as chance.")
    flags.DEFINE_float("retire_pace", retirement.RetireSpec.pace,
                       "--retire: also retire a member that, at this multiple of its best pace so far (the largest "
                       "gain in the target metric per step over two evaluations), kept up to --max_steps, would still "
                       "miss the target, for --retire_pace_evaluations evaluations in a row after "
                       "--retire_pace_grace_steps. 0: off.")
    flags.DEFINE_integer("retire_pace_grace_steps", retirement.RetireSpec.pace_grace_steps,
                         "--retire_pace: no member is retired by it before this step.")
    flags.DEFINE_integer("retire_pace_evaluations", retirement.RetireSpec.pace_evaluations,
                         "--retire_pace: consecutive evaluations out of pace that retire a member.")
    flags.DEFINE_integer("decay_steps", 1000, "step / exponential: steps per decay by --decay_factor.")
    flags.DEFINE_float("decay_factor", 0.5, "step / exponential: the multiplier per --decay_steps, in (0, 1].")
    flags.DEFINE_integer("sgdr_period", 1000, "cosine_restarts: the first period in steps (SGDR T_0).")
    flags.DEFINE_float("sgdr_mult", 2.0, "cosine_restarts: each period this times the previous (SGDR T_mult), >= 1.")
    flags.DEFINE_integer("warmup_steps", 0, "Linear warmup from 0 to the peak rate before any schedule.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_string("optuna_storage", views.STORAGE_IN_WORKDIR, "Where the run is also written as an Optuna "
                        "study (one trial per member): 'workdir' (sqlite:///<workdir>/optuna.db), 'none', or an RDB "
                        "URL (sqlite:///all.db, postgresql://...).")
    flags.DEFINE_bool("tensorboard", False, "Also write each member's curves as TensorBoard scalars under "
                      "<workdir>/tb/, one run per member (needs tensorboardX: pip install 'lrlab[tensorboard]').")
    flags.register_validator("optuna_storage", _parsed(views.check_storage))
    flags.register_validator("tensorboard", _parsed(lambda v: v and views.check_tensorboard()))
    flags.DEFINE_enum("protocol", protocols.DEFAULT, protocols.PROTOCOLS, "How the target is measured: subset (a "
                      "fixed evaluation subset every --eval_every steps), streaming (the study's: running mean over "
                      "the training batch of every --eval_every-th step, strictly above the goal), "
                      "streaming_every_step (its model-size task: over every training batch).")
    flags.DEFINE_integer("seeds", 1, "Train every member as this many replicates (seeds --seed, --seed + 1, ...: "
                         "each its own initialisation, dropout and batch order), all in one program; the valley "
                         "then gives each rate's median and interquartile range.", lower_bound=1)
    for name, (opt, hp) in HPARAM_FLAGS.items():
        spec = optimizers.REGISTRY[opt].hparams[hp]
        flags.DEFINE_float(name, spec.default, f"{spec.help} Valid: {spec.describe_range()}.")
        flags.register_validator(name, _parsed(lambda v, hp=hp, spec=spec: spec.check(hp, v)))

    flags.register_validator("optimizer", _parsed(optimizers.parse_optimizer_list))
    flags.register_validator("hparam", _parsed(parse_hparam_axes))
    flags.register_validator("width", lambda v: _check(v > 0, "must be positive"))
    flags.register_validator("dataset", lambda v: _check(
        v == "mnist" or (v.startswith("tfds:") and len(v) > 5), "must be 'mnist' or 'tfds:NAME'"))
    flags.register_validator("task", lambda v: _check(v is None or (":" in v and all(v.partition(":")[::2])),
                                                      "must be MODULE:CALLABLE (for example my_pkg.tasks:cifar)"))
    flags.register_multi_flags_validator(
        ["task"] + list(BUILT_IN_TASK_FLAGS), _no_built_in_flags_with_task,
        message="--task brings its own model and data")
    if rate_grid:
        flags.register_validator("lrs", _parsed(parse_rates))
        flags.register_validator("lr_min", lambda v: _check(np.isfinite(v) and v > 0, "must be positive"))
        flags.register_validator("lr_max", lambda v: _check(np.isfinite(v) and v > 0, "must be positive"))
        flags.register_multi_flags_validator(
            ["lr_min", "lr_max", "num_lrs"],
            lambda d: _check(d["lr_min"] < d["lr_max"] or (d["num_lrs"] == 1 and d["lr_min"] == d["lr_max"]),
                             f"--lr_min ({d['lr_min']}) must be below --lr_max ({d['lr_max']})"),
            message="learning-rate range")
        flags.register_validator("num_lrs", lambda v: _check(1 <= v <= MAX_MEMBERS,
                                                              f"must be between 1 and {MAX_MEMBERS:,}"))
    for name in ("batch_size", "eval_every", "eval_examples", "max_steps"):  # step counters are int32 on the device
        flags.register_validator(name, lambda v: _check(1 <= v <= MAX_INT32 // 2, f"must be between 1 and {MAX_INT32 // 2:,}"))
    flags.register_validator("seed", lambda v: _check(0 <= v <= MAX_SEED, f"must be between 0 and {MAX_SEED:,}"))
    flags.register_multi_flags_validator(
        ["eval_every", "max_steps"], lambda f: _check(f["eval_every"] <= f["max_steps"], (
            f"--eval_every={f['eval_every']} is above --max_steps={f['max_steps']}: no member would be evaluated "
            "before the budget ends")), message="evaluation period")
    flags.register_validator("max_seconds", lambda v: _check(v is None or v > 0, "must be positive"))
    flags.register_validator("target_accuracy", lambda v: _check(0 < v <= 1, "must be in (0, 1]"))
    flags.register_validator("target_goal", lambda v: _check(v is None or np.isfinite(v), "must be finite"))
    flags.register_validator("member_chunk", lambda v: _check(v >= 0, "must be 0 (auto) or positive"))
    flags.register_validator("workdir", lambda v: _check(
        v is None or "://" not in v, "object-store workdirs (gs://...) are not supported yet: use a path on "
        "the machine (launch/fetch.py copies it back from a TPU VM)"))
    for name in ("decay_steps", "sgdr_period"):
        flags.register_validator(name, lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("warmup_steps", lambda v: _check(v >= 0, "must be 0 or positive"))
    flags.register_validator("decay_factor", lambda v: _check(0 < v <= 1, "must be in (0, 1]"))
    flags.register_validator("sgdr_mult", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("checkpoint_every", lambda v: _check(v >= 0, "must be 0 or positive"))
    flags.register_validator("cpu_devices", lambda v: _check(v == "auto" or v.isdigit(),
                                                             "must be 'auto' (default) or a number of devices"))
    flags.register_validator("augment_shift", lambda v: _check(np.isfinite(v) and v >= 0, "must be finite and >= 0"))
    flags.register_validator("augment_degrees", lambda v: _check(0 <= v <= 180, "must be in [0, 180]"))
    flags.register_validator("patience", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("validation_examples", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("prune_min_steps", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("prune_eta", lambda v: _check(v >= 2, "must be at least 2"))
    flags.register_validator("retire_grace_steps", lambda v: _check(v >= 0, "must be 0 or positive"))
    flags.register_validator("retire_evaluations", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("retire_margin", lambda v: _check(0 <= v < 1, "must be in [0, 1)"))
    flags.register_validator("retire_pace", lambda v: _check(v >= 0, "must be 0 (off) or positive"))
    flags.register_validator("retire_pace_grace_steps", lambda v: _check(v >= 0, "must be 0 or positive"))
    flags.register_validator("retire_pace_evaluations", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_multi_flags_validator(
        ["model", "batch_norm", "task"], lambda f: _check(not f["batch_norm"] or f["model"] != "mlp" or f["task"],
                                                          "--batch_norm needs a CNN: the mlp has no conv blocks"))
    flags.register_multi_flags_validator(
        ["prune", "sequential"], lambda f: _check(f["prune"] == "none" or not f["sequential"],
                                                  "--prune ranks members against each other: not with --sequential"))
    flags.register_multi_flags_validator(
        ["seeds", "distinct_seeds"], lambda f: _check(f["seeds"] == 1 or not f["distinct_seeds"],
                                                      "--seeds replicates the shared-seed run: not with "
                                                      "--distinct_seeds"))


def _no_built_in_flags_with_task(values: dict) -> bool:
    if values["task"] is None:
        return True
    given = [name for name in BUILT_IN_TASK_FLAGS if values[name] != FLAGS[name].default]
    return _check(not given, f"--task brings its own model and data: not with --{', --'.join(given)} "
                             "(the task's target goal: --target_goal)")


def refuse_flags(reasons: dict[str, str]) -> None:
    """Refuses each named flag set away from its default, before any work: its one-line error is
    the flag and the reason given (for flags an experiment sets itself or cannot use)."""
    for name, why in reasons.items():
        flags.register_validator(name, lambda v, d=FLAGS[name].default: v == d, why)


def validate_with(flag: str, parse) -> None:
    """Registers `parse(value)` as the validator of `flag`: its ValueError becomes the flag's one-line error."""
    flags.register_validator(flag, _parsed(parse))


def require_one_optimizer(experiment: str) -> None:
    """--optimizer must name one optimizer in `experiment` (the shared validator names unknown ones)."""
    def one(value: str) -> bool:
        try:
            names = optimizers.parse_optimizer_list(value)
        except ValueError:
            return True
        return _check(len(names) == 1, f"{experiment} trains one optimizer: name one "
                                       f"({', '.join(optimizers.OPTIMIZERS)}), not 'all' or a list")
    flags.register_validator("optimizer", one)


RETIRE_FLAGS = ("retire", "retire_grace_steps", "retire_evaluations", "retire_margin", "retire_pace",
                "retire_pace_grace_steps", "retire_pace_evaluations")


# What a run saved with retirement but before the pace rule existed trained with: no pace rule.
PACE_OFF = {"retire_pace": 0.0, "retire_pace_grace_steps": retirement.RetireSpec.pace_grace_steps,
            "retire_pace_evaluations": retirement.RetireSpec.pace_evaluations}


# How a command line names the parts of a run's identity (lrlab.store.workdir: a refused resume
# names each difference): the first prefix that matches a dotted path gives its flags.
IDENTITY_FLAGS = (
    ("settings.budget.max_steps", "--max_steps"), ("settings.budget.max_seconds", "--max_seconds"),
    ("settings.budget.eval_every", "--eval_every"), ("settings.batch_size", "--batch_size"),
    ("settings.eval_examples", "--eval_examples"), ("settings.seeds", "--seeds"), ("settings.seed", "--seed"),
    ("settings.distinct_seeds", "--distinct_seeds"), ("settings.sequential", "--sequential"),
    ("settings.repack", "--repack"), ("settings.schedule.name", "--schedule"),
    ("settings.schedule.warmup_steps", "--warmup_steps"), ("settings.schedule", "--schedule and its flags"),
    ("settings.dtype", "--dtype"), ("settings.augment", "--augment"), ("settings.patience", "--early_stopping/--patience"),
    ("settings.validation_examples", "--validation_examples"), ("settings.prune", "--prune and its flags"),
    ("settings.stop_at_target", "--stop_at_target"), ("settings.protocol", "--protocol"),
    ("settings.retire.pace_grace_steps", "--retire_pace_grace_steps"),
    ("settings.retire.pace_evaluations", "--retire_pace_evaluations"), ("settings.retire.pace", "--retire_pace"),
    ("settings.retire.grace_steps", "--retire_grace_steps"), ("settings.retire.evaluations", "--retire_evaluations"),
    ("settings.retire.margin", "--retire_margin"), ("settings.retire", "--retire"),
    ("populations", "--optimizer/--lrs/--hparam (the members)"), ("population", "--optimizer/--lrs/--hparam (the members)"),
    ("content.data", "the data (by content)"), ("content.model_code", "the model's code"),
    ("optimizer_code", "the optimizer's code"), ("task.target", "--target_accuracy/--target_goal"),
    ("task", "--task/--model/--width/--dataset (the task)"),
    ("widths", "--widths/--model (the tasks)"), ("ranges", "--search"), ("seed", "--search_seed"),
    ("pbt", "PBT's flags (--ready_steps, --truncation, --explore, ...)"),
)


def flag_label(path: str) -> str:
    """The flags that set the identity's dotted `path` ("settings.budget.max_steps" -> "--max_steps")."""
    for prefix, flags_ in IDENTITY_FLAGS:
        if path == prefix or path.startswith(prefix + "."):
            return flags_
    return path
