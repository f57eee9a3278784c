"""Optimizers compared at their best learning rates: test accuracy over steps and over seconds.

  python -m lrlab.experiments.optimizer_comparison --from_valley=runs/valley
  python -m lrlab.experiments.optimizer_comparison --lrs=adam:0.001,sgd:0.1 --max_steps=2000

Each optimizer trains as its own one-member population at the rate an lr_valley run found fastest
(--from_valley) or the one given (--lrs), by default for the whole --max_steps budget. Every
--eval_every steps it is evaluated on a fixed subset of the test set (timed apart from training).
Writes results.json and curves.png to --workdir and checkpoints while training (rerun to resume).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from lrlab import cli, models, plots, results, runner
from lrlab import data as data_lib
from lrlab import population as pop_lib
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags(default_optimizer="all", rate_grid=False)
flags.DEFINE_string("from_valley", None, "An lr_valley results.json, or its --workdir: each optimizer at its "
                    "reached rate with the fewest steps to target (ties: the lower rate).")
flags.DEFINE_list("lrs", None, "OPTIMIZER:RATE pairs, for example adam:0.001,sgd:0.1 (instead of --from_valley).")
flags.DEFINE_integer("test_examples", 2000, "Size of the fixed test subset evaluated every --eval_every steps.")
flags.DEFINE_float("drop_threshold", 0.01, "Instability: an evaluation counts as a drop when its test accuracy "
                   "is more than this (absolute) below the best seen before it.")
flags.DEFINE_bool("stop_at_target", False, "Stop each optimizer at the target, as lr_valley does; by default "
                  "each trains the whole --max_steps budget, so the curves run the same length.")
flags.register_validator("test_examples", lambda v: v >= 1, "must be at least 1")
flags.register_validator("drop_threshold", lambda v: 0 <= v < 1, "must be in [0, 1)")


def choose_rates() -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, str]]:
    """Each optimizer's learning rate and its source, from --from_valley or --lrs, filtered by
    --optimizer; plus the optimizers skipped and why. Any bad input stops with one line."""
    if FLAGS.from_valley is not None and FLAGS.lrs is not None:
        cli.fail("--from_valley and --lrs are mutually exclusive: give one")
    if FLAGS.from_valley is None and FLAGS.lrs is None:
        cli.fail("give --from_valley=PATH (an lr_valley results.json or its workdir) or "
                 "--lrs=OPTIMIZER:RATE,... (for example adam:0.001,sgd:0.1)")
    if FLAGS.lrs is not None:
        try:
            given = cli.parse_rate_pairs(FLAGS.lrs)
        except ValueError as e:
            cli.fail(f"--lrs: {e}")
        available, where = list(given), "--lrs"
    else:
        try:
            path, members = results.read_valley(FLAGS.from_valley)
        except ValueError as e:
            cli.fail(f"--from_valley={FLAGS.from_valley}: {e}")
        available, where = list(dict.fromkeys(m["optimizer"] for m in members)), str(path)
    names = available
    if FLAGS.optimizer.strip() != "all":
        names = cli.optimizer_names()
        missing = [n for n in names if n not in available]
        if missing:
            cli.fail(f"--optimizer={FLAGS.optimizer}: {', '.join(missing)} not in {where} "
                     f"(it has {', '.join(available) or 'no optimizer'})")
    if FLAGS.lrs is not None:
        return {n: given[n] for n in names}, {n: {"from": "lrs"} for n in names}, {}
    best = results.best_rates(members, names)
    skipped = {n: "no learning rate reached the target in the valley" for n, m in best.items() if m is None}
    chosen = {n: m for n, m in best.items() if m is not None}
    if not chosen:
        cli.fail(f"--from_valley={FLAGS.from_valley}: no learning rate of {', '.join(names) or 'any optimizer'} "
                 "reached the target there: nothing to compare")
    sources = {n: {"from": "valley", "path": str(path), "steps_to_target": m["steps_to_target"],
                   "seconds_to_target": m["seconds_to_target"]} for n, m in chosen.items()}
    return {n: m["learning_rate"] for n, m in chosen.items()}, sources, skipped


class TestCurves:
    """Segment callbacks measuring each population's accuracy on a fixed test subset, timed apart
    from training (the runner stores the values in the curves, so they survive a resume)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.seconds: dict[str, float] = {}  # per optimizer: evaluation seconds (compilation included)

    def callback_for(self, optimizer: str, cfg: pop_lib.EngineConfig) -> runner.SegmentCallback:
        cfg = dataclasses.replace(cfg, eval_chunk=min(250, len(self.labels)))
        images_E, labels_E, weight_E = pop_lib.pad_to_chunks(self.images, self.labels, cfg.eval_chunk)
        evaluate = pop_lib.make_eval_fn(cfg)
        self.seconds[optimizer] = 0.0

        def callback(sub: pop_lib.Population, pos: np.ndarray, step: int) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            variables_K = jax.tree_util.tree_map(lambda x: x[: len(pos)], pop_lib.to_host(sub.variables))
            accuracy_K = np.asarray(evaluate(variables_K, images_E, labels_E, weight_E))
            self.seconds[optimizer] += time.perf_counter() - start
            return {"test_accuracy": accuracy_K}

        return callback


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    rates, sources, skipped = choose_rates()
    for name, why in skipped.items():
        print(f"optimizer_comparison: skipping {name}: {why}")
    dataset = cli.load_dataset()
    load_seconds = time.perf_counter() - start
    workdir = cli.prepare_workdir("optimizer_comparison")
    target = FLAGS.target_accuracy
    if cli.claim_workdir(workdir, "optimizer_comparison"):
        summary = results.read_json(workdir / "results.json")
        print(results.comparison_table(summary["optimizers"], target))
        return
    model = cli.model_for(dataset)
    n_params = models.count_parameters(model, dataset.image_shape)
    test_idx = data_lib.eval_subset_indices(len(dataset.test_labels), FLAGS.test_examples, FLAGS.seed)
    print(f"lrlab {__version__}: {FLAGS.model} (width {FLAGS.width:g}, {n_params:,} weights) on {dataset.name}; "
          + ", ".join(f"{n} at {lr:.4g}" for n, lr in rates.items())
          + f"; test accuracy on {len(test_idx)} test images every {FLAGS.eval_every} steps, budget "
          f"{FLAGS.max_steps} steps" + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else "")
          + (", stopping at the target" if FLAGS.stop_at_target else ""))
    settings = cli.sweep_settings(model, workdir / "checkpoints",
                                  cli.flag_budget(target if FLAGS.stop_at_target else math.inf))
    test_curves = TestCurves(dataset.test_images[test_idx], dataset.test_labels[test_idx])
    sweep_start = time.perf_counter()
    with cli.resumable("optimizer_comparison", workdir) as stop:
        records, stats = runner.run_sweep(
            dataset,
            {name: cli.hparams_for(name, np.array([lr])) for name, lr in rates.items()},
            {name: cli.static_overrides_for(name) for name in rates},
            settings,
            stop=stop,
            make_segment_callback=test_curves.callback_for,
        )
    sweep_seconds = time.perf_counter() - sweep_start
    for name in stats:
        stats[name]["test_curve_seconds"] = test_curves.seconds.get(name, 0.0)
    entries = {r["optimizer"]: results.comparison_entry(r, sources[r["optimizer"]], target, FLAGS.drop_threshold,
                                                        FLAGS.batch_size) for r in records}
    for name, entry in entries.items():
        entry["learning_rate"] = rates[name]  # as chosen; "hyperparameters" holds it as trained (float32)
    summary = {
        **results.run_header("optimizer_comparison"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "dataset": dataset.name,
        "target_accuracy": target,
        "steps_to_target_resolution": FLAGS.eval_every,
        "test_examples": len(test_idx),
        "flags": cli.flag_values(),
        "timing": stats,
        "skipped": skipped,
        "optimizers": entries,
    }
    paths = cli.save_outputs(workdir, summary, "curves.png", lambda path: plots.optimizer_curves(
        entries, path, target_accuracy=target, title=f"Optimizers at their best learning rates: {FLAGS.model} on "
                                                     f"{dataset.name}, test accuracy on {len(test_idx)} test images"),
        start, {"load_data": load_seconds, "sweep": sweep_seconds})
    print(results.comparison_table(entries, target))
    for name, s in stats.items():
        print(f"{name}: compile {s['compile_seconds']:.1f} s, training {s['train_seconds']:.1f} s, "
              f"test curve {s['test_curve_seconds']:.1f} s")
    print(f"final test acc: the full test set ({len(dataset.test_labels):,} images); drops: evaluations more "
          f"than {FLAGS.drop_threshold:g} below the best test accuracy before them")
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
