"""The learning-rate range test (Smith 2015; fastai's `lr_find`): one short run whose rate rises
exponentially every step, several seeds as one population, and rules that read a rate off the
loss-against-rate curve.

Every member's injected learning rate is lr_max (per-member data, as everywhere in lrlab) and an
Optax factor ramps it from lr_min / lr_max to 1 over the run (`schedules.range_test_factor`), so the
rate at step t is lr_min * (lr_max / lr_min)^(t / (T - 1)). The members differ only by seed (init,
batch order, dropout). The run stops early once every member's smoothed loss has exceeded 4x its
minimum or gone non-finite (fastai's divergence rule).

The rules (pure numpy, fastai's four, on the bias-corrected exponential moving average of the loss,
with fastai's trimming: the first T // 10 and the last 5 points left out; unlike fastai, the average
and the stop rule start afresh after the first T // 10, so an early spike fools neither). Each reads the curve
averaged over seeds (the suggestion) and each seed's own curve (its spread across seeds):
  valley   fastai's default: the longest decreasing stretch of the loss, a point about halfway down it
  slide    fastai's interval slide: from the end, the first rate whose loss slope matches the slope
           15 points to its right within 0.005
  minimum  the rate of the lowest smoothed loss, divided by 10
  steep    the rate where the smoothed loss falls fastest against log(rate), before its minimum
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from lrlab.engine import loop as loop_lib
from lrlab.engine import population, segment
from lrlab.engine.stop import StopSignal
from lrlab.optim import members, optimizers, schedules
from lrlab.optim.optimizers import Optimizer
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.task import sampling
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import engine_config, lowered_programs, sweep_data

RULES = ("valley", "slide", "minimum", "steep")  # fastai's four, its default first
# The rule whose rate the experiment reports without confirmation. Measured on five tasks x five
# seeds against each task's 48-rate valley (experiments/lr_finder/REPORT.md): within 1.5x of the
# grid's best steps, steep 68% of task-seeds, slide 60%, minimum/10 40%, fastai's valley 4% (steep
# also leads within 1.1x: 36% against slide's 16%; it fails on one task, sending small_cnn with
# Adam 12-17x too high on every seed).
# Where the headline rule has no answer (no descent before the minimum), the next by the same
# measurement.
SUGGESTION_ORDER = ("steep", "slide", "minimum", "valley")
HEADLINE = SUGGESTION_ORDER[0]
LR_MIN, LR_MAX, NUM_STEPS, NUM_SEEDS = 1e-7, 10.0, 100, 4  # fastai's defaults; 4 seeds
BETA = 0.98  # fastai's smoothing of the recorded loss
SLIDE_WINDOW, SLIDE_THRESHOLD = 15, 0.005  # fastai's slide rule: lr_diff and thresh
DIVERGE_FACTOR = 4.0  # fastai: stop once the smoothed loss exceeds 4x its minimum
EVAL_EXAMPLES = 100  # the segment program always evaluates; the range test does not need it


def ramp_rates(lr_min: float, lr_max: float, num_steps: int) -> np.ndarray:
    """float64[T]: the rate of each step of the ramp, lr_min first, lr_max last, geometric."""
    return np.geomspace(lr_min, lr_max, num_steps)


def smooth(loss_S: np.ndarray, beta: float = BETA, restart: int = 0) -> np.ndarray:
    """fastai's smoothing: exponential moving average with bias correction, along the last axis.
    A non-finite loss makes every later value NaN (the average has lost its meaning). With
    `restart` > 0 the average starts afresh there (`trimmed_start`: what no rule reads, an early
    spike or NaN, then leaves nothing in the curve the rules read; fastai's average runs from 0)."""
    loss = np.asarray(loss_S, np.float64)
    if 0 < restart < loss.shape[-1]:
        return np.concatenate([smooth(loss[..., :restart], beta), smooth(loss[..., restart:], beta)], axis=-1)
    out = np.empty_like(loss)
    avg = np.zeros(loss.shape[:-1])
    bad = np.zeros(loss.shape[:-1], bool)
    for t in range(loss.shape[-1]):
        x = loss[..., t]
        bad |= ~np.isfinite(x)
        avg = beta * avg + (1 - beta) * np.where(bad, 0.0, x)
        out[..., t] = np.where(bad, np.nan, avg / (1 - beta ** (t + 1)))
    return out


def trimmed_start(num_steps: int) -> int:
    """The points at the ramp's start that no rule reads (fastai's num_steps // 10): nor does the stop
    rule here, so an early spike (one bad batch) neither ends the test nor hides the curve."""
    return num_steps // 10


def divergence_step(smoothed_S: np.ndarray, factor: float = DIVERGE_FACTOR, start: int = 0) -> int | None:
    """The first step from `start` on whose smoothed loss is non-finite or above `factor` x the
    minimum since `start` (fastai's stop rule, which starts at 0), or None."""
    s = np.asarray(smoothed_S, np.float64)[start:]
    running_min = np.minimum.accumulate(np.where(np.isfinite(s), s, np.inf))
    hit = np.flatnonzero(~np.isfinite(s) | (s > factor * running_min))
    return start + int(hit[0]) if hit.size else None


def all_diverged(smoothed_KS: np.ndarray, factor: float = DIVERGE_FACTOR, start: int = 0) -> bool:
    """True when every member (row) has diverged by divergence_step's rule: the range test stops."""
    return all(divergence_step(row, factor, start) is not None for row in np.asarray(smoothed_KS))


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


def slide(smoothed_S: np.ndarray, window: int = SLIDE_WINDOW, threshold: float = SLIDE_THRESHOLD) -> int | None:
    """fastai's `slide` rule: with g the gradient of the loss along the points, walk a pair of points
    `window` apart from the curve's end leftwards while |g[right] - g[left]| > `threshold`; the
    suggestion is the last left point walked (the first one, `window` before the end, if none).
    None when the curve is shorter than `window` + 1 points (fastai's index would fail)."""
    loss = np.asarray(smoothed_S, np.float64)
    if len(loss) < window + 1:
        return None
    grad = np.gradient(loss)
    right = len(loss) - 1
    left = right - window
    pick = left
    while left >= 0 and abs(grad[right] - grad[left]) > threshold:
        pick = left
        right, left = right - 1, left - 1
    return pick


def suggest(lr_S: np.ndarray, smoothed_S: np.ndarray, num_steps: int, skip_end: int = 5
            ) -> dict[str, dict[str, float | int] | None]:
    """Each rule's suggestion {"learning_rate", "step", "loss"} (None where it has no answer).

    As fastai: the curve up to its divergence step (inclusive), without its first num_steps // 10
    and last `skip_end` points. "step" indexes the whole run; "loss" is the smoothed loss there
    (for minimum: at the minimum, whose rate is ten times the suggestion).
    """
    smoothed_S = np.asarray(smoothed_S, np.float64)
    first = trimmed_start(num_steps)
    stop = divergence_step(smoothed_S, start=first)
    end = (len(smoothed_S) if stop is None else stop + 1) - skip_end
    finite = np.isfinite(smoothed_S[first:max(end, first)])
    end = first + (int(np.argmin(finite)) if not finite.all() else finite.size)
    if end - first < 3:
        return {rule: None for rule in RULES}
    lr, loss = np.asarray(lr_S[first:end], np.float64), smoothed_S[first:end]
    picks = {"valley": valley(loss), "slide": slide(loss), "minimum": minimum(loss), "steep": steep(lr, loss)}
    out: dict[str, dict[str, float | int] | None] = {}
    for rule, i in picks.items():
        if i is None:
            out[rule] = None
            continue
        rate = float(lr[i]) / (10.0 if rule == "minimum" else 1.0)
        out[rule] = {"learning_rate": rate, "step": first + i, "loss": float(loss[i])}
    return out


def spread(per_seed: list[dict[str, dict[str, float | int] | None]]) -> dict[str, float | None]:
    """Per rule, the highest of its per-seed suggestions over the lowest (1: every seed agrees);
    None where a seed has no suggestion."""
    out: dict[str, float | None] = {}
    for rule in RULES:
        rates = [s[rule]["learning_rate"] if s[rule] is not None else None for s in per_seed]
        out[rule] = None if not rates or None in rates else max(rates) / min(rates)
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
    suggestions: dict[str, dict[str, float | int] | None]  # rule -> {learning_rate, step, loss}, mean curve
    seed_suggestions: list[dict[str, dict[str, float | int] | None]]  # the same, per seed's own curve
    spread: dict[str, float | None]  # rule -> highest / lowest of its per-seed suggestions
    steps_run: int
    diverged_at: int | None  # the step where the seed-averaged curve diverged (None: never)
    stopped_early: bool  # every seed diverged before the ramp's end
    model_steps: int  # K x steps run: the compute spent
    compile_seconds: float
    train_seconds: float

    @property
    def suggested_rule(self) -> str | None:
        """The rule whose rate is suggested: the headline (HEADLINE), or the next in SUGGESTION_ORDER
        that has an answer; None when the curve was too short for every rule."""
        return next((rule for rule in SUGGESTION_ORDER if self.suggestions[rule] is not None), None)

    @property
    def suggested_lr(self) -> float | None:
        """The suggested rule's rate (`suggested_rule`), None when no rule has one."""
        rule = self.suggested_rule
        return None if rule is None else self.suggestions[rule]["learning_rate"]

    def to_json(self) -> dict[str, Any]:
        """results.json's entry for this test (NaN becomes null there)."""
        record = dataclasses.asdict(self)
        for name in ("lr_S", "loss_KS", "smoothed_KS", "smoothed_S"):
            record[name] = np.asarray(record[name], np.float64).tolist()
        return record


class RampHook(loop_lib.Hook):
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

    def after_segment(self, loop: loop_lib.Loop, metrics: segment.SegmentMetrics) -> None:
        self.losses.append(loop.host["step_loss"][:self.num_seeds].astype(np.float32))
        self.smoothed_KS = smooth(self.loss_KS, restart=trimmed_start(self.num_steps))
        if self.stop_at_divergence and loop.step < self.num_steps and all_diverged(
                self.smoothed_KS, start=trimmed_start(self.num_steps)):
            loop.finish("diverged")

    def state(self) -> dict[str, Any]:
        return {"loss_KS": self.loss_KS.tolist()}

    def restore(self, state: dict[str, Any]) -> None:
        if state:
            self.losses = [np.asarray(state["loss_KS"], np.float32).reshape(self.num_seeds, -1)]
            self.smoothed_KS = smooth(self.loss_KS, restart=trimmed_start(self.num_steps))

    def postfix(self, loop: loop_lib.Loop) -> dict[str, Any]:
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
    scope: Scope = NO_SCOPE,
    stop: StopSignal | None = None,
) -> FinderResult:
    """Runs the range test of `optimizer` on `task` with `num_seeds` seeds as one population.

    `settings` gives the batch size, seed, progress and the training techniques (dtype,
    augmentation) as `sweep.engine_config` reads them; its budget, evaluation, schedule, early
    stopping, pruning and sequential fields do not apply (the seeds are always distinct).
    `overrides` sets the optimizer's other hyperparameters. Between segments of `segment_steps`
    the run stops once every seed has diverged (fastai's rule), unless `stop_at_divergence` is False.
    With a `scope` it is checkpointed there (and honours `stop`), so a resumed ramp equals an
    uninterrupted one.
    """
    if not 0 < lr_min < lr_max or num_steps < 2 or num_seeds < 1:
        raise ValueError(f"need 0 < lr_min < lr_max, num_steps >= 2, num_seeds >= 1; got {lr_min}, {lr_max}, "
                         f"{num_steps}, {num_seeds}")
    opt = optimizers.get(optimizer)
    ramp = schedules.ScheduleSpec(schedules.RANGE_TEST, decay_factor=lr_min / lr_max, total_steps=num_steps)
    budget = loop_lib.Budget(max_steps=num_steps, eval_every=min(segment_steps, num_steps))
    settings = dataclasses.replace(settings, distinct_seeds=True, schedule=ramp, patience=0, prune=None,
                                   sequential=False, eval_examples=min(EVAL_EXAMPLES, task.num_train), budget=budget)
    task = dataclasses.replace(task, eval=None) if task.eval is not None else task  # it needs no evaluation
    data, eval_chunk = sweep_data(task, settings)
    cfg = engine_config(task, opt, settings, eval_chunk)
    pop = population.init_population(cfg, members.population_hparams(opt, np.full(num_seeds, lr_max), overrides),
                                     settings.seed)
    programs, _ = lowered_programs(cfg, pop, data, settings, NO_SCOPE)
    lr_T = ramp_rates(lr_min, lr_max, num_steps)
    hook = RampHook(num_seeds, num_steps, stop_at_divergence, lr_T)
    hparams = members.population_hparams(opt, np.full(num_seeds, lr_max), overrides)
    identity = {**task.identity(), "optimizer": opt.name, "hparams": {k: np.asarray(v).tolist() for k, v in hparams.items()},
                "settings": settings.to_json(), "ramp": [lr_min, lr_max, num_steps, num_seeds]}
    out = loop_lib.train(pop, data, budget, sampling.data_key(settings.seed), programs, freeze_at_target=False,
                         repack=False, curves=False, hooks=[hook], progress=settings.progress,
                         desc=desc or f"{opt.name} range test", checkpoints=scope.checkpoints(identity), stop=stop)
    loss_KS = hook.loss_KS
    steps = loss_KS.shape[1]
    first = trimmed_start(num_steps)
    lr_S, smoothed_S, smoothed_KS = lr_T[:steps], smooth(loss_KS.mean(axis=0), restart=first), smooth(loss_KS, restart=first)
    per_seed = [suggest(lr_S, row, num_steps) for row in smoothed_KS]
    return FinderResult(
        optimizer=opt.name, lr_min=lr_min, lr_max=lr_max, num_steps=num_steps, num_seeds=num_seeds,
        lr_S=lr_S, loss_KS=loss_KS, smoothed_KS=smoothed_KS, smoothed_S=smoothed_S,
        suggestions=suggest(lr_S, smoothed_S, num_steps), seed_suggestions=per_seed, spread=spread(per_seed),
        steps_run=steps,
        diverged_at=divergence_step(smoothed_S, start=first), stopped_early=steps < num_steps,
        model_steps=num_seeds * steps, compile_seconds=out.compile_seconds, train_seconds=out.train_seconds)
