"""Flags shared by the experiments, their validators, and start-up checks (one clear line on error).

Each experiment module calls `define_flags()` at import, then reads typed settings through the
helpers here, so a flag means the same thing in every experiment.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import shutil
import signal
import sys
import time

import jax
import numpy as np
from absl import flags, logging

from lrlab import data as data_lib
from lrlab import population as pop_lib
from lrlab import checkpoints, models, optimizers, pruning, results, runner, schedules

FLAGS = flags.FLAGS

# Optimizer hyperparameter flags: flag name -> (optimizer, hyperparameter, TF1 default, help).
HPARAM_FLAGS = {
    "momentum": ("momentum", "momentum", 0.5, "Momentum coefficient (TF1 MomentumOptimizer as the study used: 0.5)."),
    "adam_b1": ("adam", "b1", 0.9, "Adam beta1 (TF1 default 0.9)."),
    "adam_b2": ("adam", "b2", 0.999, "Adam beta2 (TF1 default 0.999)."),
    "adam_eps": ("adam", "eps", 1e-8, "Adam epsilon (TF1 default 1e-8)."),
    "adadelta_rho": ("adadelta", "rho", 0.95, "Adadelta rho (TF1 default 0.95)."),
    "adadelta_eps": ("adadelta", "eps", 1e-8, "Adadelta epsilon (TF1 default 1e-8)."),
    "rmsprop_decay": ("rmsprop", "decay", 0.9, "RMSProp decay (TF1 default 0.9)."),
    "rmsprop_eps": ("rmsprop", "eps", 1e-10, "RMSProp epsilon, inside the sqrt (TF1 default 1e-10)."),
}
# Set once at initialisation (not per member): flag -> (optimizer, argument, TF1 default, help).
STATIC_FLAGS = {
    "adagrad_initial_accumulator": ("adagrad", "initial_accumulator_value", 0.1,
                                    "Adagrad initial accumulator (TF1 default 0.1)."),
    "rmsprop_initial_scale": ("rmsprop", "initial_scale", 1.0,
                              "RMSProp initial mean square (TF1 initialises it to 1.0)."),
}


def _check(condition: bool, message: str) -> bool:
    if not condition:
        raise flags.ValidationError(message)
    return True


def _valid_optimizers(value: str) -> bool:
    try:
        optimizers.parse_optimizer_list(value)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def _valid_lrs(values) -> bool:
    if values is None:
        return True
    try:
        lrs = [float(v) for v in values]
    except ValueError:
        raise flags.ValidationError(f"learning rates must be numbers, got {','.join(values)}") from None
    return _check(bool(lrs) and all(np.isfinite(lr) and lr > 0 for lr in lrs),
                  "learning rates must be positive and finite")


def define_flags(default_optimizer: str = "adam", rate_grid: bool = True) -> None:
    """Defines the flags every experiment shares, with validators.

    rate_grid=False leaves out the learning-rate grid (--lr_min, --lr_max, --num_lrs, --lrs), for an
    experiment that chooses its rates otherwise (and may define its own --lrs).
    """
    flags.DEFINE_string("optimizer", default_optimizer,
                        f"One of {', '.join(optimizers.OPTIMIZERS)}, a comma list, or 'all'.")
    flags.DEFINE_enum("model", "small_cnn", models.MODELS,
                      "small_cnn (3.5k weights, fast on CPU); tutorial_cnn (the study's 3.3M-weight CNN).")
    flags.DEFINE_float("width", 1.0, "Width multiplier of the model's conv layers (the study: 1 to 10).")
    flags.DEFINE_string("dataset", "mnist", "'mnist' (shipped with lrlab) or 'tfds:NAME' (prepared under --data_dir).")
    flags.DEFINE_string("data_dir", None, "Folder of the dataset files (mnist: the shipped copy by default).")
    if rate_grid:
        flags.DEFINE_float("lr_min", 1e-6, "Lowest learning rate of the log-spaced grid.")
        flags.DEFINE_float("lr_max", 100.0, "Highest learning rate of the log-spaced grid.")
        flags.DEFINE_integer("num_lrs", 48, "Number of log-spaced learning rates (the study: 48).")
        flags.DEFINE_list("lrs", None, "Explicit learning rates (comma list); overrides the grid flags.")
    flags.DEFINE_integer("batch_size", 100, "Examples per step (the study: 100).")
    flags.DEFINE_integer("eval_every", 50, "Steps between evaluations: the resolution of steps to target.")
    flags.DEFINE_integer("eval_examples", 2000, "Size of the fixed training subset that measures the target.")
    flags.DEFINE_integer("max_steps", 3000, "Step budget per member.")
    flags.DEFINE_float("max_seconds", None, "Wall-clock budget in training seconds (the study: 120 per run). "
                       "Vectorized: the population's clock; --sequential: each member's own.")
    flags.DEFINE_float("target_accuracy", 0.97, "Training-subset accuracy that counts as trained, in (0, 1].")
    flags.DEFINE_integer("seed", 0, "Seed of everything: initialisation, batch order, dropout, eval subset.")
    flags.DEFINE_bool("distinct_seeds", False, "Give each member its own initialisation, dropout and batch "
                      "order; by default all share them, as the study did.")
    flags.DEFINE_bool("sequential", False, "Train the members one after another (K=1 each), timing each "
                      "as the study did: the baseline of the vectorized run.")
    flags.DEFINE_bool("repack", True, "Re-pack still-running members into a smaller population so finished "
                      "members stop costing compute.")
    flags.DEFINE_enum("conv_impl", "auto", models.CONV_IMPLS, "Convolution lowering: auto picks per backend.")
    flags.DEFINE_integer("member_chunk", 0, "Members vmapped together inside the member loop (0: per backend and model size).")
    flags.DEFINE_string("workdir", None, "Output folder (default: runs/<experiment>-<time>). Rerunning a "
                        "command with the same --workdir resumes it from its latest checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Discard what --workdir holds (results, checkpoints) and start again.")
    flags.DEFINE_integer("checkpoint_every", 10, "Segments (of --eval_every steps) between checkpoints; 0: only "
                         "at the end of each optimizer and on SIGTERM / Ctrl-C.")
    flags.DEFINE_integer("cpu_devices", 0, "On CPU, split the host into this many JAX devices and shard the "
                         "population over them (0: JAX's default, one).")
    flags.DEFINE_bool("distributed", None, "Call jax.distributed.initialize() (multi-host: TPU pods, SLURM). "
                      "Default: when the environment names more than one TPU worker.")
    flags.DEFINE_enum("schedule", "constant", schedules.SCHEDULES, "Learning-rate schedule; each member's rate "
                      "is its peak: step and exponential decay, SGDR cosine restarts, one-cycle.")
    flags.DEFINE_enum("dtype", "float32", list(pop_lib.COMPUTE_DTYPES), "Compute dtype of the forward and "
                      "backward passes; weights and optimizer state stay float32 (float16 adds dynamic loss scaling).")
    flags.DEFINE_bool("batch_norm", False, "Batch normalization in each conv block, statistics per member.")
    flags.DEFINE_bool("augment", False, "On-device augmentation: random shifts and rotations drawn from each step's key.")
    flags.DEFINE_float("augment_shift", 2.0, "--augment: largest shift in pixels, each way.")
    flags.DEFINE_float("augment_degrees", 10.0, "--augment: largest rotation in degrees, each way.")
    flags.DEFINE_bool("early_stopping", False, "Stop a member when its validation accuracy has not improved for "
                      "--patience evaluations, and keep its best variables.")
    flags.DEFINE_integer("patience", 5, "--early_stopping: evaluations (of --eval_every steps) without improvement.")
    flags.DEFINE_integer("validation_examples", 5000, "--early_stopping: training images held out as the validation set.")
    flags.DEFINE_enum("prune", "none", ["none", "sha"], "sha: successive halving, stop the weakest running members "
                      "at rungs of --prune_min_steps x --prune_eta^i steps, keeping the top 1/eta.")
    flags.DEFINE_integer("prune_min_steps", 200, "--prune=sha: the first rung, in steps.")
    flags.DEFINE_integer("prune_eta", 3, "--prune=sha: keep the top 1/eta at each rung (>= 2).")
    flags.DEFINE_integer("decay_steps", 1000, "step / exponential: steps per decay by --decay_factor.")
    flags.DEFINE_float("decay_factor", 0.5, "step / exponential: the multiplier per --decay_steps, in (0, 1].")
    flags.DEFINE_integer("sgdr_period", 1000, "cosine_restarts: the first period in steps (SGDR T_0).")
    flags.DEFINE_float("sgdr_mult", 2.0, "cosine_restarts: each period this times the previous (SGDR T_mult), >= 1.")
    flags.DEFINE_integer("warmup_steps", 0, "Linear warmup from 0 to the peak rate before any schedule.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    for name, (_, _, default, help_) in {**HPARAM_FLAGS, **STATIC_FLAGS}.items():
        flags.DEFINE_float(name, default, help_)

    flags.register_validator("optimizer", _valid_optimizers)
    flags.register_validator("width", lambda v: _check(v > 0, "must be positive"))
    flags.register_validator("dataset", lambda v: _check(
        v == "mnist" or (v.startswith("tfds:") and len(v) > 5), "must be 'mnist' or 'tfds:NAME'"))
    if rate_grid:
        flags.register_validator("lrs", _valid_lrs)
        flags.register_validator("lr_min", lambda v: _check(np.isfinite(v) and v > 0, "must be positive"))
        flags.register_validator("lr_max", lambda v: _check(np.isfinite(v) and v > 0, "must be positive"))
        flags.register_multi_flags_validator(
            ["lr_min", "lr_max", "num_lrs"],
            lambda d: _check(d["lr_min"] < d["lr_max"] or (d["num_lrs"] == 1 and d["lr_min"] == d["lr_max"]),
                             f"--lr_min ({d['lr_min']}) must be below --lr_max ({d['lr_max']})"),
            message="learning-rate range")
        flags.register_validator("num_lrs", lambda v: _check(v >= 1, "must be at least 1"))
    for name in ("batch_size", "eval_every", "eval_examples", "max_steps"):
        flags.register_validator(name, lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("max_seconds", lambda v: _check(v is None or v > 0, "must be positive"))
    flags.register_validator("target_accuracy", lambda v: _check(0 < v <= 1, "must be in (0, 1]"))
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
    flags.register_validator("cpu_devices", lambda v: _check(v >= 0, "must be 0 (default) or positive"))
    flags.register_validator("augment_shift", lambda v: _check(np.isfinite(v) and v >= 0, "must be finite and >= 0"))
    flags.register_validator("augment_degrees", lambda v: _check(0 <= v <= 180, "must be in [0, 180]"))
    flags.register_validator("patience", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("validation_examples", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("prune_min_steps", lambda v: _check(v >= 1, "must be at least 1"))
    flags.register_validator("prune_eta", lambda v: _check(v >= 2, "must be at least 2"))
    flags.register_multi_flags_validator(
        ["model", "batch_norm"], lambda f: _check(not f["batch_norm"] or f["model"] != "mlp",
                                                  "--batch_norm needs a CNN: the mlp has no conv blocks"))
    flags.register_multi_flags_validator(
        ["prune", "sequential"], lambda f: _check(f["prune"] == "none" or not f["sequential"],
                                                  "--prune ranks members against each other: not with --sequential"))
    for name in HPARAM_FLAGS:
        flags.register_validator(name, lambda v: _check(np.isfinite(v) and v >= 0, "must be finite and >= 0"))
    for name in STATIC_FLAGS:
        flags.register_validator(name, lambda v: _check(np.isfinite(v) and v >= 0, "must be finite and >= 0"))


def validate_with(flag: str, parse) -> None:
    """Registers `parse(value)` as the validator of `flag`: its ValueError becomes the flag's one-line error."""
    def check(value) -> bool:
        try:
            parse(value)
        except ValueError as e:
            raise flags.ValidationError(str(e)) from None
        return True
    flags.register_validator(flag, check)


