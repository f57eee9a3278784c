"""Bayesian optimisation of the learning rate (and other float hyperparameters) in rounds.

  python -m lrlab.experiments.bayes_search --optimizer=adam --rounds=4 --batch=8
  python -m lrlab.experiments.bayes_search --search=learning_rate:1e-5:1,b1:0.8:0.99 --workdir=runs/bayes

Each round Optuna's TPE (seeded, multivariate, constant liar) proposes --batch candidates at once;
they train as ONE population, and their objectives (steps to target; missed runs ranked by best
accuracy above the budget; diverged last) are told back. Writes results.json and search.png to
--workdir and checkpoints each round in its own folder: rerunning the same command resumes it.
"""

from __future__ import annotations

import time

import jax
import numpy as np
from absl import app, flags

from lrlab import cli, models, optimizers, plots, results, search
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags("adam", rate_grid=False)
flags.DEFINE_list("search", ["learning_rate:1e-6:100"], "Ranges NAME:LOW:HIGH[:log|linear], comma separated; "
                  "log scale by default for learning_rate and eps, linear otherwise (e.g. b1:0.8:0.99).")
flags.DEFINE_integer("rounds", 4, "Rounds of ask / train / tell.")
flags.DEFINE_integer("batch", 8, "Candidates per round, trained as one population.")
flags.DEFINE_integer("n_startup", None, "Random candidates before TPE takes over (default: one --batch).")
flags.DEFINE_integer("search_seed", 0, "Seed of the sampler (--seed seeds the training).")
for _name in ("rounds", "batch"):
    flags.register_validator(_name, lambda v: v >= 1, "must be at least 1")
flags.register_validator("n_startup", lambda v: v is None or v >= 1, "must be at least 1")


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


flags.register_multi_flags_validator(["optimizer", "search"], _valid_search)


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir("bayes_search")
    if cli.claim_workdir(workdir, "bayes_search"):
        summary = results.read_json(workdir / "results.json")
        print(search.format_trials(summary["trials"], list(summary["search"]["ranges"]), FLAGS.eval_every))
        return
    optimizer = cli.optimizer_names()[0]
    ranges = search.parse_ranges(FLAGS.search, optimizer)
    model = cli.model_for(dataset)
    n_params = models.param_count(
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.numpy.zeros((1,) + dataset.image_shape))["params"])
    print(f"lrlab {__version__}: bayes_search, {optimizer} on {FLAGS.model} ({n_params:,} weights), {dataset.name}; "
          f"{FLAGS.rounds} rounds x {FLAGS.batch} candidates over "
          + ", ".join(f"{n} {lo:g}..{hi:g} ({'log' if log else 'linear'})" for n, (lo, hi, log) in ranges.items())
          + f"; target {FLAGS.target_accuracy:g}, budget {FLAGS.max_steps} steps per candidate")
    settings = cli.sweep_settings(model, workdir / "checkpoints")
    overrides = {k: float(v[0]) for k, v in cli.hparams_for(optimizer, np.ones(1)).items() if k != "learning_rate"}

    def report(entry: dict) -> None:
        best = entry["incumbent"]
        print(f"round {entry['round'] + 1}/{FLAGS.rounds}: {entry['members']} candidates, "
              f"{entry['cumulative_model_steps']:,} model-steps so far; best lr {best['learning_rate']:.4g} "
              f"({best['status']}, objective {best['objective']:.0f})")

    with cli.resumable("bayes_search", workdir) as stop:
        result = search.bayes_search(dataset, optimizer, ranges, FLAGS.rounds, FLAGS.batch, settings,
                                     FLAGS.search_seed, n_startup=FLAGS.n_startup, overrides=overrides,
                                     static_overrides=cli.static_overrides_for(optimizer), stop=stop, on_round=report)
    summary = {
        **results.run_header("bayes_search"),
        "model": {"name": FLAGS.model, "width": FLAGS.width, "parameters": n_params},
        "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "target_accuracy": FLAGS.target_accuracy,
        "max_steps": FLAGS.max_steps,
        "flags": cli.flag_values(),
        "search": {"optimizer": optimizer, "ranges": search.describe_ranges(ranges), "seed": FLAGS.search_seed,
                   "rounds": FLAGS.rounds, "batch": FLAGS.batch, "n_startup": FLAGS.n_startup or FLAGS.batch,
                   "sampler": "optuna TPESampler(multivariate, constant_liar)"},
        "objective": search.OBJECTIVE,
        **result.to_json(),
    }
    paths = {"results": workdir / "results.json", "figure": workdir / "search.png"}
    if cli.is_writer():
        with cli.writing(f"results to {workdir}"):
            plots.search_trials(result.trials, summary["trace"], result.rounds, paths["figure"],
                                budget_steps=FLAGS.max_steps, eval_every=FLAGS.eval_every,
                                title=f"Bayesian search (TPE), {optimizer} on {FLAGS.model}, {dataset.name}: "
                                      f"{FLAGS.rounds} rounds x {FLAGS.batch}, target {FLAGS.target_accuracy:g}")
            summary["wall_seconds"] = time.perf_counter() - start
            results.write_json(paths["results"], summary)
    print(search.format_trials(result.trials, list(ranges), FLAGS.eval_every))
    print(f"total {result.total_model_steps:,} model-steps over {len(result.trials)} candidates; compile "
          f"{sum(t['compile_seconds'] for t in result.timing):.1f} s, training "
          f"{sum(t['train_seconds'] for t in result.timing):.1f} s")
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
