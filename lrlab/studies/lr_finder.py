"""lr_finder: the learning-rate range test (`training.range_test`) of each optimizer, its rules'
suggestions, and how far they are from a valley's best rate.

    python -m lrlab.experiments.lr_finder --optimizer=adam,sgd
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.engine.stop import StopSignal
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store import plots
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.range_test import (
    BETA,
    DIVERGE_FACTOR,
    HEADLINE,
    LR_MAX,
    LR_MIN,
    NUM_SEEDS,
    NUM_STEPS,
    RULES,
    FinderResult,
    lr_range_test,
)
from lrlab.training.settings import SweepSettings


def suggestions_table(records: list[dict[str, Any]], headline: str = HEADLINE) -> str:
    """Printed table of range tests (FinderResult.to_json records): per optimizer each rule's
    suggested rate (the headline rule starred), the steps run and where the loss diverged."""
    lines = [f"{'optimizer':<9}  " + "  ".join(f"{r + (' *' if r == headline else ''):>10}" for r in RULES)
             + f"  {'steps':>5}  {'model-steps':>11}  {'lowest loss at lr':>17}  ended"]
    for rec in records:
        cells = [f"{'-' if s is None else format(s['learning_rate'], '.4g'):>10}"
                 for s in (rec["suggestions"][r] for r in RULES)]
        smoothed = np.array([np.nan if v is None else v for v in rec["smoothed_S"]], np.float64)
        low = (f"{np.nanmin(smoothed):.3f} at {rec['lr_S'][int(np.nanargmin(smoothed))]:.3g}"
               if np.isfinite(smoothed).any() else "-")
        ended = (f"diverged at lr {rec['lr_S'][rec['diverged_at']]:.3g}" if rec["diverged_at"] is not None
                 else f"ramp end (lr {rec['lr_max']:.3g})")
        if rec["stopped_early"]:
            ended += ", every seed diverged: stopped"
        lines.append(f"{rec['optimizer']:<9}  " + "  ".join(cells) + f"  {rec['steps_run']:>5d}  "
                     f"{rec['model_steps']:>11d}  {low:>17}  {ended}")
    lines.append("* the headline rule. steep: fastest fall of the smoothed loss against log(rate); minimum: a "
                 "tenth of the rate at the lowest smoothed loss; valley: fastai's default")
    return "\n".join(lines)


def versus_valley(suggestions: dict[str, dict[str, float | int] | None], members: list[dict[str, Any]],
                  optimizer: str) -> dict[str, Any] | None:
    """How far each rule's suggestion is from an lr_valley sweep's best (members: its records).

    best: the rates tied at the fewest steps to target (lowest, highest); band: the rates that reached
    the target. Per rule: factor = suggestion / the nearest best rate (1 inside the best range, > 1
    above it), and whether it lies inside the band. None when no rate of `optimizer` reached the target.
    """
    reached = [m for m in members if m["optimizer"] == optimizer and m["status"] == "reached"]
    if not reached:
        return None
    fewest = min(m["steps_to_target"] for m in reached)
    best = [m["learning_rate"] for m in reached if m["steps_to_target"] == fewest]
    lrs = [m["learning_rate"] for m in reached]
    out: dict[str, Any] = {"best": [min(best), max(best)], "best_steps": fewest, "band": [min(lrs), max(lrs)]}
    for rule, pick in suggestions.items():
        if pick is None:
            out[rule] = None
            continue
        lr = pick["learning_rate"]
        factor = lr / max(best) if lr > max(best) else lr / min(best) if lr < min(best) else 1.0
        out[rule] = {"factor": factor, "in_band": min(lrs) <= lr <= max(lrs)}
    return out


def versus_valley_table(comparisons: dict[str, dict[str, Any] | None]) -> str:
    """Printed comparison with the valley: per optimizer its best rates and each rule's factor off them."""
    cell = lambda v: "-" if v is None else f"x{v['factor']:.2g} ({'in' if v['in_band'] else 'out'})"  # noqa: E731
    lines = [f"{'optimizer':<9}  {'valley best':>17}  {'steps':>5}  {'band that reached':>17}  "
             + "  ".join(f"{r:>14}" for r in RULES)]
    for name, c in comparisons.items():
        if c is None:
            lines.append(f"{name:<9}  no rate reached the target in the valley")
            continue
        lines.append(f"{name:<9}  {c['best'][0]:>8.3g}-{c['best'][1]:<8.3g}  {c['best_steps']:>5d}  "
                     f"{c['band'][0]:>8.3g}-{c['band'][1]:<8.3g}  " + "  ".join(f"{cell(c[r]):>14}" for r in RULES))
    lines.append("x: the suggestion over the nearest best rate (1: among the best); in/out: inside the band of "
                 "rates that reached the target")
    return "\n".join(lines)


