"""What random_search and bayes_search share: the --search flags and the command around a search
(load, claim the workdir, train resumably, save results.json and search.png, print). Not an
experiment itself: each search module defines its own flags and calls `run`."""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import flags

from lrlab import cli, models, optimizers, plots, results, search
from lrlab import __version__
from lrlab.checkpoints import StopSignal

FLAGS = flags.FLAGS

# (dataset, optimizer, ranges, settings, hyperparameter overrides, static overrides, stop) -> result
Search = Callable[[Any, str, search.Ranges, Any, dict[str, float], tuple, StopSignal], search.SearchResult]


def define_flags() -> None:
    """The shared flags, --search and --search_seed, and their validation against --optimizer."""
    cli.define_flags("adam", rate_grid=False)
    flags.DEFINE_list("search", ["learning_rate:1e-6:100"], "Ranges NAME:LOW:HIGH[:log|linear], comma separated; "
                      "log scale by default for learning_rate and eps, linear otherwise (e.g. b1:0.8:0.99).")
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
    try:
        search.parse_ranges(f["search"], names[0])
    except ValueError as e:
        raise flags.ValidationError(f"--search: {e}") from None
    return True


def run(argv: list[str], experiment: str, label: str, candidates: str, search_info: dict[str, Any],
        train: Search) -> None:
    """The whole command: `label` names the method in the figure, `candidates` describes what it
    trains ("48 candidates"), `search_info` joins results.json's `search`, `train` runs it."""
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir(experiment)
    if cli.claim_workdir(workdir, experiment):
        summary = results.read_json(workdir / "results.json")
        print(search.format_trials(summary["trials"], list(summary["search"]["ranges"]), FLAGS.eval_every))
        return
    optimizer = cli.optimizer_names()[0]
    ranges = search.parse_ranges(FLAGS.search, optimizer)
    model = cli.model_for(dataset)
    n_params = models.count_parameters(model, dataset.image_shape)
    print(f"lrlab {__version__}: {experiment}, {optimizer} on {FLAGS.model} ({n_params:,} weights), {dataset.name}; "
          f"{candidates} over "
          + ", ".join(f"{n} {lo:g}..{hi:g} ({'log' if log else 'linear'})" for n, (lo, hi, log) in ranges.items())
          + f"; target {FLAGS.target_accuracy:g}, budget {FLAGS.max_steps} steps per candidate")
    settings = cli.sweep_settings(model, workdir / "checkpoints")
    with cli.resumable(experiment, workdir) as stop:
        result = train(dataset, optimizer, ranges, settings, cli.hparam_overrides(optimizer),
                       cli.static_overrides_for(optimizer), stop)
    summary = {
        **results.run_header(experiment),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "target_accuracy": FLAGS.target_accuracy,
        "max_steps": FLAGS.max_steps,
        "flags": cli.flag_values(),
        "search": {"optimizer": optimizer, "ranges": search.describe_ranges(ranges), "seed": FLAGS.search_seed,
                   **search_info},
        "objective": search.OBJECTIVE,
        **result.to_json(),
    }
    paths = cli.save_outputs(workdir, summary, "search.png", lambda path: plots.search_trials(
        result.trials, summary["trace"], result.rounds, path, budget_steps=FLAGS.max_steps,
        eval_every=FLAGS.eval_every, title=f"{label}, {optimizer} on {FLAGS.model}, {dataset.name}: "
                                           f"{candidates}, target {FLAGS.target_accuracy:g}"), start)
    print(search.format_trials(result.trials, list(ranges), FLAGS.eval_every))
    print(f"total {result.total_model_steps:,} model-steps over {len(result.trials)} candidates; compile "
          f"{sum(t['compile_seconds'] for t in result.timing):.1f} s, training "
          f"{sum(t['train_seconds'] for t in result.timing):.1f} s")
    cli.print_saved(paths, start)
