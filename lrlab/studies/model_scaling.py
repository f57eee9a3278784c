"""model_scaling: time to target against parameter count, and the best rate per width.

The analysis is pure functions of plain records (numpy only), so its numbers can be tested and
recomputed from a results.json.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.store import plots
from lrlab.store import records as records_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import run_sweep

# The study's sweep: width multipliers 1 to 9.75 in steps of 0.25, Adam at five rates.
STUDY_WIDTHS = tuple(1.0 + 0.25 * i for i in range(36))
STUDY_LRS = (1e-4, 0.001, 0.00146, 0.01, 0.1)
MIN_FIT_POINTS = 3


def parse_widths(values: Iterable[str]) -> list[float]:
    """Width multipliers from their text, sorted; ValueError naming the problem.

    Each must be a positive finite number, there must be one at least, and no two may be equal
    as written by '{:g}' (which names their checkpoint folders).
    """
    values = [str(v).strip() for v in values if str(v).strip()]
    if not values:
        raise ValueError("give at least one width multiplier")
    widths = []
    for text in values:
        try:
            width = float(text)
        except ValueError:
            raise ValueError(f"width multipliers must be numbers, got {text!r}") from None
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width multipliers must be positive and finite, got {text}")
        widths.append(width)
    names = [f"{w:g}" for w in widths]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"width multiplier {', '.join(repeated)} given twice")
    return sorted(widths)


def linear_fit(n: Sequence[float], t: Sequence[float]) -> dict[str, Any]:
    """Least-squares fit t = c + k*n; returns {c, k, r2, points}.

    c, k and r2 are None with fewer than 3 points or fewer than 2 distinct n (k is then not
    determined). R^2 = 1 - SS_res/SS_tot; for constant t it is 1.0 when the fit is exact, else None.
    """
    n_P = np.asarray(n, np.float64)
    t_P = np.asarray(t, np.float64)
    if n_P.shape != t_P.shape or n_P.ndim != 1:
        raise ValueError(f"n and t must be 1-D and of one length, got shapes {n_P.shape} and {t_P.shape}")
    points = int(n_P.size)
    none = {"c": None, "k": None, "r2": None, "points": points}
    if points < MIN_FIT_POINTS or np.unique(n_P).size < 2:
        return none
    n_mean = n_P.mean()  # centred, so a few million weights do not ill-condition the fit
    design_P2 = np.stack([np.ones_like(n_P), n_P - n_mean], axis=1)
    (intercept, k), *_ = np.linalg.lstsq(design_P2, t_P, rcond=None)
    residual_P = t_P - (intercept + k * (n_P - n_mean))
    ss_res = float(np.sum(residual_P**2))
    ss_tot = float(np.sum((t_P - t_P.mean()) ** 2))
    if ss_tot > 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res <= 1e-12 * max(1.0, float(np.sum(t_P**2))) else None
    return {"c": float(intercept - k * n_mean), "k": float(k), "r2": r2, "points": points}


def rate_fits(members: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per learning rate (ascending): the fits of seconds and of steps to target against parameters,
    over the widths where that rate reached the target."""
    members = list(members)
    fits = []
    for lr in sorted({m["learning_rate"] for m in members}):
        reached = [m for m in members if m["learning_rate"] == lr and m["status"] == "reached"]
        params = [m["parameters"] for m in reached]
        fits.append({
            "learning_rate": lr,
            "seconds": linear_fit(params, [m["seconds_to_target"] for m in reached]),
            "steps": linear_fit(params, [m["steps_to_target"] for m in reached]),
        })
    return fits