def refuse_flags(reasons: dict[str, str]) -> None:
    """Refuses each named flag set away from its default, before any work: its one-line error is
    the flag and the reason given (for flags an experiment sets itself or cannot use)."""
    for name, why in reasons.items():
        flags.register_validator(name, lambda v, d=FLAGS[name].default: v == d, why)


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


def schedule_spec() -> schedules.ScheduleSpec | None:
    """The learning-rate schedule of the schedule flags (None: constant, no warmup)."""
    if FLAGS.schedule == "constant" and not FLAGS.warmup_steps:
        return None
    return schedules.ScheduleSpec(FLAGS.schedule, FLAGS.decay_steps, FLAGS.decay_factor, FLAGS.sgdr_period,
                                  FLAGS.sgdr_mult, FLAGS.warmup_steps, FLAGS.max_steps)


def model_for(dataset: data_lib.Dataset, width: float | None = None):
    """The Flax model the flags describe (--model, --width unless `width` is given, --conv_impl)."""
    return models.make_model(FLAGS.model, FLAGS.width if width is None else width, dataset.num_classes,
                             FLAGS.conv_impl, batch_norm=FLAGS.batch_norm)


def flag_budget(target_accuracy: float | None = None) -> runner.Budget:
    """When members stop, from the flags (`target_accuracy` replaces --target_accuracy)."""
    target = FLAGS.target_accuracy if target_accuracy is None else target_accuracy
    return runner.Budget(target, FLAGS.max_steps, FLAGS.max_seconds, FLAGS.eval_every)


