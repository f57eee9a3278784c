"""lr_finder: the learning-rate range test (`training.range_test`) of each optimizer, its rules'
suggestions (on the seeds' mean curve, and their spread across seeds), the confirmation of the
suggestions by training (`training.confirm`), and how far each is from a valley's best rate.

    python -m lrlab.experiments.lr_finder --optimizer=adam,sgd --confirm=6
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from lrlab.engine.stop import StopSignal
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store import plots, ranking
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training import confirm as confirm_lib
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
    lines.append("* the headline rule. valley: fastai's default; slide: fastai's interval slide; minimum: a tenth "
                 "of the rate at the lowest smoothed loss; steep: fastest fall of the smoothed loss against log(rate)")
    ratio = lambda v: "-" if v is None else f"{v:.2g}x"  # noqa: E731
    spreads = [f"{rec['optimizer']}: " + ", ".join(f"{r} {ratio(rec['spread'][r])}" for r in RULES)
               for rec in records if rec.get("spread")]
    if spreads:
        lines.append("spread across seeds (highest / lowest suggestion): " + "; ".join(spreads))
    return "\n".join(lines)


def valley_cost(members: list[dict[str, Any]], optimizer: str) -> int:
    """The model-steps a valley grid spent on `optimizer`: every member's steps trained."""
    return int(sum(m.get("steps_trained") or 0 for m in members if m["optimizer"] == optimizer))


def confirmation_text(name: str, confirmed: dict[str, Any], ramp_steps: int, grid_steps: int | None,
                      grid_best: int | None) -> str:
    """One line per optimizer: the confirmed rate, its steps, and the cost beside the valley grid's."""
    best = confirmed["best"]
    found = ("no candidate reached the target" if best is None else
             f"confirmed {best['learning_rate']:.4g} (target in {best['steps_to_target']} steps"
             + (f", {best['steps_to_target'] / grid_best:.2g}x the grid's best)" if grid_best else ")"))
    total = ramp_steps + confirmed["model_steps"]
    cost = f"{ramp_steps:,} ramp + {confirmed['model_steps']:,} confirmation = {total:,} model-steps"
    if grid_steps:
        cost += f", {total / grid_steps:.1%} of the valley grid's {grid_steps:,}"
    return f"{name}: {found} of {len(confirmed['candidates'])} candidates " \
           f"({', '.join(format(r, '.3g') for r in confirmed['candidates'])}); {cost}"


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
    low, high = ranking.reached_band(reached)
    out: dict[str, Any] = {"best": [min(best), max(best)], "best_steps": fewest, "band": [low, high],
                           "grid_model_steps": valley_cost(members, optimizer)}
    for rule, pick in suggestions.items():
        if pick is None:
            out[rule] = None
            continue
        lr = pick["learning_rate"]
        factor = lr / max(best) if lr > max(best) else lr / min(best) if lr < min(best) else 1.0
        out[rule] = {"factor": factor, "in_band": low <= lr <= high}
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
    "valley": "fastai's valley: about halfway down the longest decreasing stretch",
    "slide": "fastai's slide: from the end, the first rate whose loss slope is within 0.005 of the slope 15 "
             "points to its right",
    "minimum": "the rate at the lowest smoothed loss, divided by 10",
    "steep": "the most negative slope of the smoothed loss against log(rate), before its minimum",
    "confirm": f"the suggestions snapped to a log grid of {confirm_lib.GRID_PER_DECADE} points a decade, and their "
               "neighbours, trained to the target as one population; the fastest is the found rate",
}


def summarize(tests: dict[str, FinderResult], valley_members: list[dict[str, Any]] | None = None,
              confirmed: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """results.json's body for range tests (optimizer -> FinderResult): the headline suggestion per
    optimizer (the confirmed rate where a confirmation ran), the rules, the confirmation, the
    comparison with an lr_valley sweep's records (if given), timing, and every test's curves."""
    confirmed = confirmed or {}
    suggested, suggested_by = {}, {}
    for name, t in tests.items():
        best = (confirmed.get(name) or {}).get("best")
        suggested[name], suggested_by[name] = ((best["learning_rate"], "confirm") if best is not None
                                               else (t.suggested_lr, t.suggested_rule))
    return {
        "headline_rule": HEADLINE,
        "suggested": suggested,
        "suggested_by": suggested_by,
        "confirmed": {name: {k: v for k, v in c.items() if k != "members"} for name, c in confirmed.items()},
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
    for name, confirmed in (summary.get("confirmed") or {}).items():
        versus = (summary.get("versus_valley") or {}).get(name) or {}
        text += "\n" + confirmation_text(name, confirmed, summary["timing"][name]["model_steps"],
                                         versus.get("grid_model_steps"), versus.get("best_steps"))
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
            by = (self.summary.get("suggested_by") or {}).get(name, self.summary["headline_rule"])
            how = "confirmed by training" if by == "confirm" else f"{by} rule"
            lines.append(f"{name}: suggested learning rate {shown} "
                         f"({how}); range test {timing['model_steps']} model-steps, compile "
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
              confirm: int = confirm_lib.CANDIDATES, valley_members: list[dict[str, Any]] | None = None,
              stop: StopSignal | None = None,
              overwrite: bool = False, info: Mapping[str, Any] | None = None) -> FinderRun:
    """The range test of each optimizer on `task`, as `python -m lrlab.experiments.lr_finder` runs
    it; `overrides` (per optimizer name) sets their other hyperparameters. `confirm` > 0 then trains
    that many candidates around the rules' suggestions to the target (`training.confirm`, under
    `settings`' budget and retirement) and reports the fastest. `valley_members` (an lr_valley run's
    records) adds how far each suggestion is from the valley's best rate, and the grid's cost."""
    opts = [optimizers.get(o) for o in optimizer_specs]
    if confirm < 0:
        raise ValueError(f"confirm: a number of candidates (0: none), got {confirm}")
    ramp = {"lr_min": lr_min, "lr_max": lr_max, "num_steps": num_steps, "num_seeds": num_seeds, "confirm": confirm}
    identity = {"task": task.identity(), "optimizers": [o.name for o in opts], "overrides": overrides or {},
                "settings": settings.to_json(), **ramp}

    def train(scope: Scope) -> Trained:
        tests, confirmed = {}, {}
        for o in opts:
            given = (overrides or {}).get(o.name)
            tests[o.name] = test = lr_range_test(task, o, lr_min, lr_max, num_steps, num_seeds, settings,
                                                 overrides=given, scope=scope.child(o.name), stop=stop)
            if confirm:
                suggested = [test.suggestions[r]["learning_rate"] for r in confirm_lib.ORDER
                             if test.suggestions[r] is not None]
                if not suggested:
                    logging.warning("%s: no rule suggested a rate (the curve is too short): nothing to confirm", o.name)
                    continue
                rates = confirm_lib.candidates(suggested, confirm)
                confirmed[o.name] = confirm_lib.confirm(task, o, rates, settings, overrides=given,
                                                        scope=scope.child(f"{o.name}-confirm"), stop=stop)
        members = [m for c in confirmed.values() for m in c["members"]]
        return Trained({**ramp, **summarize(tests, valley_members, confirmed), "members": members}, members=members)

    return run(EXPERIMENT, FinderRun, identity=identity, task=task, settings=settings, train=train, workdir=workdir,
               overwrite=overwrite, info=info)
