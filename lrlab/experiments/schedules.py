"""Learning-rate schedules compared: the valley of each schedule for one optimizer, overlaid.

  python -m lrlab.experiments.schedules --optimizer=adam --schedules=constant,step,exponential,cosine_restarts,one_cycle
  python -m lrlab.experiments.schedules --flagfile=experiments/techniques/schedules.flags --workdir=runs/schedules

Does a schedule widen the band of learning rates that reach the target, and does it shorten the
time to target? Each schedule in --schedules trains one population of all the grid's rates (each
member's rate is the schedule's peak), with the shape set by the schedule flags (--decay_steps,
--decay_factor, --sgdr_period, --sgdr_mult; one_cycle and the SGDR periods span --max_steps).
--warmup_steps applies to every listed schedule, constant included. Writes results.json (every
member, with its schedule) and schedules.png to --workdir and checkpoints each schedule in its own
folder: rerunning the same command with the same --workdir resumes it. The library call:
`lrlab.schedules(task, members, specs, settings, workdir)`.
"""

from __future__ import annotations

import dataclasses

import jax
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.optim.schedules import SCHEDULES, ScheduleSpec
from lrlab.studies import schedules
from lrlab.training import variants
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags("adam")
flags.DEFINE_list("schedules", list(SCHEDULES), f"Schedules to compare (comma list, each once) from "
                  f"{', '.join(SCHEDULES)}; one population each. --warmup_steps applies to all of them.")


def parse_schedules(names: list[str]) -> list[str]:
    """--schedules entries -> schedule names, in the given order; ValueError naming the bad entry."""
    return variants.parse_names(names, SCHEDULES, "schedule")


def schedule_specs(names: list[str], template: ScheduleSpec) -> dict[str, ScheduleSpec | None]:
    """Each schedule's spec: `template` (the flags' shape parameters) with its name; None for
    constant without warmup (the plain optimizer, as lr_valley trains it)."""
    return {name: None if name == "constant" and not template.warmup_steps
            else dataclasses.replace(template, name=name) for name in names}


def flag_template() -> ScheduleSpec:
    """The schedule flags' shape parameters; one_cycle and the SGDR periods span --max_steps."""
    return ScheduleSpec("constant", FLAGS.decay_steps, FLAGS.decay_factor, FLAGS.sgdr_period, FLAGS.sgdr_mult,
                        FLAGS.warmup_steps, FLAGS.max_steps)


common_flags.validate_with("schedules", parse_schedules)
common_flags.require_one_optimizer("schedules")
flags.register_validator("schedule", lambda v: v == "constant",
                         "not used by this experiment: list the schedules to compare in --schedules")


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("schedules")
    task = from_flags.task()
    from_flags.check_data(task)
    names = parse_schedules(FLAGS.schedules)
    lrs = from_flags.learning_rates()
    (members,) = from_flags.populations(lrs)
    print(f"lrlab {__version__}: {command.describe_task(task)}; {members.name} x {len(lrs)} learning rates "
          f"{lrs.min():.3g}..{lrs.max():.3g} (peaks) x schedules {', '.join(names)}"
          + (f", each after {FLAGS.warmup_steps} warmup steps" if FLAGS.warmup_steps else "")
          + f"; {'sequential' if FLAGS.sequential else 'vectorized'} on {jax.default_backend()}; "
          + command.describe_budget(task), flush=True)
    with command.resumable("schedules", run) as stop:
        result = schedules.schedules(task, members, schedule_specs(names, flag_template()), from_flags.settings(), run,
                                    stop=stop, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
