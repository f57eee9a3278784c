"""The learning-rate range test (Smith 2015; fastai's `lr_find`): one short run whose rate rises
exponentially every step, several seeds as one population, and rules that read a rate off the
loss-against-rate curve.

Every member's injected learning rate is lr_max (per-member data, as everywhere in lrlab) and an
Optax factor ramps it from lr_min / lr_max to 1 over the run (`lr_schedules.range_test_factor`), so the
rate at step t is lr_min * (lr_max / lr_min)^(t / (T - 1)). The members differ only by seed (init,
batch order, dropout). The run stops early once every member's smoothed loss has exceeded 4x its
minimum or gone non-finite (fastai's divergence rule).

The rules (pure numpy, on the bias-corrected exponential moving average of the loss averaged over
seeds, fastai's trimming: the first T // 10 and the last 5 points left out):
  steep    the rate where the smoothed loss falls fastest against log(rate), before its minimum
  minimum  the rate of the lowest smoothed loss, divided by 10
  valley   fastai's rule: the longest decreasing stretch of the loss, a point about halfway down it
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Sequence

import numpy as np

from lrlab import data as data_lib
from lrlab import lr_schedules, optimizers, plots, results, runner
from lrlab import population as pop_lib
from lrlab import workdir as workdir_lib
from lrlab.checkpoints import StopSignal
from lrlab.optimizers import Optimizer
from lrlab.sweep import SweepSettings, engine_config, sweep_data
from lrlab.tasks import Task

RULES = ("steep", "minimum", "valley")
# The rule whose rate the experiment reports first. Measured on small_cnn, MNIST, batch 100 (README),
# against lr_valley's fastest rates to 97% (Adam 0.0147-0.0215, SGD 0.316-0.464): minimum/10 gave Adam
# 0.017-0.020 at ramps of 100 to 300 steps (among the fastest) and SGD 0.075-0.107 (3-4x below, still
# inside the band that reaches 97%); steep was closest for SGD (1.3-1.5x above) but gave Adam 0.115 at
# 100 steps, where it never trains; valley (fastai's default) was 3-21x too low for both: these
# losses stay flat for most of the ramp, so the longest descent starts far too early.
HEADLINE = "minimum"
LR_MIN, LR_MAX, NUM_STEPS, NUM_SEEDS = 1e-7, 10.0, 100, 4  # fastai's defaults; 4 seeds
BETA = 0.98  # fastai's smoothing of the recorded loss
DIVERGE_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x its minimum
EVAL_EXAMPLES = 100  # the segment program always evaluates; the range test does not need it


def ramp_rates(lr_min: float, lr_max: float, num_steps: int) -> np.ndarray:
    """float64[T]: the rate of each step of the ramp, lr_min first, lr_max last, geometric."""
    return np.geomspace(lr_min, lr_max, num_steps)


def smooth(loss_S: np.ndarray, beta: float = BETA) -> np.ndarray:
    """fastai's smoothing: exponential moving average with bias correction, along the last axis.
    A non-finite loss makes every later value NaN (the average has lost its meaning)."""
    loss = np.asarray(loss_S, np.float64)
    out = np.empty_like(loss)
    avg = np.zeros(loss.shape[:-1])
    bad = np.zeros(loss.shape[:-1], bool)
    for t in range(loss.shape[-1]):
        x = loss[..., t]
        bad |= ~np.isfinite(x)
        avg = beta * avg + (1 - beta) * np.where(bad, 0.0, x)
        out[..., t] = np.where(bad, np.nan, avg / (1 - beta ** (t + 1)))
    return out


def divergence_step(smoothed_S: np.ndarray, factor: float = DIVERGE_FACTOR) -> int | None:
    """The first step whose smoothed loss is non-finite or above `factor` x the minimum so far
    (fastai's stop rule), or None."""
    s = np.asarray(smoothed_S, np.float64)
    running_min = np.minimum.accumulate(np.where(np.isfinite(s), s, np.inf))
    hit = np.flatnonzero(~np.isfinite(s) | (s > factor * running_min))
    return int(hit[0]) if hit.size else None


def all_diverged(smoothed_KS: np.ndarray, factor: float = DIVERGE_FACTOR) -> bool:
    """True when every member (row) has diverged by divergence_step's rule: the range test stops."""
    return all(divergence_step(row, factor) is not None for row in np.asarray(smoothed_KS))


def steep(lr_S: np.ndarray, smoothed_S: np.ndarray) -> int | None:
    """Index of the steepest descent: the most negative d(smoothed loss)/d(log rate) between
    neighbouring steps, before the minimum (its left step, as fastai). None with no descent."""
    lo = int(np.argmin(smoothed_S))
    if lo < 1:
        return None
    grad = np.diff(smoothed_S[: lo + 1]) / np.diff(np.log(lr_S[: lo + 1]))
    return int(np.argmin(grad))


def minimum(smoothed_S: np.ndarray) -> int:
    """Index of the lowest smoothed loss (the rule suggests a tenth of its rate)."""
    return int(np.argmin(smoothed_S))


def valley(smoothed_S: np.ndarray) -> int:
    """fastai's `valley` rule. The longest strictly decreasing subsequence of the loss ends at the
    first index `end` reaching the longest length L; the stretch is taken as [end - L, end] and the
    suggestion is at (end - L) + floor(span/3) + floor(span/6) with span = L: about halfway down
    (fastai's docs say "roughly 2/3 through the longest valley"; this is what its code picks).
    Indices as fastai's, except an all-rising curve gives 0 (fastai's would wrap to the last point)."""
    loss = np.asarray(smoothed_S, np.float64)
    lds = np.ones(len(loss), np.int64)  # length of the longest decreasing subsequence ending at i
    for i in range(1, len(loss)):
        higher = loss[:i] > loss[i]
        if higher.any():
            lds[i] = 1 + lds[:i][higher].max()
    end = int(np.argmax(lds))
    start = end - int(lds[end])
    third = (end - start) / 3
    return max(start + int(third) + int(third / 2), 0)


def suggest(lr_S: np.ndarray, smoothed_S: np.ndarray, num_steps: int, skip_end: int = 5
            ) -> dict[str, dict[str, float | int] | None]:
    """Each rule's suggestion {"learning_rate", "step", "loss"} (None where it has no answer).

    As fastai: the curve up to its divergence step (inclusive), without its first num_steps // 10
    and last `skip_end` points. "step" indexes the whole run; "loss" is the smoothed loss there
    (for minimum: at the minimum, whose rate is ten times the suggestion).
    """
    smoothed_S = np.asarray(smoothed_S, np.float64)
    stop = divergence_step(smoothed_S)
    end = (len(smoothed_S) if stop is None else stop + 1) - skip_end
    first = num_steps // 10
    finite = np.isfinite(smoothed_S[first:max(end, first)])
    end = first + (int(np.argmin(finite)) if not finite.all() else finite.size)
    if end - first < 3:
        return {rule: None for rule in RULES}
    lr, loss = np.asarray(lr_S[first:end], np.float64), smoothed_S[first:end]
    picks = {"steep": steep(lr, loss), "minimum": minimum(loss), "valley": valley(loss)}
    out: dict[str, dict[str, float | int] | None] = {}
    for rule, i in picks.items():
        if i is None:
            out[rule] = None
            continue
        rate = float(lr[i]) / (10.0 if rule == "minimum" else 1.0)
        out[rule] = {"learning_rate": rate, "step": first + i, "loss": float(loss[i])}
    return out


@dataclasses.dataclass
class FinderResult:
    """What one range test measured (host arrays; S = steps run, K = seeds)."""

    optimizer: str
    lr_min: float
    lr_max: float
    num_steps: int  # the ramp's length (the run may stop earlier, at divergence)
    num_seeds: int
    lr_S: np.ndarray  # float64[S]: the rate of each step run
    loss_KS: np.ndarray  # float32[K, S]: each seed's training loss (NaN where it did not step)
    smoothed_KS: np.ndarray  # float64[K, S]: each seed's smoothed loss (the stop rule)
    smoothed_S: np.ndarray  # float64[S]: the smoothed loss averaged over seeds (the rules)
    suggestions: dict[str, dict[str, float | int] | None]  # rule -> {learning_rate, step, loss}
    steps_run: int
    diverged_at: int | None  # the step where the seed-averaged curve diverged (None: never)
    stopped_early: bool  # every seed diverged before the ramp's end
    model_steps: int  # K x steps run: the compute spent
    compile_seconds: float
    train_seconds: float

    @property
    def suggested_lr(self) -> float | None:
        """The headline rule's rate (HEADLINE), None when the curve was too short for it."""
        pick = self.suggestions[HEADLINE]
        return None if pick is None else pick["learning_rate"]

    def to_json(self) -> dict[str, Any]:
        """results.json's entry for this test (NaN becomes null there)."""
        record = dataclasses.asdict(self)
        for name in ("lr_S", "loss_KS", "smoothed_KS", "smoothed_S"):
            record[name] = np.asarray(record[name], np.float64).tolist()
        return record


class RampHook(runner.Hook):
    """The range test in the segment loop: it keeps each seed's loss at every step and ends the run
    once every seed has diverged (fastai's rule), unless `stop_at_divergence` is False."""

    name = "ramp"

    def __init__(self, num_seeds: int, num_steps: int, stop_at_divergence: bool, lr_T: np.ndarray):
        self.num_seeds, self.num_steps, self.lr_T = num_seeds, num_steps, lr_T
        self.stop_at_divergence = stop_at_divergence
        self.losses: list[np.ndarray] = []
        self.smoothed_KS = np.zeros((num_seeds, 0))

    @property
    def loss_KS(self) -> np.ndarray:
        return np.concatenate(self.losses, axis=1) if self.losses else np.zeros((self.num_seeds, 0), np.float32)

    def after_segment(self, loop: runner.Loop, metrics: pop_lib.SegmentMetrics) -> None:
        self.losses.append(loop.host["step_loss"][:self.num_seeds].astype(np.float32))
        self.smoothed_KS = smooth(self.loss_KS)
        if self.stop_at_divergence and loop.step < self.num_steps and all_diverged(self.smoothed_KS):
            loop.finish("diverged")

    def state(self) -> dict[str, Any]:
        return {"loss_KS": self.loss_KS.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        if state:
            self.losses = [np.asarray(state["loss_KS"], np.float32).reshape(self.num_seeds, -1)]
            self.smoothed_KS = smooth(self.loss_KS)

    def postfix(self, loop: runner.Loop) -> dict[str, Any]:
        return {"lr": f"{self.lr_T[loop.step - 1]:.3g}", "smoothed loss": f"{np.nanmean(self.smoothed_KS[:, -1]):.3g}"}


def lr_range_test(
    task: Task,
    optimizer: str | Optimizer,
    lr_min: float,
    lr_max: float,
    num_steps: int,
    num_seeds: int,
    settings: SweepSettings,
    *,
    overrides: Mapping[str, float] | None = None,
    segment_steps: int = 20,
    stop_at_divergence: bool = True,
    desc: str = "",
) -> FinderResult:
    """Runs the range test of `optimizer` on `task` with `num_seeds` seeds as one population.

    `settings` gives the batch size, seed, progress and the training techniques (dtype,
    augmentation) as `sweep.engine_config` reads them; its budget, evaluation, schedule, early
    stopping, pruning and sequential fields do not apply (the seeds are always distinct).
    `overrides` sets the optimizer's other hyperparameters. Between segments of `segment_steps`
    the run stops once every seed has diverged (fastai's rule), unless `stop_at_divergence` is False.
    """
    if not 0 < lr_min < lr_max or num_steps < 2 or num_seeds < 1:
        raise ValueError(f"need 0 < lr_min < lr_max, num_steps >= 2, num_seeds >= 1; got {lr_min}, {lr_max}, "
                         f"{num_steps}, {num_seeds}")
    opt = optimizers.get(optimizer)
    ramp = lr_schedules.ScheduleSpec(lr_schedules.RANGE_TEST, decay_factor=lr_min / lr_max, total_steps=num_steps)
    budget = runner.Budget(max_steps=num_steps, eval_every=min(segment_steps, num_steps))
    settings = dataclasses.replace(settings, distinct_seeds=True, schedule=ramp, patience=0, prune=None,
                                   sequential=False, eval_examples=min(EVAL_EXAMPLES, task.num_train), budget=budget)
    task = dataclasses.replace(task, eval=None) if task.eval is not None else task  # it needs no evaluation
    data, eval_chunk = sweep_data(task, settings)
    programs = runner.Programs(engine_config(task, opt, settings, eval_chunk))
    pop = pop_lib.init_population(programs.cfg, optimizers.population_hparams(opt, np.full(num_seeds, lr_max),
                                                                              overrides), settings.seed)
    lr_T = ramp_rates(lr_min, lr_max, num_steps)
    hook = RampHook(num_seeds, num_steps, stop_at_divergence, lr_T)
    out = runner.train(pop, data, budget, data_lib.data_key(settings.seed), programs, freeze_at_target=False,
                       repack=False, curves=False, hooks=[hook], progress=settings.progress,
                       desc=desc or f"{opt.name} range test")
    loss_KS = hook.loss_KS
    steps = loss_KS.shape[1]
    lr_S, smoothed_S = lr_T[:steps], smooth(loss_KS.mean(axis=0))
    return FinderResult(
        optimizer=opt.name, lr_min=lr_min, lr_max=lr_max, num_steps=num_steps, num_seeds=num_seeds,
        lr_S=lr_S, loss_KS=loss_KS, smoothed_KS=smooth(loss_KS), smoothed_S=smoothed_S,
        suggestions=suggest(lr_S, smoothed_S, num_steps), steps_run=steps,
        diverged_at=divergence_step(smoothed_S), stopped_early=steps < num_steps,
        model_steps=num_seeds * steps, compile_seconds=out.compile_seconds, train_seconds=out.train_seconds)


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


class FinderRun:
    """An lr_finder run's results (its results.json as `summary`): the suggestions, the comparison
    with a valley, the printed report and the figure."""

    def __init__(self, summary: dict[str, Any], paths: dict | None = None):
        self.summary, self.paths = summary, dict(paths or {})

    def suggested(self, optimizer: str) -> float | None:
        """The headline rule's rate for `optimizer` (None when its curve was too short)."""
        return self.summary["suggested"][optimizer]

    def report(self) -> str:
        lines = [summary_text(self.summary)]
        for name, test in self.summary["tests"].items():
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
    del stop  # a range test takes seconds: it is not checkpointed
    started = time.perf_counter()
    opts = [optimizers.get(o) for o in optimizer_specs]
    ramp = {"lr_min": lr_min, "lr_max": lr_max, "num_steps": num_steps, "num_seeds": num_seeds}
    run = workdir_lib.resolve(workdir, EXPERIMENT, {"task": task.identity(), "optimizers": [o.name for o in opts],
                                                    "overrides": overrides or {}, "settings": settings.to_json(),
                                                    **ramp}, overwrite)
    if run is not None and run.finished:
        return FinderRun(run.read_results(), {"results": run.results_path})
    tests = {o.name: lr_range_test(task, o, lr_min, lr_max, num_steps, num_seeds, settings,
                                   overrides=(overrides or {}).get(o.name)) for o in opts}
    summary = {**results.run_header(EXPERIMENT), **results.task_header(task, settings), **(info or {}), **ramp,
               **summarize(tests, valley_members)}
    out = FinderRun(summary)
    if run is not None:
        out.paths = run.save(summary, {"lr_finder.png": out.plot}, started=started)
    return out
