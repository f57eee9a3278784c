"""The learning-rate range test (fastai's lr_find): an exponential ramp of the rate over one short run,
several seeds as one population, and the rate each rule reads off the loss-against-rate curve.

  python -m lrlab.experiments.lr_finder --optimizer=adam
  python -m lrlab.experiments.lr_finder --optimizer=adam,sgd --valley=runs/valley --workdir=runs/finder

Writes results.json and lr_finder.png to --workdir and prints the suggestions; with --confirm=N (the
default: training.confirm.CANDIDATES) it then trains N candidate rates to the target as one
population and reports the fastest with its cost; with --valley (an lr_valley results.json or its
workdir) also how far each suggestion is from the valley's best rate and the grid's cost.
The library call: `lrlab.lr_finder(task, optimizers, settings, workdir)`.
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.store import records
from lrlab.studies import lr_finder
from lrlab.training import confirm, range_test
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags("adam", rate_grid=False)
flags.DEFINE_float("lr_min", range_test.LR_MIN, "The ramp's first learning rate.")
flags.DEFINE_float("lr_max", range_test.LR_MAX, "The ramp's last learning rate.")
flags.DEFINE_integer("num_steps", range_test.NUM_STEPS, "Steps of the ramp (one rate each); the run stops "
                     "earlier once every seed's smoothed loss exceeds 4x its minimum.")
flags.DEFINE_integer("num_seeds", range_test.NUM_SEEDS, "Seeds (members of the population: each its own "
                     "initialisation, batch order and dropout); the rules read their mean loss.")
flags.DEFINE_integer("confirm", confirm.CANDIDATES, "Then train this many rates (the rules' suggestions and "
                     "their neighbours on a log grid) to the target as one population, retirement on, and report the "
                     "fastest; 0: only the range test.", lower_bound=0, upper_bound=common_flags.MAX_MEMBERS)
flags.DEFINE_string("valley", None, "An lr_valley results.json (or its --workdir): compare each suggestion "
                    "with the valley's best rate.")
flags.register_validator("lr_min", lambda v: np.isfinite(v) and v > 0, "must be positive")
flags.register_validator("lr_max", lambda v: np.isfinite(v) and v > 0, "must be positive")
flags.register_multi_flags_validator(["lr_min", "lr_max"], lambda d: d["lr_min"] < d["lr_max"],
                                     "--lr_min must be below --lr_max")
flags.register_validator("num_steps", lambda v: v >= 10, "must be at least 10")
flags.register_validator("num_seeds", lambda v: v >= 1, "must be at least 1")
flags.register_validator("schedule", lambda v: v == "constant", "the range test ramps the rate itself: leave "
                         "the schedule constant")
flags.register_validator("warmup_steps", lambda v: v == 0, "the range test ramps the rate itself: no warmup")
common_flags.refuse_flags({"sequential": "the range test trains its seeds as one population",
                  "early_stopping": "not used by the range test (it stops at divergence)",
                  "prune": "not used by the range test (every seed runs the ramp)"})


def _one_value_each(entries: list[str]) -> bool:
    try:
        axes = common_flags.parse_hparam_axes(entries)
    except ValueError:
        return True  # the shared validator names the error
    return all(len(values) == 1 for values in axes.values())


flags.register_validator("hparam", _one_value_each, "the range test ramps the learning rate of one population: "
                         "give each other hyperparameter one value (NAME=V)")


def overrides(opt) -> dict[str, float]:
    """The optimizer's fixed hyperparameters: its registry flags, and --hparam NAME=V (a factory's own)."""
    given = {k: v[0] for k, v in common_flags.parse_hparam_axes(FLAGS.hparam).items()}
    unknown = sorted(set(given) - set(opt.hparams))
    if unknown:
        command.fail(f"--hparam: {opt.name} has no hyperparameter {', '.join(unknown)} (it has "
                     f"{', '.join(opt.hparams)})")
    return {**from_flags.hparam_overrides(opt.name), **given}


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("lr_finder")
    names = from_flags.optimizer_names()
    valley_members = None
    if FLAGS.valley is not None:
        try:
            _, valley_members = records.read_valley(FLAGS.valley)
        except ValueError as e:
            command.fail(f"--valley={FLAGS.valley}: {e}")
    task = from_flags.task()
    from_flags.check_data(task)
    opts = [from_flags.optimizer(name) for name in names]
    print(f"lrlab {__version__}: range test of {', '.join(o.name for o in opts)} on {command.describe_task(task)}; rate "
          f"{FLAGS.lr_min:g} to {FLAGS.lr_max:g} over {FLAGS.num_steps} steps, {FLAGS.num_seeds} seeds as one "
          f"population, batch {FLAGS.batch_size}, on {jax.default_backend()}"
          + (f"; then {FLAGS.confirm} candidates trained to the target" if FLAGS.confirm else ""), flush=True)
    with command.resumable("lr_finder", run):
        result = lr_finder.lr_finder(task, opts, from_flags.settings(), run, lr_min=FLAGS.lr_min, lr_max=FLAGS.lr_max,
                                     num_steps=FLAGS.num_steps, num_seeds=FLAGS.num_seeds, confirm=FLAGS.confirm,
                                     overrides={o.name: overrides(o) for o in opts},
                                     valley_members=valley_members, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
