"""How much compute each learning-rate search method needs to find a good rate.

  python -m lrlab.experiments.search_compare --flagfile=experiments/search/compare.flags --workdir=runs/search_compare

Trains the valley (48 rates, the reference: S* = its fewest steps to target), then each method of
--methods with method seeds 1..--method_seeds, all with the training seed --seed; scores each by its
model-steps and trainings, and whether its rate reaches the target within 1.1 x S* steps
(lrlab/comparison.py). Writes results.json and search_compare.png to --workdir and checkpoints
under workdir/checkpoints/<method>/seed-<s>/: rerunning the same command resumes it. The library
call: `lrlab.search_compare(task, optimizer, settings, workdir, methods=..., method_seeds=...)`.
"""

from __future__ import annotations

from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.studies import search_compare
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags("adam", rate_grid=False)
flags.DEFINE_integer("method_seeds", 3, "Seeds of each method's own randomness (1..N); training seed: --seed.")
flags.DEFINE_list("methods", ["all"], f"Comma list of {', '.join(search_compare.METHODS)}, or all.")
flags.register_validator("method_seeds", lambda v: v >= 1, "must be at least 1")

common_flags.validate_with("methods", search_compare.parse_methods)
common_flags.require_one_optimizer("search_compare")
common_flags.refuse_flags({name: "not with search_compare: it sets pruning per method and trains each method as populations"
                  for name in ("prune", "early_stopping", "sequential")})
common_flags.refuse_flags({"hparam": "search_compare searches the learning rate: set other hyperparameters with their flags"})


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("search_compare")
    task = from_flags.task()
    from_flags.check_data(task)
    opt = from_flags.optimizer(from_flags.optimizer_names()[0])
    methods = search_compare.parse_methods(FLAGS.methods)
    print(f"lrlab {__version__}: search_compare, {opt.name} on {command.describe_task(task)}; methods "
          f"{', '.join(methods)} x {FLAGS.method_seeds} method seeds; training seed {FLAGS.seed}, "
          f"{command.describe_budget(task)}", flush=True)

    def on_valley(s_star: int, best: dict) -> None:
        print(f"valley: S* = {s_star} steps at learning rate {best['learning_rate']:.4g}; good: <= "
              f"{search_compare.GOOD_FACTOR * s_star:g} steps", flush=True)

    def on_row(row: dict, i: int, n: int) -> None:
        print(f"[{i}/{n}] {row['method']} seed {row['seed']}: {row['trainings']} trainings, "
              f"{row['model_steps']:,} model-steps, found lr "
              + ("-" if row["found_lr"] is None else f"{row['found_lr']:.4g}")
              + f", steps {row['found_steps'] if row['found_steps'] is not None else '-'}"
              + f" ({'good' if row['good'] else 'not good'}; {row.get('wall_seconds', 0):.0f} s)", flush=True)

    with command.resumable("search_compare", run) as stop:
        try:
            result = search_compare.search_compare(task, opt, from_flags.settings(), run, methods=methods,
                                               method_seeds=FLAGS.method_seeds,
                                               overrides=from_flags.hparam_overrides(opt.name), stop=stop, on_row=on_row,
                                               on_valley=on_valley, info=command.info())
        except search_compare.NoReference as e:
            command.fail(str(e))
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
