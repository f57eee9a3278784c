"""Optimizers compared at their best learning rates: the target metric on a fixed test subset over
steps and over training seconds, and how steadily each learns.

Each optimizer trains as its own one-member population at its rate (the best of an lr_valley run,
`rates_from_valley`, or one given), by default for the whole step budget so the curves run the same
length. Every evaluation it is also evaluated on a fixed subset of the task's test set, timed apart
from training (a segment hook: the values join the checkpointed curves, so a resumed run's curve is
whole).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lrlab.engine import config, devices, loop, population, segment
from lrlab.engine.stop import StopSignal
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.optim.members import Members
from lrlab.store import plots, ranking
from lrlab.store import records as records_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task import sampling
from lrlab.task import task as task_lib
from lrlab.task.target import Target
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import api_identity, run_sweep

EXPERIMENT = "optimizer_comparison"


def rates_from_valley(members: Sequence[dict[str, Any]], names: Iterable[str], path: str = ""
                      ) -> tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, str]]:
    """Each optimizer's best rate in an lr_valley run's records (`ranking.best_member`), where it
    came from, and the optimizers skipped (no rate reached the target) with why."""
    best = ranking.best_rates(members, names)
    skipped = {n: "no learning rate reached the target in the valley" for n, m in best.items() if m is None}
    chosen = {n: m for n, m in best.items() if m is not None}
    sources = {n: {"from": "valley", "path": path, "steps_to_target": m["steps_to_target"],
                   "seconds_to_target": m["seconds_to_target"]} for n, m in chosen.items()}
    return {n: m["learning_rate"] for n, m in chosen.items()}, sources, skipped


def first_at_target(values: list[float], target: Target) -> int | None:
    """Index of the first evaluation that meets the target (lr_valley's rule), or None."""
    return next((i for i, v in enumerate(values) if v is not None and target.reached(v)), None)


def drops(scores: Iterable[float], threshold: float) -> tuple[int, float]:
    """Instability of a curve of scores (higher is better): how many evaluations fell more than
    `threshold` (absolute) below the best seen before them, and the largest such drop (0.0 when none)."""
    best, count, largest = -math.inf, 0, 0.0
    for score in scores:
        drop = best - score
        if drop > threshold:
            count, largest = count + 1, max(largest, drop)
        best = max(best, score)
    return count, largest


def comparison_entry(record: dict[str, Any], lr_source: dict[str, Any], target: Target, target_key: str,
                     drop_threshold: float, batch_size: int) -> dict[str, Any]:
    """optimizer_comparison's result for one optimizer, from its member record (whose curve holds
    test_<metric>): steps and seconds to target, the test curve, final metrics, instability."""
    curve = record["curve"]
    metric = target.metric
    at = first_at_target(curve[target_key], target)
    test_values = curve.get(f"test_{metric}", [])
    n_drops, largest = drops([target.score(v) for v in test_values], drop_threshold)
    if record["status"] == "diverged":
        status = "diverged"  # even after reaching the target: its steps to target are kept
    elif at is None and record["status"] == "retired":
        status = "retired"  # at chance, or out of pace for the target: stopped before the budget
    else:
        status = "reached" if at is not None else "exhausted"
    return {
        "learning_rate": record["learning_rate"],
        "lr_source": lr_source,
        "hyperparameters": record["hyperparameters"],
        "status": status,
        "steps_to_target": None if at is None else curve["step"][at],
        "examples_to_target": None if at is None else curve["step"][at] * batch_size,
        "seconds_to_target": None if at is None else curve["seconds"][at],
        "steps_trained": record["steps_trained"],
        f"final_{target_key}": record[f"final_{target_key}"],
        f"final_test_{metric}": record.get(f"final_test_{metric}"),
        f"final_test_subset_{metric}": test_values[-1] if test_values else None,
        "instability": {"drops": n_drops, "largest_drop": largest, "threshold": drop_threshold},
        "test_curve": {"step": curve["step"][:len(test_values)], "seconds": curve["seconds"][:len(test_values)],
                       f"test_{metric}": test_values},
        "train_curve": {k: curve[k] for k in ("step", target_key, "loss", "seconds")},
    }


def comparison_table(entries: dict[str, dict[str, Any]], target: Mapping[str, Any]) -> str:
    """optimizer_comparison's printed table: one row per optimizer (`target`: results.json's)."""
    goal = f"{target['goal'] * 100:g}%" if target["metric"] == "accuracy" else f"{target['goal']:g}"
    final = f"final test {target['metric']}"
    lines = [f"{'optimizer':<9}  {'lr':>9}  {'from':<6}  {'status':<9}  {'steps to ' + goal:>12}  "
             f"{'seconds to ' + goal:>14}  {final:>14}  {'drops':>5}  {'largest drop':>12}"]
    for name, e in entries.items():
        lines.append(f"{name:<9}  {e['learning_rate']:>9.4g}  {e['lr_source']['from']:<6}  {e['status']:<9}  "
                     f"{records_lib.cell(e['steps_to_target'], 12, 'd')}  "
                     f"{records_lib.cell(e['seconds_to_target'], 14, '.1f')}  "
                     f"{records_lib.cell(e.get('final_test_' + target['metric']), max(14, len(final)), '.4f')}  "
                     f"{e['instability']['drops']:>5d}  {e['instability']['largest_drop']:>12.4f}")
    return "\n".join(lines)


class TestCurves(loop.SegmentCallback):
    """Each population's metrics on a fixed test subset after every segment, timed apart from
    training; the loop stores them in the curves (`test_<metric>`)."""

    name = "test_curve"

    def __init__(self, cfg: config.EngineConfig, arrays: Mapping[str, np.ndarray]):
        eval_cfg = dataclasses.replace(cfg, eval_chunk=min(250, task_lib.num_examples(arrays)))
        arrays_E, weight_E = population.pad_to_chunks(arrays, eval_cfg.eval_chunk)
        evaluate = jax.jit(segment.make_metrics_fn(eval_cfg))
        self.seconds = 0.0

        def fn(sub: population.Population, entries: np.ndarray, pos: np.ndarray, step: int) -> dict[str, np.ndarray]:
            start = time.perf_counter()
            variables_K = jax.tree_util.tree_map(lambda x: x[entries], devices.to_host(population.eval_variables(cfg, sub)))
            metrics = evaluate(variables_K, arrays_E, weight_E)
            self.seconds += time.perf_counter() - start
            return {f"test_{m}": np.asarray(v) for m, v in metrics.items()}

        super().__init__(fn)


class ComparisonRun(StudyResult):
    """An optimizer_comparison run's results (its results.json as `summary`): one entry per optimizer."""

    FIGURE = "curves.png"

    def report(self) -> str:
        s = self.summary
        lines = [comparison_table(s["optimizers"], s["target"])]
        for name, t in s["timing"].items():
            lines.append(f"{name}: compile {t['compile_seconds']:.1f} s, training {t['train_seconds']:.1f} s, "
                         f"test curve {t['test_curve_seconds']:.1f} s")
        lines.append(f"final test {s['target']['metric']}: the full test set; drops: evaluations more than "
                     f"{s['drop_threshold']:g} below the best test {s['target']['metric']} before them")
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.optimizer_curves(s["optimizers"], path, target=s["target"],
                               title=f"Optimizers at their best learning rates: {s['model']['name']} on "
                                     f"{s['dataset']}, test {s['target']['metric']} on {s['test_examples']} test "
                                     "examples")


def optimizer_comparison(task: Task, rates: Mapping[str, float], settings: SweepSettings = SweepSettings(),
                         workdir: Any = None, *, sources: Mapping[str, dict[str, Any]] | None = None,
                         overrides: Mapping[str, Mapping[str, float]] | None = None, test_examples: int = 2000,
                         drop_threshold: float = 0.01, skipped: Mapping[str, str] | None = None,
                         stop: StopSignal | None = None, overwrite: bool = False,
                         info: Mapping[str, Any] | None = None) -> ComparisonRun:
    """Each optimizer (name or MODULE:NAME -> rate) as a one-member population at its rate, with a
    test-subset curve; `settings.stop_at_target` False (the command's default) trains the whole
    budget. As `python -m lrlab.experiments.optimizer_comparison` runs it."""
    if task.test is None:
        raise ValueError(f"task {task.name} has no test set to draw the curves on")
    populations = [Members(optimizers.get(name), members_lib.population_hparams(
        name, [lr], (overrides or {}).get(name)), optimizers.get(name).name) for name, lr in rates.items()]
    test_idx = sampling.eval_subset_indices(task_lib.num_examples(task.test), test_examples, settings.seed)
    test_subset = task_lib.take(task.test, test_idx)

    def train(scope: Scope) -> Trained:
        curves: dict[str, TestCurves] = {}

        def make_hooks(members: Members, cfg: config.EngineConfig) -> list[loop.Hook]:
            curves[members.name] = TestCurves(cfg, test_subset)
            return [curves[members.name]]

        records, stats = run_sweep(task, populations, settings, scope=scope, stop=stop, make_hooks=make_hooks)
        for name in stats:
            stats[name]["test_curve_seconds"] = curves[name].seconds if name in curves else 0.0
        chosen = {m.name: lr for m, lr in zip(populations, rates.values())}
        entries = {r["optimizer"]: comparison_entry(r, (sources or {}).get(r["optimizer"], {"from": "lrs"}),
                                                    task.target, task.target_key, drop_threshold,
                                                    settings.batch_size) for r in records}
        for name, entry in entries.items():
            entry["learning_rate"] = chosen[name]  # as chosen; "hyperparameters" holds it as trained (float32)
        return Trained({"test_examples": len(test_idx), "drop_threshold": drop_threshold, "timing": stats,
                        "skipped": dict(skipped or {}), "optimizers": entries}, members=records)

    return run(EXPERIMENT, ComparisonRun, identity=api_identity(task, populations, settings,
                                                                test_examples=test_examples),
               task=task, settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
