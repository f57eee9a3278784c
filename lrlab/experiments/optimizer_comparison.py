"""Optimizers compared at their best learning rates: test accuracy over steps and over seconds.

  python -m lrlab.experiments.optimizer_comparison --from_valley=runs/valley
  python -m lrlab.experiments.optimizer_comparison --lrs=adam:0.001,sgd:0.1 --max_steps=2000

Each optimizer trains as its own one-member population at the rate an lr_valley run found fastest
(--from_valley; results.BEST_RULE) or the one given (--lrs), by default for the whole --max_steps
budget. Every --eval_every steps it is evaluated on a fixed subset of the test set (timed apart from
training). Writes results.json and curves.png to --workdir and checkpoints while training (rerun to
resume). The library call: `lrlab.optimizer_comparison(task, rates, settings, workdir)`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.optim import optimizers
from lrlab.store import records
from lrlab.studies import optimizer_comparison
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags(default_optimizer="all", rate_grid=False)
flags.DEFINE_string("from_valley", None, "An lr_valley results.json, or its --workdir: each optimizer at its "
                    "best rate there (fewest steps to target; ties: the lower rate).")
flags.DEFINE_list("lrs", None, "OPTIMIZER:RATE pairs, for example adam:0.001,sgd:0.1 (instead of --from_valley).")
flags.DEFINE_integer("test_examples", 2000, "Size of the fixed test subset evaluated every --eval_every steps.")
flags.DEFINE_float("drop_threshold", 0.01, "Instability: an evaluation counts as a drop when its test accuracy "
                   "is more than this (absolute) below the best seen before it.")
flags.DEFINE_bool("stop_at_target", False, "Stop each optimizer at the target, as lr_valley does; by default "
                  "each trains the whole --max_steps budget, so the curves run the same length.")
flags.register_validator("test_examples", lambda v: v >= 1, "must be at least 1")
flags.register_validator("drop_threshold", lambda v: 0 <= v < 1, "must be in [0, 1)")
common_flags.refuse_flags({"hparam": "each optimizer trains at one rate here: set other hyperparameters with their flags"})


def parse_rate_pairs(entries: list[str]) -> dict[str, float]:
    """['adam:0.001', 'sgd:0.1'] -> {'adam': 0.001, 'sgd': 0.1}; ValueError naming the bad entry.

    Each optimizer once, known to the registry, with a positive finite rate.
    """
    rates: dict[str, float] = {}
    for entry in entries:
        name, sep, text = (part.strip() for part in entry.partition(":"))
        if not sep:
            raise ValueError(f"{entry!r} is not OPTIMIZER:RATE (for example adam:0.001)")
        if name not in optimizers.REGISTRY:
            raise ValueError(f"{entry!r}: unknown optimizer {name!r}: choose from {', '.join(optimizers.OPTIMIZERS)}")
        if name in rates:
            raise ValueError(f"{entry!r}: optimizer {name} given twice")
        try:
            rate = float(text)
        except ValueError:
            raise ValueError(f"{entry!r}: the rate {text!r} is not a number") from None
        if not (np.isfinite(rate) and rate > 0):
            raise ValueError(f"{entry!r}: the rate must be positive and finite")
        rates[name] = rate
    if not rates:
        raise ValueError("no OPTIMIZER:RATE pairs given")
    return rates


def choose_rates() -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, str]]:
    """Each optimizer's learning rate and its source, from --from_valley or --lrs, filtered by
    --optimizer; plus the optimizers skipped and why. Any bad input stops with one line."""
    if FLAGS.from_valley is not None and FLAGS.lrs is not None:
        command.fail("--from_valley and --lrs are mutually exclusive: give one")
    if FLAGS.from_valley is None and FLAGS.lrs is None:
        command.fail("give --from_valley=PATH (an lr_valley results.json or its workdir) or "
                 "--lrs=OPTIMIZER:RATE,... (for example adam:0.001,sgd:0.1)")
    if FLAGS.lrs is not None:
        try:
            given = parse_rate_pairs(FLAGS.lrs)
        except ValueError as e:
            command.fail(f"--lrs: {e}")
        available, where = list(given), "--lrs"
    else:
        try:
            path, members = records.read_valley(FLAGS.from_valley)
        except ValueError as e:
            command.fail(f"--from_valley={FLAGS.from_valley}: {e}")
        available, where = list(dict.fromkeys(m["optimizer"] for m in members)), str(path)
    names = available
    if FLAGS.optimizer.strip() != "all":
        names = from_flags.optimizer_names()
        missing = [n for n in names if n not in available]
        if missing:
            command.fail(f"--optimizer={FLAGS.optimizer}: {', '.join(missing)} not in {where} "
                     f"(it has {', '.join(available) or 'no optimizer'})")
    if FLAGS.lrs is not None:
        return {n: given[n] for n in names}, {n: {"from": "lrs"} for n in names}, {}
    rates, sources, skipped = optimizer_comparison.rates_from_valley(members, names, str(path))
    if not rates:
        command.fail(f"--from_valley={FLAGS.from_valley}: no learning rate of {', '.join(names) or 'any optimizer'} "
                 "reached the target there: nothing to compare")
    return rates, sources, skipped


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("optimizer_comparison")
    rates, sources, skipped = choose_rates()
    for name, why in skipped.items():
        print(f"optimizer_comparison: skipping {name}: {why}")
    task = from_flags.task()
    from_flags.check_data(task)
    if task.test is None:
        command.fail(f"--task={FLAGS.task}: the task has no test set to draw the curves on")
    print(f"lrlab {__version__}: {command.describe_task(task)}; " + ", ".join(f"{n} at {lr:.4g}" for n, lr in rates.items())
          + f"; test {task.target.metric} on {FLAGS.test_examples} test examples every {FLAGS.eval_every} steps, "
          f"budget {FLAGS.max_steps} steps" + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else "")
          + (", stopping at the target" if FLAGS.stop_at_target else ""), flush=True)
    with command.resumable("optimizer_comparison", run) as stop:
        result = optimizer_comparison.optimizer_comparison(
            task, rates, from_flags.settings(stop_at_target=FLAGS.stop_at_target), run, sources=sources,
            overrides={n: from_flags.hparam_overrides(n) for n in rates}, test_examples=FLAGS.test_examples,
            drop_threshold=FLAGS.drop_threshold, skipped=skipped, stop=stop, info=command.info())
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