def sweep_settings(model, checkpoint_dir: pathlib.Path | None, budget: runner.Budget | None = None
                   ) -> runner.SweepSettings:
    """Everything `runner.run_sweep` needs from the shared flags: one place, so a new training flag
    reaches every experiment."""
    return runner.SweepSettings(
        model=model, budget=budget or flag_budget(), batch_size=FLAGS.batch_size,
        eval_examples=FLAGS.eval_examples, seed=FLAGS.seed, distinct_seeds=FLAGS.distinct_seeds,
        sequential=FLAGS.sequential, repack=FLAGS.repack, member_chunk=FLAGS.member_chunk,
        progress=FLAGS.progress, schedule=schedule_spec(), checkpoint_dir=checkpoint_dir,
        checkpoint_every=FLAGS.checkpoint_every, dtype=FLAGS.dtype,
        augment=(FLAGS.augment_shift, FLAGS.augment_degrees) if FLAGS.augment else None,
        patience=FLAGS.patience if FLAGS.early_stopping else 0, validation_examples=FLAGS.validation_examples,
        prune=pruning.PruneSpec(FLAGS.prune_min_steps, FLAGS.prune_eta) if FLAGS.prune == "sha" else None)


@contextlib.contextmanager
def resumable(experiment: str, workdir: pathlib.Path):
    """Runs the training inside with a StopSignal (yielded). SIGTERM or Ctrl-C: the runner has saved
    a checkpoint; say how to resume and exit 128 + signal. A checkpoint of another run, or one
    that cannot be written: one clear line."""
    try:
        with checkpoints.StopSignal() as stop, writing(f"checkpoints in {workdir / 'checkpoints'}"):
            yield stop
    except checkpoints.Interrupted as e:
        print(f"{experiment}: stopped by {e.signal_name} at step {e.step}; checkpoint saved in {e.directory}. "
              f"Rerun the same command with --workdir={workdir} to resume.", file=sys.stderr)
        sys.exit(128 + signal.Signals[e.signal_name].value)
    except checkpoints.CheckpointMismatch as e:
        fail(f"--workdir={workdir}: {e}; use another --workdir or --overwrite")


