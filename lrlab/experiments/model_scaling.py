"""Model scaling: time to target against model size, and whether the best learning rate transfers.

  python -m lrlab.experiments.model_scaling --flagfile=experiments/mack2018/model_scaling.flags
  python -m lrlab.experiments.model_scaling --widths=1,2,4 --lrs=0.001,0.01 --workdir=runs/scaling

Trains one population (all --lrs, one optimizer) per width multiplier in --widths, then fits
time to target t = c + k*n against parameter count n per rate and finds each width's best rate.
Writes results.json and scaling.png to --workdir, and checkpoints per width: rerunning the same
command with the same --workdir resumes it; finished widths are restored, not retrained.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from lrlab import checkpoints, cli, models, plots, results, runner, scaling
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags()
FLAGS.set_default("target_accuracy", 0.96)
FLAGS.set_default("lrs", [f"{lr:g}" for lr in scaling.STUDY_LRS])
flags.DEFINE_list("widths", [f"{w:g}" for w in scaling.STUDY_WIDTHS],
                  "Width multipliers of the model (comma list; the study: 1 to 9.75 in steps of 0.25). "
                  "All --lrs of one width train as one population.")
GRID_FLAGS = ("lr_min", "lr_max", "num_lrs")


def _distinct_lrs(values: list[str] | None) -> bool:
    """--lrs: each rate once (a fit per rate needs one member per rate and width)."""
    try:
        rates = [float(v) for v in values or []]
    except ValueError:
        return True  # the shared validator names it
    if len(set(rates)) != len(rates):
        raise flags.ValidationError("a learning rate is listed twice: give each rate once")
    return True


cli.validate_with("widths", scaling.parse_widths)
cli.require_one_optimizer("model_scaling")
flags.register_validator("lrs", _distinct_lrs)


def choose_learning_rates() -> None:
    """--lrs defaults to the study's five rates; given only grid flags (--num_lrs, ...), the grid applies."""
    if not FLAGS["lrs"].present and any(FLAGS[name].present for name in GRID_FLAGS):
        FLAGS.lrs = None


def analyse(members: list[dict[str, Any]]) -> dict[str, Any]:
    """The fits per rate, the best rate per width and the transfer verdict, for results.json."""
    best = scaling.best_rate_per_width(members)
    return {"fits": scaling.rate_fits(members), "best_rates": best, "transfer": scaling.transfer(best)}


def print_report(summary: dict[str, Any]) -> None:
    """Prints the table, the fits and the verdict of a results.json summary."""
    print(scaling.format_report(summary["members"], summary["fits"], summary["best_rates"], summary["transfer"],
                                summary["steps_to_target_resolution"]))


def describe(widths: list[float], params: dict[float, int], optimizer: str, lrs: np.ndarray, dataset: Any) -> str:
    """The run's one-line header: model sizes, rates, mode and budget."""
    first, last = widths[0], widths[-1]
    sizes = (f"width {first:g} ({params[first]:,} weights)" if len(widths) == 1 else
             f"{len(widths)} widths {first:g}..{last:g} ({params[first]:,}..{params[last]:,} weights)")
    return (f"lrlab {__version__}: {FLAGS.model} at {sizes} on {dataset.name}; {optimizer} x {len(lrs)} "
            f"learning rates {lrs.min():.3g}..{lrs.max():.3g} per width, "
            f"{'sequential' if FLAGS.sequential else 'vectorized'} on {jax.default_backend()}; target "
            f"{FLAGS.target_accuracy:g} on {min(FLAGS.eval_examples, len(dataset.train_labels))} training images "
            f"every {FLAGS.eval_every} steps, budget {FLAGS.max_steps} steps"
            + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else ""))


def train_widths(dataset: Any, width_models: dict[float, Any], params: dict[float, int], optimizer: str,
                 lrs: np.ndarray, workdir: pathlib.Path, stop: checkpoints.StopSignal,
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One population of all `lrs` per width, checkpointed per width; returns member records (with
    width and parameters) and per-width timing."""
    members, timing = [], []
    for width, model in width_models.items():
        settings = cli.sweep_settings(model, workdir / "checkpoints" / f"width-{width:g}")
        records, stats = runner.run_sweep(dataset, {optimizer: cli.hparams_for(optimizer, lrs)},
                                          {optimizer: cli.static_overrides_for(optimizer)}, settings, stop=stop)
        members += [{"width": width, "parameters": params[width], **r} for r in records]
        timing.append({"width": width, "parameters": params[width], **stats[optimizer]})
        reached = sum(r["status"] == "reached" for r in records)
        print(f"width {width:g} ({params[width]:,} weights): {reached} of {len(records)} rates reached the target; "
              f"compile {stats[optimizer]['compile_seconds']:.1f} s, "
              f"training {stats[optimizer]['train_seconds']:.1f} s", flush=True)
    return members, timing


def main(argv: list[str]) -> None:
    cli.start(argv)
    if FLAGS["width"].present:
        cli.fail("--width: model_scaling sets the width from --widths (a comma list)")
    choose_learning_rates()
    start = time.perf_counter()
    dataset = cli.load_dataset()
    load_seconds = time.perf_counter() - start
    workdir = cli.prepare_workdir("model_scaling")
    if cli.claim_workdir(workdir, "model_scaling"):
        print_report(results.read_json(workdir / "results.json"))
        return
    widths = scaling.parse_widths(FLAGS.widths)
    (optimizer,) = cli.optimizer_names()
    lrs = cli.learning_rates()
    width_models = {w: cli.model_for(dataset, w) for w in widths}
    params = {w: models.count_parameters(m, dataset.image_shape) for w, m in width_models.items()}
    print(describe(widths, params, optimizer, lrs, dataset), flush=True)
    sweep_start = time.perf_counter()
    with cli.resumable("model_scaling", workdir) as stop:
        members, timing = train_widths(dataset, width_models, params, optimizer, lrs, workdir, stop)
    sweep_seconds = time.perf_counter() - sweep_start
    summary = {
        **results.run_header("model_scaling"),
        "model": {"name": FLAGS.model, "widths": widths, "parameters": [params[w] for w in widths]},
        "optimizer": optimizer,
        "learning_rates": sorted({m["learning_rate"] for m in members}),  # as trained (float32)
        "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "flags": cli.flag_values(),
        "timing": timing,
        "members": members,
        **analyse(members),
    }
    paths = cli.save_outputs(workdir, summary, "scaling.png", lambda path: plots.scaling(
        members, summary["fits"], summary["best_rates"], path,
        title=f"Model scaling: {FLAGS.model} on {dataset.name}, {optimizer}, target {FLAGS.target_accuracy:g}"),
        start, {"load_data": load_seconds, "sweep": sweep_seconds})
    print_report(summary)
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
