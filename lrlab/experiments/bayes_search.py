"""Bayesian optimisation of the learning rate (and other float hyperparameters) in rounds.

  python -m lrlab.experiments.bayes_search --optimizer=adam --rounds=4 --batch=8
  python -m lrlab.experiments.bayes_search --search=learning_rate:1e-5:1,b1:0.8:0.99 --workdir=runs/bayes

Each round Optuna's TPE (seeded, multivariate, constant liar) proposes --batch candidates at once;
they train as ONE population, and their objectives (steps to target; missed runs ranked by their
best target value above the budget; diverged last) are told back. Writes results.json and
search.png to --workdir and checkpoints each round in its own folder: rerunning the same command
resumes it. The library call: `lrlab.search(..., method="bayes")`.
"""

from __future__ import annotations

from absl import app, flags

from lrlab.experiments import search_command

FLAGS = flags.FLAGS
search_command.define_flags()
flags.DEFINE_integer("rounds", 4, "Rounds of ask / train / tell.")
flags.DEFINE_integer("batch", 8, "Candidates per round, trained as one population.")
flags.DEFINE_integer("n_startup", None, "Random candidates before TPE takes over (default: one --batch).")
for _name in ("rounds", "batch"):
    flags.register_validator(_name, lambda v: v >= 1, "must be at least 1")
flags.register_validator("n_startup", lambda v: v is None or v >= 1, "must be at least 1")


def report(entry: dict) -> None:
    """One line per finished round: its cost so far and the incumbent."""
    best = entry["incumbent"]
    print(f"round {entry['round'] + 1}/{FLAGS.rounds}: {entry['members']} candidates, "
          f"{entry['cumulative_model_steps']:,} model-steps so far; best lr {best['learning_rate']:.4g} "
          f"({best['status']}, objective {best['objective']:.0f})", flush=True)


def main(argv: list[str]) -> None:
    search_command.run(argv, "bayes", rounds=FLAGS.rounds, batch=FLAGS.batch, n_startup=FLAGS.n_startup, on_round=report)


if __name__ == "__main__":
    app.run(main)
