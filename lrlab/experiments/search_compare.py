"""How much compute each learning-rate search method needs to find a good rate (issue 6).

  python -m lrlab.experiments.search_compare --flagfile=experiments/search/compare.flags --workdir=runs/search_compare

Trains the valley (48 rates, the reference: S* = its fewest steps to target), then each method of
--methods with method seeds 1..--method_seeds, all with the training seed --seed; scores each by its
model-steps and trainings, and whether its rate reaches the target within 1.1 x S* steps
(lrlab/comparison.py). Writes results.json and search_compare.png to --workdir and checkpoints
under workdir/checkpoints/<method>/seed-<s>/: rerunning the same command resumes it.
"""

from __future__ import annotations

import time

from absl import app, flags

from lrlab import cli, comparison, plots, results
from lrlab import __version__

FLAGS = flags.FLAGS
cli.define_flags("adam", rate_grid=False)
flags.DEFINE_integer("method_seeds", 3, "Seeds of each method's own randomness (1..N); training seed: --seed.")
flags.DEFINE_list("methods", ["all"], f"Comma list of {', '.join(comparison.METHODS)}, or all.")
flags.register_validator("method_seeds", lambda v: v >= 1, "must be at least 1")


cli.validate_with("methods", comparison.parse_methods)
cli.require_one_optimizer("search_compare")
cli.refuse_flags({name: "not with search_compare: it sets pruning per method and trains each method as populations"
                  for name in ("prune", "early_stopping", "sequential")})


def main(argv: list[str]) -> None:
    cli.start(argv)
    start = time.perf_counter()
    dataset = cli.load_dataset()
    workdir = cli.prepare_workdir("search_compare")
    if cli.claim_workdir(workdir, "search_compare"):
        summary = results.read_json(workdir / "results.json")
        print(comparison.format_rows(summary["rows"]))
        print(comparison.format_summary(summary["table"], summary["s_star"], summary["valley_best"]["learning_rate"],
                                        FLAGS.eval_every))
        return
    optimizer = cli.optimizer_names()[0]
    methods = comparison.parse_methods(FLAGS.methods)
    overrides = cli.hparam_overrides(optimizer)
    setup = comparison.Setup(dataset, optimizer, cli.sweep_settings(cli.model_for(dataset), workdir / "checkpoints"),
                             overrides, cli.static_overrides_for(optimizer))
    print(f"lrlab {__version__}: search_compare, {optimizer} on {FLAGS.model}, {dataset.name}; methods "
          f"{', '.join(methods)} x {FLAGS.method_seeds} method seeds; training seed {FLAGS.seed}, target "
          f"{FLAGS.target_accuracy:g}, budget {FLAGS.max_steps} steps, evaluation every {FLAGS.eval_every}", flush=True)

    def on_row(row: dict, i: int, n: int) -> None:
        print(f"[{i}/{n}] {row['method']} seed {row['seed']}: {row['trainings']} trainings, "
              f"{row['model_steps']:,} model-steps, found lr "
              + ("-" if row["found_lr"] is None else f"{row['found_lr']:.4g}")
              + f", steps {row['found_steps'] if row['found_steps'] is not None else '-'}"
              + f" ({'good' if row['good'] else 'not good'}; {row.get('wall_seconds', 0):.0f} s)", flush=True)

    with cli.resumable("search_compare", workdir) as stop:
        valley = comparison.run_valley(setup, stop)
        s_star = comparison.best_steps(valley)
        if s_star is None:
            cli.fail("no valley rate reached --target_accuracy within --max_steps: there is no reference")
        valley_best = results.valley_summary(valley)["best"]
        print(f"valley: S* = {s_star} steps at learning rate {valley_best['learning_rate']:.4g}; good: <= "
              f"{comparison.GOOD_FACTOR * s_star:g} steps", flush=True)
        rows = comparison.run_all(setup, methods, FLAGS.method_seeds, valley, s_star, stop, on_row)
    table = comparison.summary_table(rows)
    summary = {
        **results.run_header("search_compare"),
        "flags": cli.flag_values(),
        "optimizer": optimizer, "model": FLAGS.model, "dataset": dataset.name,
        "steps_to_target_resolution": FLAGS.eval_every,
        "good_factor": comparison.GOOD_FACTOR, "s_star": s_star, "valley_best": valley_best,
        "valley": [{k: r[k] for k in ("learning_rate", "status", "steps_to_target", "steps_trained")} for r in valley],
        "rows": rows, "table": table,
    }
    paths = cli.save_outputs(workdir, summary, "search_compare.png", lambda path: plots.search_compare(
        rows, path, good_factor=comparison.GOOD_FACTOR,
        title=f"Finding a learning rate within {comparison.GOOD_FACTOR:g} x S* (S* = {s_star} steps): "
              f"{optimizer}, {FLAGS.model}, {dataset.name}, target {FLAGS.target_accuracy:g}"), start)
    print(comparison.format_rows(rows))
    print(comparison.format_summary(table, s_star, valley_best["learning_rate"], FLAGS.eval_every))
    cli.print_saved(paths, start)


if __name__ == "__main__":
    app.run(main)
