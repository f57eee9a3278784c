"""Training techniques compared: the valley of one optimizer with each technique on, overlaid.

  python -m lrlab.experiments.techniques --optimizer=adam
  python -m lrlab.experiments.techniques --flagfile=experiments/techniques/techniques.flags --workdir=runs/techniques

Each entry of --techniques trains one population of the grid's rates with one technique switched on
over the shared flags: `baseline` (none), `bfloat16` / `float16` (16-bit compute, float32 master
weights), `batch_norm`, `augment` (shifts and rotations on the device), `early_stopping` (validation
set held out, best variables kept). Does a technique change the time to target and the band of
rates that train? Writes results.json (every member with its technique) and techniques.png to
--workdir; each technique checkpoints in its own folder, so a rerun resumes. The library call:
`lrlab.techniques(task, members, names, settings, workdir)`.
"""

from __future__ import annotations

from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.studies import techniques
from lrlab.training import variants
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags("adam")
TECHNIQUES = variants.TECHNIQUES
flags.DEFINE_list("techniques", list(TECHNIQUES), f"Techniques to compare, one population each: "
                  f"{', '.join(TECHNIQUES)}. Each is switched on alone over the shared flags.")


def parse_techniques(names: list[str]) -> list[str]:
    """--techniques entries -> names in the given order; ValueError naming an unknown or repeated one."""
    return variants.parse_names(names, TECHNIQUES, "technique")


common_flags.validate_with("techniques", parse_techniques)
common_flags.require_one_optimizer("techniques")
common_flags.refuse_flags({name: "set by --techniques in this experiment (one technique per population)"
                  for name in ("dtype", "batch_norm", "augment", "early_stopping")})
flags.register_multi_flags_validator(
    ["model", "techniques", "task"],
    lambda f: (f["model"] != "mlp" and not f["task"]) or "batch_norm" not in f["techniques"],
    "--techniques=batch_norm needs a CNN (--model=small_cnn or tutorial_cnn; with --task, use the Python API's "
    "batch_norm_task)")


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("techniques")
    dataset = None if FLAGS.task else from_flags.load_dataset()
    task = from_flags.task(dataset=dataset)
    names = parse_techniques(FLAGS.techniques)
    from_flags.check_data(task, patience=FLAGS.patience if "early_stopping" in names else 0)
    lrs = from_flags.learning_rates()
    (members,) = from_flags.populations(lrs)
    print(f"lrlab {__version__}: {command.describe_task(task)}; {members.name} x {len(lrs)} learning rates "
          f"{lrs.min():.3g}..{lrs.max():.3g} x techniques {', '.join(names)}; {command.describe_budget(task)}", flush=True)
    batch_norm_task = from_flags.task(batch_norm=True, dataset=dataset) if "batch_norm" in names else None
    with command.resumable("techniques", run) as stop:
        result = techniques.techniques(task, members, names, from_flags.settings(), run, batch_norm_task=batch_norm_task,
                                     patience=FLAGS.patience, stop=stop, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
