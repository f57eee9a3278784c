"""Random search: log-uniform learning rates (and other float hyperparameters) as ONE population.

  python -m lrlab.experiments.random_search --optimizer=adam --num_samples=48
  python -m lrlab.experiments.random_search --search=learning_rate:1e-5:1,b1:0.8:0.99 --workdir=runs/random

--num_samples candidates are drawn from the --search ranges with --search_seed and trained together;
each is scored by the objective (steps to target; missed runs ranked by best accuracy above the
budget; diverged last). Writes results.json and search.png to --workdir and checkpoints while
training: rerunning the same command resumes it.
"""

from __future__ import annotations

from absl import app, flags

from lrlab import search
from lrlab.experiments import search_command

FLAGS = flags.FLAGS
search_command.define_flags()
flags.DEFINE_integer("num_samples", 48, "Candidates drawn, trained as one population.")
flags.register_validator("num_samples", lambda v: v >= 1, "must be at least 1")


def main(argv: list[str]) -> None:
    def train(dataset, optimizer, ranges, settings, overrides, static_overrides, stop):
        return search.random_search(dataset, optimizer, ranges, FLAGS.num_samples, settings, FLAGS.search_seed,
                                    overrides=overrides, static_overrides=static_overrides, stop=stop)

    search_command.run(argv, "random_search", "Random search", f"{FLAGS.num_samples} candidates",
                       {"num_samples": FLAGS.num_samples}, train)


if __name__ == "__main__":
    app.run(main)