def save_outputs(workdir: pathlib.Path, summary: dict, figure: str, draw, start: float,
                 stages: dict[str, float] | None = None) -> dict[str, pathlib.Path]:
    """On the writing process: the figure (`draw(path)`), then results.json with `wall_seconds`
    since `start` (and `stage_seconds`: `stages` plus the saving). Returns the paths for print_saved."""
    paths = {"results": workdir / "results.json", "figure": workdir / figure}
    save_start = time.perf_counter()
    with writing(f"results to {workdir}"):
        if is_writer():
            draw(paths["figure"])
            if stages is not None:
                summary["stage_seconds"] = {**stages, "save_figure": time.perf_counter() - save_start}
            summary["wall_seconds"] = time.perf_counter() - start  # since main() began: imports not included
            results.write_json(paths["results"], summary)
    return paths


def print_saved(paths: dict[str, pathlib.Path], start: float) -> None:
    """The closing lines of every experiment: total wall time since `start`, and what was saved where."""
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    for what, path in paths.items():
        print(f"saved {what}: {path}")


def fail(message: str, code: int = 1) -> None:
    """Stops with one clear line on stderr (no traceback) and a non-zero exit code."""
    print(f"lrlab: error: {message}", file=sys.stderr)
    sys.exit(code)


def learning_rates() -> np.ndarray:
    """--lrs if given, else --num_lrs log-spaced from --lr_min to --lr_max."""
    if FLAGS.lrs:
        return np.array(sorted(float(v) for v in FLAGS.lrs), np.float64)
    return np.geomspace(FLAGS.lr_min, FLAGS.lr_max, FLAGS.num_lrs)


