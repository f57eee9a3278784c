"""Bayesian optimisation of the learning rate (and other float hyperparameters) in rounds.

  python -m lrlab.experiments.bayes_search --optimizer=adam --rounds=4 --batch=8
  python -m lrlab.experiments.bayes_search --search=learning_rate:1e-5:1,b1:0.8:0.99 --workdir=runs/bayes

Each round Optuna's TPE (seeded, multivariate, constant liar) proposes --batch candidates at once;
they train as ONE population, and their objectives (steps to target; missed runs ranked by best
accuracy above the budget; diverged last) are told back. Writes results.json and search.png to
--workdir and checkpoints each round in its own folder: rerunning the same command resumes it.
"""

from __future__ import annotations

from absl import app, flags

from lrlab import search
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
          f"({best['status']}, objective {best['objective']:.0f})")


def main(argv: list[str]) -> None:
    def train(dataset, optimizer, ranges, settings, overrides, static_overrides, stop):
        return search.bayes_search(dataset, optimizer, ranges, FLAGS.rounds, FLAGS.batch, settings,
                                   FLAGS.search_seed, n_startup=FLAGS.n_startup, overrides=overrides,
                                   static_overrides=static_overrides, stop=stop, on_round=report)

    search_command.run(argv, "bayes_search", "Bayesian search (TPE)",
                       f"{FLAGS.rounds} rounds x {FLAGS.batch} candidates",
                       {"rounds": FLAGS.rounds, "batch": FLAGS.batch, "n_startup": FLAGS.n_startup or FLAGS.batch,
                        "sampler": "optuna TPESampler(multivariate, constant_liar)"}, train)


if __name__ == "__main__":
    app.run(main)
