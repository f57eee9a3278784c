"""Learning-rate schedules compared: the valley of each schedule for one optimizer, overlaid.

  python -m lrlab.experiments.schedules --optimizer=adam --schedules=constant,step,exponential,cosine_restarts,one_cycle
  python -m lrlab.experiments.schedules --flagfile=experiments/techniques/schedules.flags --workdir=runs/schedules

Does a schedule widen the band of learning rates that reach the target, and does it shorten the
time to target? Each schedule in --schedules trains one population of all the grid's rates (each
member's rate is the schedule's peak), with the shape set by the schedule flags (--decay_steps,
--decay_factor, --sgdr_period, --sgdr_mult; one_cycle and the SGDR periods span --max_steps).
--warmup_steps applies to every listed schedule, constant included. Writes results.json (every
member, with its schedule) and schedules.png to --workdir and checkpoints each schedule in its own
folder: rerunning the same command with the same --workdir resumes it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags

from lrlab import cli, models, plots, results, runner
from lrlab import __version__
from lrlab.schedules import SCHEDULES, ScheduleSpec

FLAGS = flags.FLAGS
cli.define_flags("adam")
flags.DEFINE_list("schedules", list(SCHEDULES), f"Schedules to compare (comma list, each once) from "
                  f"{', '.join(SCHEDULES)}; one population each. --warmup_steps applies to all of them.")


def parse_schedules(names: list[str]) -> list[str]:
    """--schedules entries -> schedule names, in the given order; ValueError naming the bad entry
    (unknown, listed twice, or none given)."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"name at least one schedule: {', '.join(SCHEDULES)}")
    for name in names:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}: choose from {', '.join(SCHEDULES)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"schedule listed twice: {', '.join(twice)}")
    return names


def schedule_specs(names: list[str], template: ScheduleSpec) -> dict[str, ScheduleSpec | None]:
    """Each schedule's spec: `template` (the flags' shape parameters) with its name; None for
    constant without warmup (the plain optimizer, as lr_valley trains it)."""
    return {name: None if name == "constant" and not template.warmup_steps
            else dataclasses.replace(template, name=name) for name in names}


def flag_template() -> ScheduleSpec:
    """The schedule flags' shape parameters; one_cycle and the SGDR periods span --max_steps."""
    return ScheduleSpec("constant", FLAGS.decay_steps, FLAGS.decay_factor, FLAGS.sgdr_period, FLAGS.sgdr_mult,
                        FLAGS.warmup_steps, FLAGS.max_steps)


cli.validate_with("schedules", parse_schedules)
cli.require_one_optimizer("schedules")
flags.register_validator("schedule", lambda v: v == "constant",
                         "not used by this experiment: list the schedules to compare in --schedules")


def describe(names: list[str], optimizer: str, lrs: np.ndarray, n_params: int, dataset: Any) -> str:
    """The run's one-line header: model, optimizer, rates, schedules, mode and budget."""
    return (f"lrlab {__version__}: {FLAGS.model} (width {FLAGS.width:g}, {n_params:,} weights) on {dataset.name}; "
            f"{optimizer} x {len(lrs)} learning rates {lrs.min():.3g}..{lrs.max():.3g} (peaks) x schedules "
            f"{', '.join(names)}" + (f", each after {FLAGS.warmup_steps} warmup steps" if FLAGS.warmup_steps else "")
            + f"; {'sequential' if FLAGS.sequential else 'vectorized'} on {jax.default_backend()}; target "
            f"{FLAGS.target_accuracy:g} on {min(FLAGS.eval_examples, len(dataset.train_labels))} training images "
            f"every {FLAGS.eval_every} steps, budget {FLAGS.max_steps} steps"
            + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else ""))


def print_report(summary: dict[str, Any]) -> None:
    """Steps to target per rate and schedule, then the per-schedule summary table."""
    print("steps to target per peak learning rate and schedule:")
    print(results.valley_matrix(summary["members"], "schedule"))
    print()
    print(results.summaries_table({n: s["summary"] for n, s in summary["schedules"].items()}, "schedule",
                                  summary["steps_to_target_resolution"]))


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    load_seconds = time.perf_counter() - start
    workdir = cli.prepare_workdir("schedules")
    if cli.claim_workdir(workdir, "schedules"):
        print_report(results.read_json(workdir / "results.json"))
        return
    (optimizer,) = cli.optimizer_names()
    names = parse_schedules(FLAGS.schedules)
    specs = schedule_specs(names, flag_template())
    lrs = cli.learning_rates()
    model = cli.model_for(dataset)
    n_params = models.count_parameters(model, dataset.image_shape)
    print(describe(names, optimizer, lrs, n_params, dataset), flush=True)
    sweep_start = time.perf_counter()
    with cli.resumable("schedules", workdir) as stop:
        variants = {name: dataclasses.replace(cli.sweep_settings(model, workdir / "checkpoints" / name), schedule=spec)
                    for name, spec in specs.items()}
        members, timing = runner.train_variants(dataset, optimizer, cli.hparams_for(optimizer, lrs),
                                                cli.static_overrides_for(optimizer), variants, "schedule", stop)
    sweep_seconds = time.perf_counter() - sweep_start
    summaries = results.valley_summaries(members, "schedule")
    summary = {
        **results.run_header("schedules"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "optimizer": optimizer,
        "dataset": dataset.name,
        "target_accuracy": FLAGS.target_accuracy,
        "steps_to_target_resolution": FLAGS.eval_every,
        "flags": cli.flag_values(),
        "schedules": {name: {"spec": dataclasses.asdict(spec) if spec else None, "summary": summaries[name]}
                      for name, spec in specs.items()},
        "timing": timing,
        "members": members,
    }
    warmup = f", {FLAGS.warmup_steps}-step warmup" if FLAGS.warmup_steps else ""
    paths = cli.save_outputs(workdir, summary, "schedules.png", lambda path: plots.valleys_overlaid(
        members, path, field="schedule", budget_steps=FLAGS.max_steps, eval_every=FLAGS.eval_every,
        title=f"Schedules: {optimizer}, {FLAGS.model} on {dataset.name}, target {FLAGS.target_accuracy:g}{warmup}"),
        start, {"load_data": load_seconds, "sweep": sweep_seconds})
    print_report(summary)
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
