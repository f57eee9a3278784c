"""Population Based Training of the learning rate (Jaderberg et al. 2017) as one vectorized program.

  python -m lrlab.experiments.pbt --optimizer=adam
  python -m lrlab.experiments.pbt --max_steps=1500 --eval_every=25 --ready_steps=100 --explore=learning_rate,b1

One population starts at the grid's rates (default 16 log-spaced from 1e-4 to 0.1, about a decade
beyond each end of the band where Adam on small_cnn reaches 97%, so PBT can find it from either
side). Every --ready_steps the bottom --truncation of the members copy the weights, optimizer
state and hyperparameters of a random top member, then perturb them (x0.8 / x1.2, or resample
with --resample_probability), on the device. Writes results.json (every ready event, the curves,
the best lineage and its schedule, steps to target, model-steps) and pbt.png to --workdir, and
checkpoints while training: rerunning the same command with the same --workdir resumes it.
"""

from __future__ import annotations

import time

from absl import app, flags

from lrlab import cli, models, pbt, plots, results, runner
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags("adam", rate_grid=True)
FLAGS.set_default("lr_min", 1e-4)
FLAGS.set_default("lr_max", 0.1)
FLAGS.set_default("num_lrs", 16)
flags.DEFINE_integer("ready_steps", 200, "Steps between exploit/explore events; a multiple of --eval_every.")
flags.DEFINE_float("truncation", 0.2, "Fraction of the members replaced at each ready event by copies of the top "
                   "fraction as large, in (0, 0.5].")
flags.DEFINE_float("resample_probability", 0.25, "Chance that a copied hyperparameter is drawn afresh within its "
                   "bounds instead of perturbed by x0.8 or x1.2.")
flags.DEFINE_list("explore", ["learning_rate"], "Hyperparameters to explore: NAME or NAME:LOW:HIGH (defaults: "
                  + ", ".join(f"{n} {lo:g}..{hi:g}" for n, (lo, hi, _) in pbt.DEFAULT_BOUNDS.items()) + ").")
flags.DEFINE_bool("stop_at_target", True, "End the run at the first evaluation where any member reaches "
                  "--target_accuracy (PBT's time to target); otherwise train the whole --max_steps.")
flags.register_validator("ready_steps", lambda v: v >= 1, "must be at least 1")
flags.register_validator("truncation", lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")
flags.register_validator("resample_probability", lambda v: 0 <= v <= 1, "must be in [0, 1]")
flags.register_multi_flags_validator(
    ["ready_steps", "eval_every"], lambda f: f["ready_steps"] % f["eval_every"] == 0,
    "--ready_steps must be a multiple of --eval_every (members are ranked at evaluations)")
cli.refuse_flags({"sequential": "not with PBT (members are ranked against each other)",
                  "early_stopping": "not with PBT (it replaces weak members instead)",
                  "prune": "not with PBT (it replaces weak members instead)"})


def pbt_config() -> tuple[str, pbt.PBTConfig]:
    """The optimizer and PBT settings of the flags; one clear line on a bad combination."""
    names = cli.optimizer_names()
    if len(names) != 1:
        cli.fail(f"--optimizer={FLAGS.optimizer}: PBT trains one optimizer's population: name one")
    if len(cli.learning_rates()) < 2:
        cli.fail("--num_lrs / --lrs: PBT needs at least 2 members")
    try:
        explore = pbt.parse_explore(FLAGS.explore, names[0])
    except ValueError as e:
        cli.fail(f"--explore: {e}")
    return names[0], pbt.PBTConfig(FLAGS.ready_steps, FLAGS.truncation, resample_probability=FLAGS.resample_probability,
                                   explore=explore, stop_at_target=FLAGS.stop_at_target)


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    optimizer, config = pbt_config()
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir("pbt")
    if cli.claim_workdir(workdir, "pbt"):
        print(pbt.format_summary(results.read_json(workdir / "results.json")))
        return
    model = cli.model_for(dataset)
    lrs = cli.learning_rates()
    n_params = models.count_parameters(model, dataset.image_shape)
    print(f"lrlab {__version__}: PBT of {optimizer} on {FLAGS.model} ({n_params:,} weights), {dataset.name}; "
          f"{len(lrs)} members from learning rates {lrs.min():.3g}..{lrs.max():.3g}; every {FLAGS.ready_steps} "
          f"steps the bottom {FLAGS.truncation:g} copy the top and explore {', '.join(config.names)}; target "
          f"{FLAGS.target_accuracy:g} on {min(FLAGS.eval_examples, len(dataset.train_labels))} training images every "
          f"{FLAGS.eval_every} steps, budget {FLAGS.max_steps} steps"
          + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else ""))
    settings = cli.sweep_settings(model, workdir / "checkpoints")
    with cli.resumable("pbt", workdir) as stop:
        result = pbt.run_pbt(dataset, optimizer, cli.hparams_for(optimizer, lrs), config, settings,
                             cli.static_overrides_for(optimizer), stop=stop)
    test_acc = runner.test_accuracy(result.engine, result.final.variables, dataset.test_images, dataset.test_labels)
    summary = {
        **results.run_header("pbt"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "flags": cli.flag_values(),
        "pbt": config.to_json(),
        **pbt.result_json(result, test_acc, FLAGS.batch_size),
    }
    paths = cli.save_outputs(workdir, summary, "pbt.png", lambda path: plots.pbt_lineage(
        summary, path, title=f"PBT of {optimizer} on {FLAGS.model}, {dataset.name}: {result.k} members, "
                             f"ready every {FLAGS.ready_steps} steps, truncation {FLAGS.truncation:g}"), start)
    print(pbt.format_summary(summary))
    print(f"compile {result.compile_seconds:.1f} s, training {result.train_seconds:.1f} s, "
          f"ready events {result.exploit_seconds:.1f} s")
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
