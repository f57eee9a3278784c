"""lr_free: do you need to tune at all? On one task, the tuned valleys of Adam and SGD with momentum
beside every learning-rate-free method (`optim/lr_free.py`) at its default and over a sweep of its
multiplier, all as populations of one run.

    result = lrlab.lr_free(task, lrlab.SweepSettings(seeds=3), workdir="runs/lr_free")
    print(result.report())

Per method the table gives the steps to target at its default (multiplier 1), the best over its
sweep, both as a ratio to the tuned best (AlgoPerf's time-to-target ratio: the fewest steps of any
tuned valley, per seed), and the width in decades of the band of rates (or multipliers) that reached
the target: the unbroken run of them around the best (`ranking.unbroken_band`). A method passes at
its default when it reaches the target within `PASS_RATIO` of the tuned best on every seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.engine.stop import StopSignal
from lrlab.optim import lr_free as lr_free_lib
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.store import plots, ranking
from lrlab.store import records as records_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import api_identity, run_sweep

EXPERIMENT = "lr_free"
TUNED = ("adam", "momentum")  # the tuned baselines: their valleys over LEARNING_RATES
METHODS = tuple(lr_free_lib.METHODS)
LEARNING_RATES = np.geomspace(1e-6, 100.0, 48)  # the study's grid
MULTIPLIERS = 10.0 ** np.arange(-3.0, 3.01, 0.5)  # 1e-3 to 1e3, half a decade apart; 1.0 exactly among them
PASS_RATIO = 1.5  # a default within this factor of the tuned best's steps, on every seed, passes


def _steps(record: Mapping[str, Any] | None) -> int | None:
    return None if record is None or record["status"] != "reached" else int(record["steps_to_target"])


def method_rows(records: Sequence[Mapping[str, Any]], tuned: Sequence[str], methods: Sequence[str]
                ) -> list[dict[str, Any]]:
    """One row per tuned optimizer and method: per seed its default's and its best steps, each
    over the tuned best of that seed, and its band's width in decades; then the verdict."""
    seeds = sorted({int(r.get("seed", 0)) for r in records})

    def of(name: str, seed: int) -> list[Mapping[str, Any]]:
        return [r for r in records if r["optimizer"] == name and int(r.get("seed", 0)) == seed]

    tuned_best = {}
    for seed in seeds:
        found = [_steps(ranking.best_member(of(name, seed))) for name in tuned]
        found = [s for s in found if s is not None]
        tuned_best[seed] = min(found) if found else None
    rows = []
    for name in [*tuned, *methods]:
        per_seed = []
        for seed in seeds:
            recs = of(name, seed)
            best = ranking.best_member(recs)
            default = (next((r for r in recs if math.isclose(r["learning_rate"], 1.0)), None)
                       if name in methods else None)
            band = ranking.unbroken_band(recs)
            reference = tuned_best[seed]
            default_steps, best_steps = _steps(default), _steps(best)
            per_seed.append({
                "seed": seed, "default_steps": default_steps, "best_steps": best_steps,
                "best_rate": None if best is None else best["learning_rate"],
                "default_ratio": None if default_steps is None or not reference else default_steps / reference,
                "best_ratio": None if best_steps is None or not reference else best_steps / reference,
                "band": None if band is None else list(band),
                "band_decades": None if band is None else math.log10(band[1] / band[0]),
            })
        kind = "tuned" if name in tuned else lr_free_lib.METHODS[name].kind if name in lr_free_lib.METHODS else "lr_free"
        passes = name in methods and all(s["default_ratio"] is not None and s["default_ratio"] <= PASS_RATIO
                                         for s in per_seed)
        rows.append({"optimizer": name, "kind": kind, "seeds": per_seed, "passes_at_default": passes,
                     **{f"median_{k}": _median([s[k] for s in per_seed])
                        for k in ("default_steps", "best_steps", "default_ratio", "best_ratio", "band_decades")}})
    return rows


def _median(values: list[float | None]) -> float | None:
    """The median over seeds; None when any seed missed (a miss is no number of steps)."""
    return None if not values or any(v is None for v in values) else statistics.median(values)


