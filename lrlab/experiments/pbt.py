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
The library call: `lrlab.pbt(task, members, config, settings, workdir)`.
"""

from __future__ import annotations

from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.studies import pbt
from lrlab.training import exploit_explore
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags("adam", rate_grid=True)
FLAGS.set_default("lr_min", 1e-4)
FLAGS.set_default("lr_max", 0.1)
FLAGS.set_default("num_lrs", 16)
flags.DEFINE_integer("ready_steps", 200, "Steps between exploit/explore events; a multiple of --eval_every.")
flags.DEFINE_float("truncation", 0.2, "Fraction of the members replaced at each ready event by copies of the top "
                   "fraction as large, in (0, 0.5].")
flags.DEFINE_float("resample_probability", 0.25, "Chance that a copied hyperparameter is drawn afresh within its "
                   "bounds instead of perturbed by x0.8 or x1.2.")
flags.DEFINE_list("explore", ["learning_rate"], "Hyperparameters to explore: NAME or NAME:LOW:HIGH (default "
                  "bounds: the hyperparameter's search range, e.g. learning_rate 1e-6..100 log, b1 0..0.99).")
flags.DEFINE_bool("stop_at_target", True, "End the run at the first evaluation where any member reaches "
                  "the target (PBT's time to target); otherwise train the whole --max_steps.")
flags.register_validator("ready_steps", lambda v: v >= 1, "must be at least 1")
flags.register_validator("truncation", lambda v: 0 < v <= 0.5, "must be in (0, 0.5]")
flags.register_validator("resample_probability", lambda v: 0 <= v <= 1, "must be in [0, 1]")
flags.register_multi_flags_validator(
    ["ready_steps", "eval_every"], lambda f: f["ready_steps"] % f["eval_every"] == 0,
    "--ready_steps must be a multiple of --eval_every (members are ranked at evaluations)")
common_flags.require_one_optimizer("pbt")
common_flags.refuse_flags({"sequential": "not with PBT (members are ranked against each other)",
                  "early_stopping": "not with PBT (it replaces weak members instead)",
                  "prune": "not with PBT (it replaces weak members instead)"})


def pbt_config(optimizer) -> exploit_explore.PBTConfig:
    """The PBT settings of the flags; one clear line on a bad combination."""
    if len(from_flags.learning_rates()) < 2:
        command.fail("--num_lrs / --lrs: PBT needs at least 2 members")
    try:
        explore = exploit_explore.parse_explore(FLAGS.explore, optimizer)
    except ValueError as e:
        command.fail(f"--explore: {e}")
    return exploit_explore.PBTConfig(FLAGS.ready_steps, FLAGS.truncation, resample_probability=FLAGS.resample_probability,
                         explore=explore, stop_at_target=FLAGS.stop_at_target)


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("pbt")
    (members,) = from_flags.populations(from_flags.learning_rates())
    config = pbt_config(members.optimizer)
    task = from_flags.task()
    from_flags.check_data(task)
    print(f"lrlab {__version__}: PBT of {members.name} on {command.describe_task(task)}; {members.size} members, "
          f"ready every {FLAGS.ready_steps} steps, truncation {FLAGS.truncation:g}, exploring "
          f"{', '.join(config.names)}; {command.describe_budget(task)}", flush=True)
    with command.resumable("pbt", run) as stop:
        result = pbt.pbt(task, members, config, from_flags.settings(), run, stop=stop, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
