"""What the random_search and bayes_search commands share: the --search flags and the command around
a search (not an experiment itself: each search module defines its own flags and calls `run`)."""

from __future__ import annotations

from typing import Any

from absl import flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.optim import optimizers
from lrlab.studies import bayes_search, random_search
from lrlab.training import search
from lrlab.version import __version__

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The shared flags, --search and --search_seed, and their validation against --optimizer."""
    common_flags.define_flags("adam", rate_grid=False)
    flags.DEFINE_list("search", ["learning_rate:1e-6:100"], "Ranges NAME:LOW:HIGH[:log|linear], comma separated; "
                      "log scale by default for learning rates and epsilons, linear otherwise (e.g. b1:0.8:0.99).")
    flags.DEFINE_integer("search_seed", 0, "Seed of the sampling (--seed seeds the training).")
    flags.register_multi_flags_validator(["optimizer", "search"], _valid_search)


def _valid_search(f: dict) -> bool:
    """--optimizer names one family (the shared validator reports unknown names); --search parses."""
    try:
        names = optimizers.parse_optimizer_list(f["optimizer"])
    except ValueError:
        return True
    if len(names) != 1:
        raise flags.ValidationError("--optimizer: a search tunes one optimizer family: name one")
    if names[0] not in optimizers.REGISTRY:
        return True  # a factory by name: checked once imported, in run()
    try:
        search.parse_ranges(f["search"], optimizers.REGISTRY[names[0]])
    except ValueError as e:
        raise flags.ValidationError(f"--search: {e}") from None
    return True


def run(argv: list[str], method: str, **options: Any) -> None:
    """The whole command of `method` ("random" or "bayes"); `options` go to `lrlab.search`."""
    start = command.start(argv)
    experiment = f"{method}_search"
    run_dir = command.workdir(experiment)
    task = from_flags.task()
    from_flags.check_data(task)
    opt = from_flags.optimizer(from_flags.optimizer_names()[0])
    try:
        ranges = search.parse_ranges(FLAGS.search, opt)
    except ValueError as e:
        command.fail(f"--search: {e}")
    candidates = (f"{options['num_samples']} candidates" if method == "random"
                  else f"{options['rounds']} rounds x {options['batch']} candidates")
    print(f"lrlab {__version__}: {experiment}, {opt.name} on {command.describe_task(task)}; {candidates} over "
          + ", ".join(f"{n} {lo:g}..{hi:g} ({'log' if log else 'linear'})" for n, (lo, hi, log) in ranges.items())
          + f"; {command.describe_budget(task)} per candidate", flush=True)
    with command.resumable(experiment, run_dir) as stop:
        run_search = random_search.random_search if method == "random" else bayes_search.bayes_search
        result = run_search(task, opt, ranges, settings=from_flags.settings(), workdir=run_dir, seed=FLAGS.search_seed,
                            overrides=from_flags.hparam_overrides(opt.name), stop=stop, info=command.info(), **options)
    print(result.report())
    command.print_saved(result.paths, start)