def optimizer_names() -> list[str]:
    return optimizers.parse_optimizer_list(FLAGS.optimizer)


def parse_rate_pairs(entries: list[str]) -> dict[str, float]:
    """['adam:0.001', 'sgd:0.1'] -> {'adam': 0.001, 'sgd': 0.1}; ValueError naming the bad entry.

    Each optimizer once, known to the registry, with a positive finite rate.
    """
    rates: dict[str, float] = {}
    for entry in entries:
        name, sep, text = (part.strip() for part in entry.partition(":"))
        if not sep:
            raise ValueError(f"{entry!r} is not OPTIMIZER:RATE (for example adam:0.001)")
        if name not in optimizers.REGISTRY:
            raise ValueError(f"{entry!r}: unknown optimizer {name!r}: choose from {', '.join(optimizers.OPTIMIZERS)}")
        if name in rates:
            raise ValueError(f"{entry!r}: optimizer {name} given twice")
        try:
            rate = float(text)
        except ValueError:
            raise ValueError(f"{entry!r}: the rate {text!r} is not a number") from None
        if not (np.isfinite(rate) and rate > 0):
            raise ValueError(f"{entry!r}: the rate must be positive and finite")
        rates[name] = rate
    if not rates:
        raise ValueError("no OPTIMIZER:RATE pairs given")
    return rates


