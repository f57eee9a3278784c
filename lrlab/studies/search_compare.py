"""search_compare: how much compute each learning-rate search method needs to find a good rate.

The ground truth is the valley: 48 log-spaced rates trained once (training seed fixed), S* its
fewest steps to target. A method's found rate is *good* when its steps to target are within 10% of
S* (<= GOOD_FACTOR * S*). Every method trains with the same training seed; only its own randomness
(sampling, TPE, PBT's exploit/explore, the range test's seeds) varies with the method seed.

Scoring (pure functions over member records / trials / round entries; "trainings" = members
trained, fully or partly; "model-steps" = the sum of the steps every member trained):
  grid48        the valley itself: all its members; found = its best.
  grid12        every 4th valley rate (offset = (seed - 1) mod 4): no new training.
  random16      random_search n=16: all its model-steps; found = the best trial.
  random32_sha  random_search n=32 with successive halving (PruneSpec(100, 3)).
  bayes4x8      bayes_search 4 rounds x 8: the cost up to the first round whose incumbent is good.
  pbt16         run_pbt from random16's 16 draws: K x steps to target (all model-steps if missed).
  lr_finder     lr_range_test (4 seeds); its suggestion trained once to measure its steps; cost =
                the range test's model-steps (the verification run's reported beside it).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.engine.stop import StopSignal
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store import files, plots, ranking, valleys
from lrlab.store import records as records_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training import exploit_explore, pruning, range_test, search
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import run_sweep

METHODS = ("grid48", "grid12", "random16", "random32_sha", "bayes4x8", "pbt16", "lr_finder")
DETERMINISTIC = frozenset({"grid48"})  # one row whatever the number of method seeds
GOOD_FACTOR = 1.1  # good: steps to target <= GOOD_FACTOR * S*
LR_LOW, LR_HIGH, VALLEY_RATES = 1e-6, 100.0, 48  # the study's grid, and every search's range
GRID_STRIDE = 4  # grid12 = every 4th valley rate
RANDOM_N, SHA_N, SHA_SPEC = 16, 32, pruning.PruneSpec(min_steps=100, eta=3)
BAYES_ROUNDS, BAYES_BATCH = 4, 8
PBT_K, PBT_READY_STEPS = 16, 100
Row = dict[str, Any]


def parse_methods(entries: Sequence[str]) -> list[str]:
    """--methods (a comma list, or 'all') -> method names in METHODS order; ValueError naming the bad one."""
    names = [e.strip() for e in entries if e.strip()]
    if not names:
        raise ValueError(f"name at least one method: {', '.join(METHODS)} or all")
    if names == ["all"]:
        return list(METHODS)
    for name in names:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)} or all")
    if len(set(names)) != len(names):
        raise ValueError(f"a method is listed twice: {', '.join(names)}")
    return [m for m in METHODS if m in names]


def valley_rates() -> np.ndarray:
    """float64[48]: the reference grid, log-spaced 1e-6..100."""
    return np.geomspace(LR_LOW, LR_HIGH, VALLEY_RATES)


def best_steps(records: Sequence[Mapping[str, Any]]) -> int | None:
    """S*: the steps to target of the valley's best member (`ranking.best_member`; None if none reached it)."""
    best = ranking.best_member(records)
    return None if best is None else int(best["steps_to_target"])


def is_good(steps: int | None, s_star: int, factor: float = GOOD_FACTOR) -> bool:
    """A found rate is good when it reached the target within `factor` x S* steps."""
    return steps is not None and steps <= factor * s_star


def make_row(method: str, seed: int, *, trainings: int, model_steps: int, found_lr: float | None,
             found_steps: int | None, s_star: int, **extra: Any) -> Row:
    """One method/seed result: its cost, what it found, the ratio to S* and whether it is good."""
    return {"method": method, "seed": seed, "trainings": int(trainings), "model_steps": int(model_steps),
            "found_lr": None if found_lr is None else float(found_lr),
            "found_steps": None if found_steps is None else int(found_steps),
            "ratio": None if found_steps is None else found_steps / s_star,
            "good": is_good(found_steps, s_star), **extra}


