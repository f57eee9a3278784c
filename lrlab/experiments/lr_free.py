"""Do you need to tune at all? The tuned valleys of --optimizer (Adam and SGD with momentum) beside
every learning-rate-free method at its default and over a sweep of its multiplier, on one task.

  python -m lrlab.experiments.lr_free
  python -m lrlab.experiments.lr_free --seeds=3 --methods=prodigy,dog,schedule_free_adamw --workdir=runs/lr_free
  python -m lrlab.experiments.lr_free --task=lrlab.examples.char_lm:task --max_steps=1500 --eval_every=100

Writes results.json, lr_free.png (the valleys against each method's default) and profile.png (the
performance profile) to --workdir and prints the table; rerunning resumes. The library call:
`lrlab.lr_free(task, settings, workdir)`.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.optim import optimizers
from lrlab.studies import lr_free
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags(",".join(lr_free.TUNED))
flags.DEFINE_list("methods", list(lr_free.METHODS), "The learning-rate-free methods, each at its default and over "
                  "the multiplier sweep.")
flags.DEFINE_float("multiplier_min", float(lr_free.MULTIPLIERS[0]), "Lowest multiplier of each method's sweep.")
flags.DEFINE_float("multiplier_max", float(lr_free.MULTIPLIERS[-1]), "Highest multiplier of each method's sweep.")
flags.DEFINE_integer("multipliers_per_decade", 2, "Multipliers a decade in each method's sweep (1.0, the "
                     "default, always among them).", lower_bound=1, upper_bound=100)
flags.register_validator("methods", lambda v: common_flags._check(
    bool(v) and all(m in lr_free.METHODS for m in v),
    f"must name learning-rate-free methods: {', '.join(lr_free.METHODS)}"))
flags.register_multi_flags_validator(
    ["multiplier_min", "multiplier_max"],
    lambda d: common_flags._check(0 < d["multiplier_min"] <= 1 <= d["multiplier_max"] and np.isfinite(d["multiplier_max"]),
                                  "--multiplier_min must be in (0, 1] and --multiplier_max at least 1"))
common_flags.refuse_flags({"hparam": "lr_free sweeps each method's multiplier and the tuned learning rates only",
                           "prune": "lr_free measures every rate to its outcome (retirement still applies)"})


def multipliers() -> np.ndarray:
    """The sweep: --multipliers_per_decade a decade from --multiplier_min to --multiplier_max, through 1."""
    low, high, per = np.log10(FLAGS.multiplier_min), np.log10(FLAGS.multiplier_max), FLAGS.multipliers_per_decade
    steps = np.arange(np.ceil(low * per - 1e-9), np.floor(high * per + 1e-9) + 1) / per
    return 10.0 ** steps


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir(lr_free.EXPERIMENT)
    task = from_flags.task()
    load_seconds = time.perf_counter() - start
    tuned = from_flags.optimizer_names()
    for name in tuned:
        if optimizers.get(name).lr_free:
            command.fail(f"--optimizer={FLAGS.optimizer}: the tuned baselines are tuned optimizers; give "
                         f"{name} with --methods")
    lrs, sweep = from_flags.learning_rates(), multipliers()
    from_flags.check_data(task, [from_flags.members(name, lrs) for name in tuned])
    print(f"lrlab {__version__}: {command.describe_task(task)}; tuned {', '.join(tuned)} x {len(lrs)} learning rates "
          f"{lrs.min():.3g}..{lrs.max():.3g}; {len(FLAGS.methods)} learning-rate-free methods x {len(sweep)} "
          f"multipliers {sweep.min():.3g}..{sweep.max():.3g}" + (f" x {FLAGS.seeds} seeds" if FLAGS.seeds > 1 else "")
          + f", on {jax.default_backend()}; " + command.describe_budget(task), flush=True)
    with command.resumable(lr_free.EXPERIMENT, run) as stop:
        result = lr_free.lr_free(task, from_flags.settings(), run, tuned=tuned, methods=FLAGS.methods,
                                 learning_rates=lrs, multipliers=sweep, stop=stop,
                                 info=command.info(load_seconds))
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