RULE_TEXT = {
    "smoothing": f"exponential moving average (beta {BETA}, bias-corrected) of the loss averaged over seeds",
    "trim": f"the first num_steps // 10 and the last 5 points left out; the curve cut where the smoothed loss "
            f"exceeds {DIVERGE_FACTOR:g}x its minimum",
    "steep": "the most negative slope of the smoothed loss against log(rate), before its minimum",
    "minimum": "the rate at the lowest smoothed loss, divided by 10",
    "valley": "fastai's valley: about halfway down the longest decreasing stretch",
}


def summarize(tests: dict[str, FinderResult], valley_members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """results.json's body for range tests (optimizer -> FinderResult): the headline suggestion per
    optimizer, the rules, the comparison with an lr_valley sweep's records (if given), timing, and
    every test's curves."""
    return {
        "headline_rule": HEADLINE,
        "suggested": {name: t.suggested_lr for name, t in tests.items()},
        "rules": RULE_TEXT,
        "versus_valley": None if valley_members is None else
        {name: versus_valley(t.suggestions, valley_members, name) for name, t in tests.items()},
        "timing": {name: {"compile_seconds": t.compile_seconds, "train_seconds": t.train_seconds,
                          "model_steps": t.model_steps} for name, t in tests.items()},
        "tests": {name: t.to_json() for name, t in tests.items()},
    }


def summary_text(summary: dict[str, Any]) -> str:
    """What the experiment prints (and reprints from results.json): the suggestions, then the
    comparison with the valley when there is one."""
    text = suggestions_table(list(summary["tests"].values()), summary["headline_rule"])
    if summary.get("versus_valley"):
        text += "\n" + versus_valley_table(summary["versus_valley"])
    return text


EXPERIMENT = "lr_finder"


class FinderRun(StudyResult):
    """An lr_finder run's results (its results.json as `summary`): the suggestions, the comparison
    with a valley, the printed report and the figure."""

    FIGURE = "lr_finder.png"

    def suggested(self, optimizer: str) -> float | None:
        """The headline rule's rate for `optimizer` (None when its curve was too short)."""
        return self.summary["suggested"][optimizer]

    def report(self) -> str:
        lines = [summary_text(self.summary)]
        for name, _test in self.summary["tests"].items():
            rate = self.summary["suggested"][name]
            timing = self.summary["timing"][name]
            shown = "none (curve too short)" if rate is None else f"{rate:.4g}"
            lines.append(f"{name}: suggested learning rate {shown} "
                         f"({self.summary['headline_rule']} rule); {timing['model_steps']} model-steps, compile "
                         f"{timing['compile_seconds']:.1f} s, training {timing['train_seconds']:.1f} s")
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        s = self.summary
        known_best = {n: tuple(c["best"]) for n, c in (s["versus_valley"] or {}).items() if c}
        plots.lr_range_test(list(s["tests"].values()), path, known_best=known_best,
                            title=f"LR range test: {s['model']['name']} on {s['dataset']}, batch "
                                  f"{s['settings']['batch_size']}, {s['num_seeds']} seeds")


def lr_finder(task: Task, optimizer_specs: Sequence[str | Optimizer], settings: SweepSettings = SweepSettings(),
              workdir: Any = None, *, lr_min: float = LR_MIN, lr_max: float = LR_MAX, num_steps: int = NUM_STEPS,
              num_seeds: int = NUM_SEEDS, overrides: Mapping[str, Mapping[str, float]] | None = None,
              valley_members: list[dict[str, Any]] | None = None, stop: StopSignal | None = None,
              overwrite: bool = False, info: Mapping[str, Any] | None = None) -> FinderRun:
    """The range test of each optimizer on `task`, as `python -m lrlab.experiments.lr_finder` runs
    it; `overrides` (per optimizer name) sets their other hyperparameters, `valley_members` (an
    lr_valley run's records) adds how far each suggestion is from the valley's best rate."""
    opts = [optimizers.get(o) for o in optimizer_specs]
    ramp = {"lr_min": lr_min, "lr_max": lr_max, "num_steps": num_steps, "num_seeds": num_seeds}
    identity = {"task": task.identity(), "optimizers": [o.name for o in opts], "overrides": overrides or {},
                "settings": settings.to_json(), **ramp}

    def train(scope: Scope) -> Trained:
        tests = {o.name: lr_range_test(task, o, lr_min, lr_max, num_steps, num_seeds, settings,
                                       overrides=(overrides or {}).get(o.name), scope=scope.child(o.name), stop=stop)
                 for o in opts}
        return Trained({**ramp, **summarize(tests, valley_members)})

    return run(EXPERIMENT, FinderRun, identity=identity, task=task, settings=settings, train=train, workdir=workdir,
               overwrite=overwrite, info=info)