def _reached_steps(record: Mapping[str, Any]) -> int | None:
    return int(record["steps_to_target"]) if record["status"] == "reached" else None


def score_members(method: str, seed: int, records: Sequence[Mapping[str, Any]], s_star: int, **extra: Any) -> Row:
    """A set of trained members (valley rates or search trials): cost = every member's steps
    trained; found = the member of fewest steps to target (missed: the first member, no steps)."""
    best = ranking.best_member(records)
    return make_row(method, seed, trainings=len(records), model_steps=sum(r["steps_trained"] for r in records),
                    found_lr=None if best is None else best["learning_rate"],
                    found_steps=None if best is None else _reached_steps(best), s_star=s_star, **extra)


def grid_subset(records: Sequence[Mapping[str, Any]], stride: int, offset: int) -> list[Mapping[str, Any]]:
    """Every `stride`-th member of a valley ordered by learning rate, starting at `offset`."""
    ordered = sorted(records, key=lambda r: r["learning_rate"])
    return ordered[offset % stride::stride]


def score_grid(method: str, seed: int, valley: Sequence[Mapping[str, Any]], s_star: int,
               stride: int = 1) -> Row:
    """grid48 (stride 1) or grid12 (stride 4, offset seed - 1): the valley's own members, no new training."""
    offset = (seed - 1) % stride
    return score_members(method, seed, grid_subset(valley, stride, offset), s_star, offset=offset)


def score_search(method: str, seed: int, trials: Sequence[Mapping[str, Any]], s_star: int) -> Row:
    """random16 / random32_sha: every trial's steps (pruned ones stop at their rung); found = best."""
    pruned = sum(t["status"] == "pruned" for t in trials)
    return score_members(method, seed, trials, s_star, pruned=pruned)


def score_rounds(method: str, seed: int, rounds: Sequence[Mapping[str, Any]], s_star: int) -> Row:
    """bayes4x8: cost and trainings up to the first round whose incumbent is good (else all rounds);
    found = that round's incumbent."""
    if not rounds:
        raise ValueError("no rounds to score")
    pick = next((e for e in rounds if is_good(_reached_steps(e["incumbent"]), s_star)), rounds[-1])
    used = [e for e in rounds if e["round"] <= pick["round"]]
    inc = pick["incumbent"]
    return make_row(method, seed, trainings=sum(e["members"] for e in used),
                    model_steps=pick["cumulative_model_steps"], found_lr=inc["learning_rate"],
                    found_steps=_reached_steps(inc), s_star=s_star, rounds_used=len(used))


def score_pbt(method: str, seed: int, *, k: int, steps_to_target: int | None, steps_run: int,
              found_lr: float | None, s_star: int, **extra: Any) -> Row:
    """pbt16: found = PBT's own steps to target; cost = K x steps to target, or K x steps run if missed."""
    steps = steps_to_target if steps_to_target is not None else steps_run
    return make_row(method, seed, trainings=k, model_steps=k * steps, found_lr=found_lr,
                    found_steps=steps_to_target, s_star=s_star, **extra)


