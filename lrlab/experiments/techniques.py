"""Training techniques compared: the valley of one optimizer with each technique on, overlaid.

  python -m lrlab.experiments.techniques --optimizer=adam
  python -m lrlab.experiments.techniques --flagfile=experiments/techniques/techniques.flags --workdir=runs/techniques

Each entry of --techniques trains one population of the grid's rates with one technique switched on
over the shared flags: `baseline` (none), `bfloat16` / `float16` (16-bit compute, float32 master
weights), `batch_norm`, `augment` (shifts and rotations on the device), `early_stopping` (validation
set held out, best variables kept). Does a technique change the time to target and the band of
rates that train? Writes results.json (every member with its technique) and techniques.png to
--workdir; each technique checkpoints in its own folder, so a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from absl import app, flags

from lrlab import cli, models, plots, results, runner
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags("adam")
TECHNIQUES = ("baseline", "bfloat16", "float16", "batch_norm", "augment", "early_stopping")
flags.DEFINE_list("techniques", list(TECHNIQUES), f"Techniques to compare, one population each: "
                  f"{', '.join(TECHNIQUES)}. Each is switched on alone over the shared flags.")


def parse_techniques(names: list[str]) -> list[str]:
    """--techniques entries -> names in the given order; ValueError naming an unknown or repeated one."""
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"name at least one technique: {', '.join(TECHNIQUES)}")
    unknown = [n for n in names if n not in TECHNIQUES]
    if unknown:
        raise ValueError(f"unknown technique {unknown[0]!r}: choose from {', '.join(TECHNIQUES)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"technique listed twice: {', '.join(twice)}")
    return names


def technique_settings(name: str, settings: runner.SweepSettings, dataset: Any) -> runner.SweepSettings:
    """`settings` with technique `name` switched on (the flags' values for its parameters)."""
    if name == "baseline":
        return settings
    if name in ("bfloat16", "float16"):
        return dataclasses.replace(settings, dtype=name)
    if name == "batch_norm":
        return dataclasses.replace(settings, model=models.make_model(
            FLAGS.model, FLAGS.width, dataset.num_classes, FLAGS.conv_impl, batch_norm=True))
    if name == "augment":
        return dataclasses.replace(settings, augment=(FLAGS.augment_shift, FLAGS.augment_degrees))
    if name == "early_stopping":
        return dataclasses.replace(settings, patience=FLAGS.patience)
    raise ValueError(f"unknown technique {name!r}")


cli.validate_with("techniques", parse_techniques)
cli.require_one_optimizer("techniques")
cli.refuse_flags({name: "set by --techniques in this experiment (one technique per population)"
                  for name in ("dtype", "batch_norm", "augment", "early_stopping")})
flags.register_multi_flags_validator(
    ["model", "techniques"], lambda f: f["model"] != "mlp" or "batch_norm" not in f["techniques"],
    "--techniques=batch_norm needs a CNN (--model=small_cnn or tutorial_cnn)")


def print_report(summary: dict[str, Any]) -> None:
    """Steps to target per rate and technique, then the per-technique summary table."""
    print("steps to target per learning rate and technique:")
    print(results.valley_matrix(summary["members"], "technique"))
    print()
    print(results.summaries_table({n: s["summary"] for n, s in summary["techniques"].items()}, "technique",
                                  summary["steps_to_target_resolution"]))
    for name, s in summary["timing"].items():
        print(f"{name}: compile {s['compile_seconds']:.1f} s, training {s['train_seconds']:.1f} s")


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir("techniques")
    if cli.claim_workdir(workdir, "techniques"):
        print_report(results.read_json(workdir / "results.json"))
        return
    (optimizer,) = cli.optimizer_names()
    names = parse_techniques(FLAGS.techniques)
    lrs = cli.learning_rates()
    model = cli.model_for(dataset)
    n_params = models.count_parameters(model, dataset.image_shape)
    print(f"lrlab {__version__}: {FLAGS.model} ({n_params:,} weights) on {dataset.name}; {optimizer} x {len(lrs)} "
          f"learning rates {lrs.min():.3g}..{lrs.max():.3g} x techniques {', '.join(names)}; target "
          f"{FLAGS.target_accuracy:g} every {FLAGS.eval_every} steps, budget {FLAGS.max_steps} steps", flush=True)
    variants = {name: technique_settings(name, cli.sweep_settings(model, workdir / "checkpoints" / name), dataset)
                for name in names}
    with cli.resumable("techniques", workdir) as stop:
        members, timing = runner.train_variants(dataset, optimizer, cli.hparams_for(optimizer, lrs),
                                                cli.static_overrides_for(optimizer), variants, "technique", stop)
    summaries = results.valley_summaries(members, "technique")
    summary = {
        **results.run_header("techniques"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "optimizer": optimizer, "dataset": dataset.name, "target_accuracy": FLAGS.target_accuracy,
        "steps_to_target_resolution": FLAGS.eval_every, "flags": cli.flag_values(),
        "techniques": {name: {"summary": summaries[name]} for name in names},
        "timing": timing, "members": members,
    }
    paths = cli.save_outputs(workdir, summary, "techniques.png", lambda path: plots.valleys_overlaid(
        members, path, field="technique", budget_steps=FLAGS.max_steps, eval_every=FLAGS.eval_every,
        title=f"Techniques: {optimizer}, {FLAGS.model} on {dataset.name}, target {FLAGS.target_accuracy:g}"), start)
    print_report(summary)
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