def hparams_for(optimizer: str, lrs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-member hyperparameters of `optimizer`: the learning rates and the flags' values."""
    overrides = {hp: FLAGS[flag].value for flag, (opt, hp, _, _) in HPARAM_FLAGS.items() if opt == optimizer}
    return optimizers.population_hparams(optimizer, lrs, overrides)


def hparam_overrides(optimizer: str) -> dict[str, float]:
    """`optimizer`'s hyperparameters other than the learning rate (defaults and flags), for searches
    and tests that choose the rates themselves."""
    return {k: float(v[0]) for k, v in hparams_for(optimizer, np.ones(1)).items() if k != "learning_rate"}


def static_overrides_for(optimizer: str) -> tuple[tuple[str, float], ...]:
    return tuple((arg, FLAGS[flag].value) for flag, (opt, arg, _, _) in STATIC_FLAGS.items() if opt == optimizer)


# Flags that change how a run is carried out, not what it computes: a resumed run may change them.
OPERATIONAL_FLAGS = frozenset({"workdir", "overwrite", "checkpoint_every", "cpu_devices", "distributed",
                               "progress", "data_dir"})
FLAGS_FILE = "flags.json"
# What an experiment writes in its workdir (removed by --overwrite; nothing else is touched).
OUTPUTS = ("results.json", "results_orbax", "checkpoints", FLAGS_FILE, "valley.png", "envelope.png", "curves.png",
           "scaling.png", "schedules.png", "techniques.png", "search.png", "pbt.png", "lr_finder.png",
           "search_compare.png")


def start(argv: list[str]) -> None:
    """What every experiment's main() does first: refuse stray arguments, quiet absl's logging,
    and apply --cpu_devices / --distributed (before any JAX computation)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
    logging.set_verbosity(logging.WARNING)
    init_runtime()


def init_runtime() -> None:
    """Applies --cpu_devices and --distributed; call first in main(), before any JAX computation."""
    if FLAGS.cpu_devices:
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
    distributed = FLAGS.distributed
    if distributed is None:  # a Cloud TPU VM pod names its workers in the environment
        distributed = len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    if distributed:
        try:
            jax.distributed.initialize()
        except Exception as e:  # noqa: BLE001 - any failure here is the cluster set-up's
            fail(f"--distributed: jax.distributed.initialize() failed: {str(e).splitlines()[0]}")


def is_writer() -> bool:
    """Only process 0 writes results and figures (every process computes them)."""
    return jax.process_index() == 0


def prepare_workdir(experiment: str) -> pathlib.Path:
    """Creates --workdir (default runs/<experiment>-<time>) and proves it writable, or fails."""
    path = pathlib.Path(FLAGS.workdir or f"runs/{experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{jax.process_index()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        fail(f"--workdir={path}: cannot write there ({e.strerror or e})")
    return path


def run_flags() -> dict[str, object]:
    """The flags that decide what a run computes (saved with it; a resume must match them)."""
    return {k: v for k, v in flag_values().items() if k not in OPERATIONAL_FLAGS}


def claim_workdir(workdir: pathlib.Path, experiment: str) -> bool:
    """Checks --workdir against this command; returns True (and says so) when its run is finished.

    --overwrite empties lrlab's outputs first. A workdir saved with other flags is refused with
    the differences named. Otherwise this command's flags are saved (flags.json) for later resumes.
    """
    if FLAGS.overwrite and is_writer():
        for name in OUTPUTS:
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    current = {"experiment": experiment, **run_flags()}
    saved_path = workdir / FLAGS_FILE
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())
        except (OSError, ValueError) as e:
            fail(f"--workdir={workdir}: unreadable {FLAGS_FILE} ({e}); use --overwrite to start again")
        saved = {k: v for k, v in saved.items() if k not in OPERATIONAL_FLAGS}
        diffs = [f"--{k}={saved.get(k)!r} there, {current.get(k)!r} here"
                 for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
        if diffs:
            fail(f"--workdir={workdir} holds a run with other flags ({'; '.join(diffs)}): use another "
                 "--workdir, the same flags to resume it, or --overwrite to discard it")
        finished = (workdir / "results.json").exists()
        if finished:
            print(f"{experiment}: --workdir={workdir} already holds this run's results "
                  "(use --overwrite to recompute)")
        return finished
    if is_writer():
        results.write_json(saved_path, current)
    return False


@contextlib.contextmanager
def writing(what: str):
    """Turns a failed write (disk full, permissions) into one clear line; files are atomic."""
    try:
        yield
    except OSError as e:
        fail(f"cannot write {what}: {e.strerror or e} (nothing half-written is left behind)")


def load_dataset() -> data_lib.Dataset:
    """The dataset of --dataset / --data_dir, or one clear line naming the flag."""
    try:
        dataset = data_lib.load_dataset(FLAGS.dataset, FLAGS.data_dir)
    except data_lib.DatasetError as e:
        fail(f"--dataset={FLAGS.dataset}: {e}")
    n = len(dataset.train_labels)
    if FLAGS.early_stopping and FLAGS.validation_examples >= n:
        fail(f"--validation_examples={FLAGS.validation_examples}: {FLAGS.dataset} has only {n} training images")
    return dataset


def flag_values() -> dict[str, object]:
    """The values of lrlab's own flags, saved with the run for reproducibility."""
    module_flags = [f for name, fl in FLAGS.flags_by_module_dict().items() if "lrlab" in name for f in fl]
    return {f.name: f.value for f in module_flags}