def best_rate_per_width(members: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per width (ascending): its best rate (`ranking.best_member`: lrlab's one ranking rule).

    Records {width, parameters, learning_rate, steps_to_target}; the last two are None where no
    rate reached the target at that width.
    """
    from lrlab.store.ranking import best_member

    members = list(members)
    best = []
    for width in sorted({m["width"] for m in members}):
        rows = [m for m in members if m["width"] == width]
        winner = best_member(rows)
        best.append({
            "width": width,
            "parameters": rows[0]["parameters"],
            "learning_rate": winner["learning_rate"] if winner else None,
            "steps_to_target": winner["steps_to_target"] if winner else None,
        })
    return best


def transfer(best: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Does the best rate transfer across sizes? Distinct best rates, and whether one rate is
    best at every width (False if some width has no rate that reached the target)."""
    rates = sorted({b["learning_rate"] for b in best if b["learning_rate"] is not None})
    reached_everywhere = all(b["learning_rate"] is not None for b in best)
    return {
        "distinct_best_rates": len(rates),
        "best_rates": rates,
        "widths_without_a_best_rate": sum(b["learning_rate"] is None for b in best),
        "same_best_rate_at_every_width": bool(best) and reached_everywhere and len(rates) == 1,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(members: Sequence[dict[str, Any]], fits: Sequence[dict[str, Any]],
                  best: Sequence[dict[str, Any]], verdict: dict[str, Any], eval_every: int) -> str:
    """The printed table (width, parameters, steps to target per rate, best rate), the fits per
    rate and the transfer verdict."""
    lrs = sorted({m["learning_rate"] for m in members})
    steps = {(m["width"], m["learning_rate"]): m["steps_to_target"] for m in members}
    lines = [f"steps to target (resolution {eval_every} steps; '-': not reached)",
             f"{'width':>6}  {'parameters':>11}  " + "  ".join(f"{lr:>9.4g}" for lr in lrs) + f"  {'best lr':>9}"]
    for b in best:
        cells = "  ".join(f"{_fmt(steps.get((b['width'], lr)), 'd'):>9}" for lr in lrs)
        lines.append(f"{b['width']:>6g}  {b['parameters']:>11,}  {cells}  {_fmt(b['learning_rate'], '.4g'):>9}")
    lines.append("fits of time to target t = c + k*n against parameters n (over the widths that reached it):")
    for fit in fits:
        parts = []
        for unit in ("seconds", "steps"):
            f = fit[unit]
            if f["c"] is None:
                parts.append(f"{unit}: too few points ({f['points']})")
            else:
                parts.append(f"{unit}: c={f['c']:.4g} k={f['k']:.4g} per weight R^2={_fmt(f['r2'], '.3f')} "
                             f"({f['points']} points)")
        lines.append(f"  lr {fit['learning_rate']:<9.4g} " + "; ".join(parts))
    if not verdict["distinct_best_rates"]:
        lines.append("best rate: no rate reached the target at any width")
    elif verdict["same_best_rate_at_every_width"]:
        lines.append(f"best rate: {verdict['best_rates'][0]:.4g} at every width (it transfers)")
    else:
        lines.append(f"best rate: {verdict['distinct_best_rates']} distinct best rates across widths "
                     f"({', '.join(f'{r:.4g}' for r in verdict['best_rates'])})"
                     + (f"; {verdict['widths_without_a_best_rate']} widths with none reached"
                        if verdict["widths_without_a_best_rate"] else ""))
    return "\n".join(lines)


EXPERIMENT = "model_scaling"


class ScalingRun(StudyResult):
    """A model_scaling run's results (its results.json as `summary`): the fits, the best rate per
    width, the transfer verdict, the printed report and the figure."""

    FIGURE = "scaling.png"

    def report(self) -> str:
        s = self.summary
        return format_report(s["members"], s["fits"], s["best_rates"], s["transfer"], s["steps_to_target_resolution"])

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.scaling(s["members"], s["fits"], s["best_rates"], path,
                      title=f"Model scaling: {s['model']['name']} on {s['dataset']}, {s['optimizer']}, target "
                            f"{records_lib.target_text(s)}")


def model_scaling(width_tasks: Mapping[float, Task], members: Members, settings: SweepSettings = SweepSettings(),
                  workdir: Any = None, *, stop: StopSignal | None = None, overwrite: bool = False,
                  info: Mapping[str, Any] | None = None) -> ScalingRun:
    """One population of `members` per width (width -> its task, e.g. the same model at several
    widths), checkpointed per width; then the fits of time to target against parameters per rate,
    the best rate per width and whether it transfers. As `python -m lrlab.experiments.model_scaling`."""
    widths = sorted(width_tasks)
    identity = {"widths": {f"{w:g}": width_tasks[w].identity() for w in widths},
                "population": {members.name: members.to_json()}, "settings": settings.to_json()}
    params = {w: width_tasks[w].count_parameters() for w in widths}

    def train(scope: Scope) -> Trained:
        records, timing = [], []
        for width in widths:
            recs, stats = run_sweep(width_tasks[width], [members], settings, scope=scope.child(f"width-{width:g}"),
                                    stop=stop)
            records += [{"width": width, "parameters": params[width], **r} for r in recs]
            timing.append({"width": width, "parameters": params[width], **stats[members.name]})
            logging.info("width %g (%s weights): %d of %d rates reached the target; compile %.1f s, training %.1f s",
                         width, f"{params[width]:,}", sum(r["status"] == "reached" for r in recs), len(recs),
                         stats[members.name]["compile_seconds"], stats[members.name]["train_seconds"])
        best = best_rate_per_width(records)
        name = records_lib.task_header(width_tasks[widths[0]])["model"]["name"]
        return Trained({"model": {"name": name, "widths": widths, "parameters": [params[w] for w in widths]},
                        "optimizer": members.name, "learning_rates": sorted({r["learning_rate"] for r in records}),
                        "timing": timing, "members": records, "fits": rate_fits(records), "best_rates": best,
                        "transfer": transfer(best)}, members=records)

    return run(EXPERIMENT, ScalingRun, identity=identity, task=width_tasks[widths[0]], settings=settings,
               train=train, workdir=workdir, overwrite=overwrite, info=info)
