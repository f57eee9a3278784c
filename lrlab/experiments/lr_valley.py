"""The learning-rate valley: steps to target against learning rate, one population per optimizer.

  python -m lrlab.experiments.lr_valley --optimizer=adam
  python -m lrlab.experiments.lr_valley --optimizer=all --model=tutorial_cnn --workdir=runs/valley

Writes results.json, results_orbax/ and valley.png to --workdir, and checkpoints while training:
rerunning the same command with the same --workdir resumes it (after a crash, a kill or SIGTERM).
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from lrlab import cli, models, plots, results, runner
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags()


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    load_seconds = time.perf_counter() - start
    workdir = cli.prepare_workdir("lr_valley")
    if cli.claim_workdir(workdir, "lr_valley"):
        summary = results.read_json(workdir / "results.json")
        print(results.format_table(summary["members"], summary["steps_to_target_resolution"]))
        return
    model = cli.model_for(dataset)
    lrs = cli.learning_rates()
    names = cli.optimizer_names()
    n_params = models.count_parameters(model, dataset.image_shape)
    print(f"lrlab {__version__}: {FLAGS.model} (width {FLAGS.width:g}, {n_params:,} weights) on {dataset.name} "
          f"({len(dataset.train_labels):,} training images); {', '.join(names)} x {len(lrs)} learning rates "
          f"{lrs.min():.3g}..{lrs.max():.3g}, {'sequential' if FLAGS.sequential else 'vectorized'} on "
          f"{jax.default_backend()}; target {FLAGS.target_accuracy:g} on {min(FLAGS.eval_examples, len(dataset.train_labels))} "
          f"training images every {FLAGS.eval_every} steps, budget {FLAGS.max_steps} steps"
          + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else ""))
    settings = cli.sweep_settings(model, workdir / "checkpoints")
    sweep_start = time.perf_counter()
    with cli.resumable("lr_valley", workdir) as stop:
        records, stats = runner.run_sweep(
            dataset,
            {name: cli.hparams_for(name, lrs) for name in names},
            {name: cli.static_overrides_for(name) for name in names},
            settings,
            stop=stop,
        )
    sweep_seconds = time.perf_counter() - sweep_start
    summary = {
        **results.run_header("lr_valley"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "flags": cli.flag_values(),
        "timing": stats,
        "members": records,
    }
    envelope = results.envelope(records)
    band = results.trained_band(envelope)
    if len(names) > 1:
        summary["envelope"] = envelope
        summary["trained_band"] = band
    paths = {"results": workdir / "results.json", "orbax": workdir / "results_orbax",
             "figure": workdir / "valley.png"}
    if len(names) > 1:
        paths["envelope"] = workdir / "envelope.png"
    save_start = time.perf_counter()
    with cli.writing(f"results to {workdir}"):
        results.save_orbax(paths["orbax"], results.orbax_tree(records))  # every process: Orbax syncs them
        if cli.is_writer():
            plots.valley(records, paths["figure"], budget_steps=FLAGS.max_steps, eval_every=FLAGS.eval_every,
                         title=f"Learning-rate valley: {FLAGS.model} on {dataset.name}, "
                               f"target {FLAGS.target_accuracy:g}")
            if "envelope" in paths:
                plots.envelope(envelope, paths["envelope"], eval_every=FLAGS.eval_every,
                               title=f"Fastest and slowest of {len(names)} optimizers: {FLAGS.model} on "
                                     f"{dataset.name}, target {FLAGS.target_accuracy:g}")
            summary["stage_seconds"] = {"load_data": load_seconds, "sweep": sweep_seconds,
                                        "save_orbax_and_figure": time.perf_counter() - save_start}
            summary["wall_seconds"] = time.perf_counter() - start  # since main() began: imports not included
            results.write_json(paths["results"], summary)
    print(results.format_table(records, FLAGS.eval_every))
    if len(names) > 1:
        trained = sum(row["reached"] > 0 for row in envelope)
        print("rates that trained with at least one optimizer: "
              + (f"{band[0]:.4g} to {band[1]:.4g} ({trained} of {len(envelope)})" if band else "none"))
    for name, s in stats.items():
        print(f"{name}: {s['mode']}, {s['members']} members, compile {s['compile_seconds']:.1f} s, "
              f"training {s['train_seconds']:.1f} s")
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