def score_finder(method: str, seed: int, *, finder_model_steps: int, num_seeds: int, suggested_lr: float | None,
                 verify: Mapping[str, Any] | None, s_star: int) -> Row:
    """lr_finder: cost = the range test's model-steps; found = the suggestion's steps to target in
    one verification run (`verify`, its member record), whose steps are reported beside the cost."""
    verify_steps = 0 if verify is None else int(verify["steps_trained"])
    return make_row(method, seed, trainings=num_seeds, model_steps=finder_model_steps, found_lr=suggested_lr,
                    found_steps=None if verify is None else _reached_steps(verify), s_star=s_star,
                    model_steps_with_verification=finder_model_steps + verify_steps,
                    trainings_with_verification=num_seeds + (verify is not None))


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def summary_table(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per method (first-seen order): successes / seeds, median model-steps, trainings and ratio
    (a missed seed counts as an infinite ratio in the median)."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        ratios = [r["ratio"] if r["ratio"] is not None else float("inf") for r in mine]
        entry = {"method": method, "seeds": len(mine), "successes": sum(r["good"] for r in mine),
                 "median_model_steps": _median([r["model_steps"] for r in mine]),
                 "median_trainings": _median([r["trainings"] for r in mine]),
                 "median_ratio": _median(ratios)}
        if "model_steps_with_verification" in mine[0]:
            entry["median_model_steps_with_verification"] = _median(
                [r["model_steps_with_verification"] for r in mine])
        table.append(entry)
    return table


def format_rows(rows: Sequence[Row]) -> str:
    """Printed table of every method/seed row."""
    lines = [f"{'method':<13}  {'seed':>4}  {'trainings':>9}  {'model-steps':>11}  {'found lr':>9}  "
             f"{'steps':>5}  {'ratio':>5}  good"]
    for r in rows:
        lines.append(f"{r['method']:<13}  {r['seed']:>4}  {r['trainings']:>9}  {r['model_steps']:>11,}  "
                     f"{records_lib.cell(r['found_lr'], 9, '.4g')}  {records_lib.cell(r['found_steps'], 5, 'd')}  "
                     f"{records_lib.cell(r['ratio'], 5, '.2f')}  {'yes' if r['good'] else 'no'}")
    return "\n".join(lines)


def format_summary(table: Sequence[Mapping[str, Any]], s_star: int, best_lr: float, eval_every: int) -> str:
    """Printed per-method table, with S* and what 'good' means."""
    lines = [f"S* = {s_star} steps (valley best, learning rate {best_lr:.4g}); good: <= {GOOD_FACTOR:g} x S* = "
             f"{GOOD_FACTOR * s_star:g} steps (resolution {eval_every} steps)",
             f"{'method':<13}  {'good/seeds':>10}  {'median model-steps':>18}  {'median trainings':>16}  "
             f"{'median ratio':>12}"]
    for t in table:
        lines.append(f"{t['method']:<13}  {t['successes']:>4}/{t['seeds']:<5}  "
                     f"{records_lib.cell(t['median_model_steps'], 18, ',.0f')}  "
                     f"{records_lib.cell(t['median_trainings'], 16, 'g')}  "
                     f"{records_lib.cell(t['median_ratio'], 12, '.2f')}")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every method shares: the task, the optimizer and its fixed hyperparameters, the
    training settings (training seed fixed), and where checkpoints go."""

    task: Task
    optimizer: Optimizer
    settings: SweepSettings
    overrides: Mapping[str, float] = dataclasses.field(default_factory=dict)
    scope: Scope = NO_SCOPE  # the run's checkpoints/ folder

    def under(self, *parts: str) -> tuple[Scope, SweepSettings]:
        """The scope checkpoints/<parts...>/ and the settings without pruning (a method may set its own)."""
        return self.scope.child(*parts), dataclasses.replace(self.settings, prune=None)


def lr_ranges(optimizer: Optimizer) -> search.Ranges:
    """Every search's range: the learning rate, log-uniform over the valley's span."""
    return search.parse_ranges([f"learning_rate:{LR_LOW:g}:{LR_HIGH:g}"], optimizer)


def run_valley(setup: Setup, stop: StopSignal | None = None) -> list[dict[str, Any]]:
    """The reference: the 48 valley rates as one population (checkpoints/valley/)."""
    members = members_lib.Members(setup.optimizer, members_lib.population_hparams(setup.optimizer, valley_rates(),
                                                                                setup.overrides))
    scope, settings = setup.under("valley")
    records, _ = run_sweep(setup.task, [members], settings, scope=scope, stop=stop)
    return records


class _Good(Exception):
    """Raised between Bayesian rounds once the incumbent is good: later rounds cost nothing here."""


def run_method(method: str, seed: int, setup: Setup, valley: Sequence[Mapping[str, Any]], s_star: int,
               stop: StopSignal | None = None) -> Row:
    """Runs one method with one method seed (checkpoints/<method>/seed-<seed>/) and scores it."""
    opt, task = setup.optimizer, setup.task
    scope, settings = setup.under(method, f"seed-{seed}")
    common = dict(overrides=setup.overrides, scope=scope, stop=stop)
    if method == "grid48":
        return score_grid(method, seed, valley, s_star, stride=1)
    if method == "grid12":
        return score_grid(method, seed, valley, s_star, stride=GRID_STRIDE)
    if method == "random16":
        result = search.train_random(task, opt, lr_ranges(opt), RANDOM_N, settings, seed, **common)
        return score_search(method, seed, result.trials, s_star)
    if method == "random32_sha":
        settings = dataclasses.replace(settings, prune=SHA_SPEC)
        result = search.train_random(task, opt, lr_ranges(opt), SHA_N, settings, seed, **common)
        return score_search(method, seed, result.trials, s_star)
    if method == "bayes4x8":
        entries: list[dict[str, Any]] = []

        def on_round(entry: dict[str, Any]) -> None:
            entries.append(entry)
            if is_good(_reached_steps(entry["incumbent"]), s_star):
                raise _Good

        try:
            search.train_bayes(task, opt, lr_ranges(opt), BAYES_ROUNDS, BAYES_BATCH, settings, seed,
                                on_round=on_round, **common)
        except _Good:
            pass
        return score_rounds(method, seed, entries, s_star)
    if method == "pbt16":
        lr_K = search.sample_random(lr_ranges(opt), PBT_K, seed)["learning_rate"]  # random16's draws
        members = members_lib.Members(opt, members_lib.population_hparams(opt, lr_K, setup.overrides))
        cfg = exploit_explore.PBTConfig(ready_steps=PBT_READY_STEPS,
                            explore=(exploit_explore.Bound("learning_rate", LR_LOW, LR_HIGH, True),))
        result = exploit_explore.run_pbt(task, members, cfg, settings, scope=scope, stop=stop, exploit_seed=seed)
        member = result.member_at_target
        slots = None if member is None else exploit_explore.lineage(result.sources_EK, member)
        schedule = result.schedule_of("learning_rate", slots)
        return score_pbt(method, seed, k=result.k, steps_to_target=result.steps_to_target,
                         steps_run=result.steps_run, found_lr=schedule["learning_rate"][-1], s_star=s_star,
                         lr_schedule=schedule, stopped_by=result.stopped_by)
    if method == "lr_finder":
        test = range_test.lr_range_test(task, opt, range_test.LR_MIN, range_test.LR_MAX, range_test.NUM_STEPS,
                                       range_test.NUM_SEEDS, dataclasses.replace(settings, seed=seed),
                                       overrides=setup.overrides, desc=f"lr_finder seed {seed}")
        verify = None
        if test.suggested_lr is not None:
            members = members_lib.Members(opt, members_lib.population_hparams(opt, [test.suggested_lr], setup.overrides))
            records, _ = run_sweep(task, [members], settings, scope=scope.child("verify"), stop=stop)
            verify = records[0]
        return score_finder(method, seed, finder_model_steps=test.model_steps, num_seeds=test.num_seeds,
                            suggested_lr=test.suggested_lr, verify=verify, s_star=s_star)
    raise ValueError(f"unknown method {method!r}")


def run_all(setup: Setup, methods: Sequence[str], method_seeds: int, valley: Sequence[Mapping[str, Any]],
            s_star: int, stop: StopSignal | None = None,
            on_row: Callable[[Row, int, int], None] | None = None) -> list[Row]:
    """Every method x method seed (1..method_seeds; grid48 once), seed by seed (a run cut short
    still holds whole seeds), rows returned method by method. A finished row is kept as
    checkpoints/<method>/seed-<s>/row.json, so a resumed run skips it at once."""
    plan = [(m, s) for s in range(1, method_seeds + 1) for m in methods if s == 1 or m not in DETERMINISTIC]
    rows = []
    for i, (method, seed) in enumerate(plan, 1):
        saved = setup.scope.child(method, f"seed-{seed}").file("row.json")
        if saved is not None and saved.exists():
            row = json.loads(saved.read_text())
        else:
            start = time.perf_counter()
            row = {**run_method(method, seed, setup, valley, s_star, stop),
                   "wall_seconds": time.perf_counter() - start}
            if saved is not None:
                saved.parent.mkdir(parents=True, exist_ok=True)
                files.write_json(saved, row)
        rows.append(row)
        if on_row is not None:
            on_row(row, i, len(plan))
    return sorted(rows, key=lambda r: (methods.index(r["method"]), r["seed"]))


EXPERIMENT = "search_compare"


class CompareRun(StudyResult):
    """A search_compare run's results (its results.json as `summary`): every method/seed row, the
    per-method table, S*, the printed report and the figure."""

    FIGURE = "search_compare.png"

    def report(self) -> str:
        s = self.summary
        return "\n".join([format_rows(s["rows"]), format_summary(s["table"], s["s_star"],
                                                                 s["valley_best"]["learning_rate"],
                                                                 s["steps_to_target_resolution"])])

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.search_compare(s["rows"], path, good_factor=s["good_factor"],
                             title=f"Finding a learning rate within {s['good_factor']:g} x S* (S* = {s['s_star']} "
                                   f"steps): {s['optimizer']}, {s['model']['name']}, {s['dataset']}, target "
                                   f"{records_lib.target_text(s)}")


class NoReference(ValueError):
    """No valley rate reached the target: there is no S* to score the methods against."""


def search_compare(task: Task, optimizer: str | Optimizer, settings: SweepSettings = SweepSettings(),
                   workdir: Any = None, *, methods: Sequence[str] = METHODS, method_seeds: int = 3,
                   overrides: Mapping[str, float] | None = None, stop: StopSignal | None = None,
                   overwrite: bool = False, on_row: Callable[[Row, int, int], None] | None = None,
                   on_valley: Callable[[int, dict[str, Any]], None] | None = None,
                   info: Mapping[str, Any] | None = None) -> CompareRun:
    """The valley, then every method x method seed, each scored against it (see the module
    docstring), as `python -m lrlab.experiments.search_compare` runs it."""
    opt = optimizers.get(optimizer)
    methods = parse_methods(list(methods))
    identity = {"task": task.identity(), "optimizer": opt.name, "methods": methods, "method_seeds": method_seeds,
                "overrides": dict(overrides or {}), "settings": settings.to_json()}

    def train(scope: Scope) -> Trained:
        setup = Setup(task, opt, settings, dict(overrides or {}), scope)
        valley = run_valley(setup, stop)
        s_star = best_steps(valley)
        if s_star is None:
            raise NoReference("no valley rate reached the target within the step budget: there is no reference")
        valley_best = valleys.valley_summary(valley)["best"]
        if on_valley is not None:
            on_valley(s_star, valley_best)
        rows = run_all(setup, methods, method_seeds, valley, s_star, stop, on_row)
        return Trained({"optimizer": opt.name, "good_factor": GOOD_FACTOR, "s_star": s_star, "valley_best": valley_best,
                        "valley": [{k: r[k] for k in ("learning_rate", "status", "steps_to_target", "steps_trained")}
                                   for r in valley],
                        "rows": rows, "table": summary_table(rows)}, members=valley)

    return run(EXPERIMENT, CompareRun, identity=identity, task=task, settings=settings, train=train, workdir=workdir,
               overwrite=overwrite, info=info)