def table(rows: Sequence[Mapping[str, Any]], tuned_best: Any = None) -> str:
    """The printed table: per method (medians over seeds) its default, its best, the ratios to the
    tuned best, the band's width, and the verdict."""
    def cell(value: float | None, fmt: str) -> str:
        return "missed" if value is None else format(value, fmt)

    lines = [f"{'optimizer':<20} {'kind':<13} {'default steps':>13} {'/ tuned':>8} {'best steps':>10} "
             f"{'/ tuned':>8} {'band (decades)':>14}  at default"]
    for r in rows:
        tuned = r["kind"] == "tuned"
        verdict = "" if tuned else (f"within {PASS_RATIO:g}x on every seed" if r["passes_at_default"] else "fails")
        lines.append(f"{r['optimizer']:<20} {r['kind']:<13} {'-' if tuned else cell(r['median_default_steps'], 'g'):>13} "
                     f"{'-' if tuned else cell(r['median_default_ratio'], '.2f'):>8} "
                     f"{cell(r['median_best_steps'], 'g'):>10} {cell(r['median_best_ratio'], '.2f'):>8} "
                     f"{cell(r['median_band_decades'], '.1f'):>14}  {verdict}")
    lines.append("steps: medians over seeds (missed: some seed did not reach the target); / tuned: over the fewest "
                 "steps of any tuned valley of the same seed; band: the unbroken run of rates "
                 "(multipliers) around the best that reached the target")
    return "\n".join(lines)


class LRFreeResult(StudyResult):
    """An lr_free run's results: the per-method rows, the printed table and the figures."""

    FIGURE = "lr_free.png"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.summary["methods"]

    def report(self) -> str:
        lines = [table(self.rows)]
        passed = [r["optimizer"] for r in self.rows if r["passes_at_default"]]
        lines.append(f"at their defaults, within {PASS_RATIO:g}x of the tuned best on every seed: "
                     + (", ".join(passed) if passed else "none"))
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        """The valleys overlaid, each against its rate over its reference (an LR-free method's default,
        multiplier 1; a tuned optimizer's best rate)."""
        s = self.summary
        references = {r["optimizer"]: (1.0, False) if r["kind"] != "tuned" else (r["seeds"][0]["best_rate"] or 1.0, True)
                      for r in self.rows}
        plots.relative_valleys(s["members"], references, path, budget_steps=s["max_steps"],
                               title=f"Tuned valleys and LR-free methods: {s['model']['name']} on {s['dataset']}, "
                                     f"target {records_lib.target_text(s)}")

    def plot_profile(self, path: Any) -> None:
        """The AlgoPerf-style performance profile of this task's defaults (`performance_profile`
        draws it across several tasks)."""
        plots.performance_profile({self.summary["dataset"]: profile_ratios(self.rows)}, path,
                                  title="Performance profile at the defaults (tuned: at their best rates)")

    def figures(self) -> dict[str, Any]:
        return {**super().figures(), "profile.png": self.plot_profile}


def profile_ratios(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Per optimizer its time-to-target ratio on one task, as AlgoPerf's profile reads it: a method's
    default (a tuned optimizer's best) over the fewest of them all; None where it missed."""
    steps = {r["optimizer"]: r["median_best_steps"] if r["kind"] == "tuned" else r["median_default_steps"]
             for r in rows}
    fewest = min((s for s in steps.values() if s is not None), default=None)
    return {name: None if s is None or not fewest else s / fewest for name, s in steps.items()}


def lr_free(task: Task, settings: SweepSettings = SweepSettings(), workdir: Any = None, *,
            tuned: Sequence[str] = TUNED, methods: Sequence[str] = METHODS,
            learning_rates: Sequence[float] = LEARNING_RATES, multipliers: Sequence[float] = MULTIPLIERS,
            stop: StopSignal | None = None, overwrite: bool = False, info: Mapping[str, Any] | None = None
            ) -> LRFreeResult:
    """Trains the tuned valleys (`tuned` over `learning_rates`) and every method of `methods` over
    `multipliers` (1.0 added if absent: its default) on `task`, each a population, with the settings'
    seeds, retirement and budget; returns the rows and figures (`python -m lrlab.experiments.lr_free`)."""
    multipliers = np.unique(np.append(np.asarray(multipliers, np.float64), 1.0))
    for name in methods:
        if not optimizers.get(name).lr_free:
            raise ValueError(f"{name} is not a learning-rate-free method: choose from {', '.join(METHODS)}")
    populations = ([members_lib.grid(name, learning_rate=learning_rates) for name in tuned]
                   + [members_lib.grid(name, learning_rate=multipliers) for name in methods])

    def train(scope: Scope) -> Trained:
        records, stats = run_sweep(task, populations, settings, scope=scope, stop=stop)
        rows = method_rows(records, tuned, methods)
        return Trained({"timing": stats, "methods": rows, "tuned": list(tuned), "lr_free_methods": list(methods),
                        "members": records}, members=records, orbax=records_lib.orbax_tree(records))

    return run(EXPERIMENT, LRFreeResult, identity=api_identity(task, populations, settings), task=task,
               settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
