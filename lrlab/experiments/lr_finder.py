"""The learning-rate range test (fastai's lr_find): an exponential ramp of the rate over one short run,
several seeds as one population, and the rate each rule reads off the loss-against-rate curve.

  python -m lrlab.experiments.lr_finder --optimizer=adam
  python -m lrlab.experiments.lr_finder --optimizer=adam,sgd --valley=runs/valley --workdir=runs/finder

Writes results.json and lr_finder.png to --workdir and prints the suggestions; with --valley (an
lr_valley results.json or its workdir) also how far each suggestion is from the valley's best rate.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from lrlab import __version__, cli, lr_finder, models, plots, results

FLAGS = flags.FLAGS
cli.define_flags("adam", rate_grid=False)
flags.DEFINE_float("lr_min", lr_finder.LR_MIN, "The ramp's first learning rate.")
flags.DEFINE_float("lr_max", lr_finder.LR_MAX, "The ramp's last learning rate.")
flags.DEFINE_integer("num_steps", lr_finder.NUM_STEPS, "Steps of the ramp (one rate each); the run stops "
                     "earlier once every seed's smoothed loss exceeds 4x its minimum.")
flags.DEFINE_integer("num_seeds", lr_finder.NUM_SEEDS, "Seeds (members of the population: each its own "
                     "initialisation, batch order and dropout); the rules read their mean loss.")
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
cli.refuse_flags({"sequential": "the range test trains its seeds as one population",
                  "early_stopping": "not used by the range test (it stops at divergence)",
                  "prune": "not used by the range test (every seed runs the ramp)"})

FIGURE = "lr_finder.png"


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    names = cli.optimizer_names()
    valley_members = None
    if FLAGS.valley is not None:
        try:
            _, valley_members = results.read_valley(FLAGS.valley)
        except ValueError as e:
            cli.fail(f"--valley={FLAGS.valley}: {e}")
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir("lr_finder")
    if cli.claim_workdir(workdir, "lr_finder"):
        print(lr_finder.summary_text(results.read_json(workdir / "results.json")))
        return
    model = cli.model_for(dataset)
    n_params = models.count_parameters(model, dataset.image_shape)
    print(f"lrlab {__version__}: range test of {', '.join(names)} on {FLAGS.model} ({n_params:,} weights), "
          f"{dataset.name}; rate {FLAGS.lr_min:g} to {FLAGS.lr_max:g} over {FLAGS.num_steps} steps, "
          f"{FLAGS.num_seeds} seeds as one population, batch {FLAGS.batch_size}, on {jax.default_backend()}")
    settings = cli.sweep_settings(model, None)
    tests = {}
    for name in names:
        overrides = cli.hparam_overrides(name)
        tests[name] = lr_finder.lr_range_test(
            dataset, name, FLAGS.lr_min, FLAGS.lr_max, FLAGS.num_steps, FLAGS.num_seeds, settings,
            overrides=overrides, static_overrides=cli.static_overrides_for(name))
    summary = {**results.run_header("lr_finder"),
               "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
               "dataset": dataset.name, "flags": cli.flag_values(), **lr_finder.summarize(tests, valley_members)}
    known_best = {n: tuple(c["best"]) for n, c in (summary["versus_valley"] or {}).items() if c}
    paths = cli.save_outputs(workdir, summary, FIGURE, lambda path: plots.lr_range_test(
        list(summary["tests"].values()), path, known_best=known_best,
        title=f"LR range test: {FLAGS.model} on {dataset.name}, batch {FLAGS.batch_size}, {FLAGS.num_seeds} seeds"),
        start)
    print(lr_finder.summary_text(summary))
    for name, t in tests.items():
        rate = "none (curve too short)" if t.suggested_lr is None else f"{t.suggested_lr:.4g}"
        print(f"{name}: suggested learning rate {rate} ({lr_finder.HEADLINE} rule); {t.model_steps} model-steps, "
              f"compile {t.compile_seconds:.1f} s, training {t.train_seconds:.1f} s")
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
