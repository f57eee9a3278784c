"""Model scaling: time to target against model size, and whether the best learning rate transfers.

  python -m lrlab.experiments.model_scaling --flagfile=experiments/mack2018/model_scaling.flags
  python -m lrlab.experiments.model_scaling --widths=1,2,4 --lrs=0.001,0.01 --workdir=runs/scaling

Trains one population (all --lrs, one optimizer) per width multiplier in --widths, then fits
time to target t = c + k*n against parameter count n per rate and finds each width's best rate.
Writes results.json and scaling.png to --workdir, and checkpoints per width: rerunning the same
command with the same --workdir resumes it; finished widths are restored, not retrained.
The library call: `lrlab.model_scaling({width: task}, members, settings, workdir)`.
"""

from __future__ import annotations

import jax
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.studies import model_scaling
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags()
FLAGS.set_default("target_accuracy", 0.96)
FLAGS.set_default("lrs", [f"{lr:g}" for lr in model_scaling.STUDY_LRS])
flags.DEFINE_list("widths", [f"{w:g}" for w in model_scaling.STUDY_WIDTHS],
                  "Width multipliers of the model (comma list; the study: 1 to 9.75 in steps of 0.25). "
                  "All --lrs of one width train as one population.")
GRID_FLAGS = ("lr_min", "lr_max", "num_lrs")

common_flags.validate_with("widths", model_scaling.parse_widths)
common_flags.require_one_optimizer("model_scaling")
common_flags.refuse_flags({"task": "model_scaling grows lrlab's models (--model, --widths); from Python, give "
                          "lrlab.model_scaling a task per width",
                  "width": "model_scaling sets the width from --widths (a comma list)"})


def choose_learning_rates() -> None:
    """--lrs defaults to the study's five rates; given only grid flags (--num_lrs, ...), the grid applies."""
    if not FLAGS["lrs"].present and any(FLAGS[name].present for name in GRID_FLAGS):
        FLAGS.lrs = None


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("model_scaling")
    choose_learning_rates()
    dataset = from_flags.load_dataset()
    widths = model_scaling.parse_widths(FLAGS.widths)
    width_tasks = {w: from_flags.task(width=w, dataset=dataset) for w in widths}
    from_flags.check_data(width_tasks[widths[0]])
    lrs = from_flags.learning_rates()
    (members,) = from_flags.populations(lrs)
    params = {w: t.count_parameters() for w, t in width_tasks.items()}
    first, last = widths[0], widths[-1]
    sizes = (f"width {first:g} ({params[first]:,} weights)" if len(widths) == 1 else
             f"{len(widths)} widths {first:g}..{last:g} ({params[first]:,}..{params[last]:,} weights)")
    print(f"lrlab {__version__}: {FLAGS.model} at {sizes} on {dataset.name}; {members.name} x {len(lrs)} "
          f"learning rates {lrs.min():.3g}..{lrs.max():.3g} per width, "
          f"{'sequential' if FLAGS.sequential else 'vectorized'} on {jax.default_backend()}; "
          + command.describe_budget(width_tasks[first]), flush=True)
    with command.resumable("model_scaling", run) as stop:
        result = model_scaling.model_scaling(width_tasks, members, from_flags.settings(), run, stop=stop, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
