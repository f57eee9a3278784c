"""Random search: log-uniform learning rates (and other float hyperparameters) as ONE population.

  python -m lrlab.experiments.random_search --optimizer=adam --num_samples=48
  python -m lrlab.experiments.random_search --search=learning_rate:1e-5:1,b1:0.8:0.99 --workdir=runs/random

--num_samples candidates are drawn from the --search ranges with --search_seed and trained together;
each is scored by the objective (steps to target; missed runs ranked by their best target value
above the budget; diverged last). Writes results.json and search.png to --workdir and checkpoints
while training: rerunning the same command resumes it. The library call: `lrlab.search(...)`.
"""

from __future__ import annotations

from absl import app, flags

from lrlab.experiments import search_command

FLAGS = flags.FLAGS
search_command.define_flags()
flags.DEFINE_integer("num_samples", 48, "Candidates drawn, trained as one population.")
flags.register_validator("num_samples", lambda v: v >= 1, "must be at least 1")


def main(argv: list[str]) -> None:
    search_command.run(argv, "random", num_samples=FLAGS.num_samples)


if __name__ == "__main__":
    app.run(main)
