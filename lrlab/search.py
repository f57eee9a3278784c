"""Hyperparameter search over populations: random search, and Bayesian optimisation in rounds.

Random search samples every candidate at once (log-uniform learning rates, uniform or log-uniform
other float hyperparameters) and trains them as ONE population. Bayesian search (Optuna's TPE,
batch ask/tell) trains each round's batch of candidates as one population, tells the results, and
asks for the next batch. Both score a member with `objective` (lower is better): steps to target
when reached, else a penalty above every reached value that still ranks by best accuracy.

Everything derives from the seeds: a killed run rebuilds the study by asking and telling the
finished rounds again (each round restores from its own checkpoint folder instantly), so it resumes
and reproduces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
import zlib
from typing import Any, Callable, Mapping

import numpy as np

from lrlab import optimizers, results, runner
from lrlab.checkpoints import StopSignal

# name -> (low, high, log scale)
Ranges = dict[str, tuple[float, float, bool]]
Trial = dict[str, Any]  # one trained candidate, see `make_trial`

# Scale used when an entry gives none: log for the learning rate and epsilons (they span decades),
# linear for the rest (momentum, b1, b2, rho, decay: coefficients in [0, 1]).
LOG_BY_DEFAULT = frozenset({"learning_rate", "eps"})
# Hyperparameters that are averaging coefficients: their range must lie in [0, 1].
UNIT_INTERVAL = frozenset({"momentum", "b1", "b2", "rho", "decay"})
# How a diverged member scores, in units of max_steps * (1 + target): above every missed member.
DIVERGED_FACTOR = 2.0
OBJECTIVE = ("reached: steps_to_target; missed: max_steps * (1 + target - best training accuracy); "
             "diverged: 2 * max_steps * (1 + target); lower is better")


def searchable(optimizer: str) -> list[str]:
    """The per-member hyperparameters of `optimizer` a search may vary (learning rate first)."""
    return ["learning_rate", *optimizers.REGISTRY[optimizer].hparams]


def parse_ranges(entries: list[str], optimizer: str) -> Ranges:
    """['learning_rate:1e-5:1', 'b1:0.8:0.99:linear'] -> {name: (low, high, log)}.

    Each entry is NAME:LOW:HIGH[:log|linear]; the scale defaults to log for learning_rate and eps,
    linear otherwise. NAME must be a per-member hyperparameter of `optimizer`, each once, and the
    learning rate must be searched; LOW < HIGH, both finite; log needs LOW > 0; momentum, b1, b2,
    rho and decay stay in [0, 1]. Bad input: ValueError naming the entry.
    """
    allowed = searchable(optimizer)
    ranges: Ranges = {}
    for entry in entries:
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (3, 4) or not parts[0]:
            raise ValueError(f"{entry!r} is not NAME:LOW:HIGH[:log|linear] (for example learning_rate:1e-5:1)")
        name = parts[0]
        if name not in allowed:
            raise ValueError(f"{entry!r}: {optimizer} has no hyperparameter {name!r}: choose from {', '.join(allowed)}")
        if name in ranges:
            raise ValueError(f"{entry!r}: {name} given twice")
        try:
            low, high = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"{entry!r}: LOW and HIGH must be numbers") from None
        if len(parts) == 4 and parts[3] not in ("log", "linear"):
            raise ValueError(f"{entry!r}: the scale must be log or linear, not {parts[3]!r}")
        log = parts[3] == "log" if len(parts) == 4 else name in LOG_BY_DEFAULT
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{entry!r}: need finite LOW < HIGH")
        if log and low <= 0:
            raise ValueError(f"{entry!r}: a log-scale range needs LOW > 0 (append :linear for a linear one)")
        if low < 0:
            raise ValueError(f"{entry!r}: {name} must not be negative")
        if name in UNIT_INTERVAL and high > 1:
            raise ValueError(f"{entry!r}: {name} must lie in [0, 1]")
        ranges[name] = (low, high, log)
    if "learning_rate" not in ranges:
        raise ValueError("the search must include learning_rate (for example learning_rate:1e-6:100)")
    return ranges


def describe_ranges(ranges: Ranges) -> dict[str, dict[str, Any]]:
    """JSON form of the ranges: {name: {low, high, scale}}."""
    return {name: {"low": low, "high": high, "scale": "log" if log else "linear"}
            for name, (low, high, log) in ranges.items()}


def _draw(low: float, high: float, log: bool, u_K: np.ndarray) -> np.ndarray:
    """Maps uniforms in [0, 1) onto [low, high] (log-uniformly when `log`), float32, within bounds."""
    values = np.exp(np.log(low) + u_K * (np.log(high) - np.log(low))) if log else low + u_K * (high - low)
    return np.clip(values, low, high).astype(np.float32)


def sample_random(ranges: Ranges, n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` candidates drawn independently: {name: float32[n]}, log-uniform or uniform per range.

    Each hyperparameter has its own stream from (seed, name), so adding a range to the search does
    not change the learning rates drawn for the same seed.
    """
    samples = {}
    for name, (low, high, log) in ranges.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        samples[name] = _draw(low, high, log, rng.random(n))
    return samples


def candidate_hparams(optimizer: str, sampled: Mapping[str, np.ndarray],
                      overrides: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per-member hyperparameters of a population of candidates: `optimizer`'s defaults (then
    `overrides`, e.g. the flags) for all, replaced by the sampled values where searched."""
    hparams_K = optimizers.population_hparams(optimizer, sampled["learning_rate"], overrides)
    for name, values_K in sampled.items():
        hparams_K[name] = np.asarray(values_K, np.float32)
    return hparams_K


def best_train_accuracy(record: Mapping[str, Any]) -> float:
    """Highest finite training-subset accuracy a member's curve reached (its final one if no curve)."""
    curve = [a for a in (record.get("curve") or {}).get("train_accuracy", []) if a is not None and math.isfinite(a)]
    if curve:
        return float(max(curve))
    final = record.get("final_train_accuracy")
    return float(final) if final is not None and math.isfinite(final) else 0.0


def objective(record: Mapping[str, Any], budget: runner.Budget) -> float:
    """A member's score, lower is better (a member record of `runner.run_sweep`).

    reached:  steps_to_target (at most max_steps).
    missed:   max_steps * (1 + target - best), best the highest training-subset accuracy it reached
              (below the target): above every reached value, and better accuracy scores lower.
    diverged: 2 * max_steps * (1 + target), worse than every other outcome.
    """
    max_steps, target = float(budget.max_steps), float(budget.target_accuracy)
    if record["status"] == "reached":
        return float(record["steps_to_target"])
    if record["status"] == "diverged":
        return DIVERGED_FACTOR * max_steps * (1.0 + target)
    return max_steps * (1.0 + max(target - min(best_train_accuracy(record), target), 0.0))


def make_trial(record: Mapping[str, Any], round_index: int, index: int, budget: runner.Budget,
               optuna_number: int | None = None) -> Trial:
    """The JSON record of one trained candidate: its round, hyperparameters, outcome, cost
    (steps_trained, the model-steps it took) and objective."""
    trial = {"index": index, "round": round_index, "learning_rate": record["learning_rate"],
             "hyperparameters": dict(record["hyperparameters"]), "status": record["status"],
             "steps_to_target": record["steps_to_target"], "best_train_accuracy": best_train_accuracy(record),
             "final_test_accuracy": record["final_test_accuracy"], "steps_trained": record["steps_trained"],
             "objective": objective(record, budget)}
    if optuna_number is not None:
        trial["optuna_trial"] = optuna_number
    return trial


def best_trial(trials: list[Trial]) -> Trial | None:
    """The trial of lowest objective; ties go to the earliest (the one the search found first)."""
    return min(trials, key=lambda t: (t["objective"], t["index"])) if trials else None


def incumbent_trace(trials: list[Trial]) -> list[dict[str, Any]]:
    """After each trial (in training order): trials so far, their model-steps, and the incumbent.

    A prefix of a random search's samples is itself a random search, so this is its cost curve.
    """
    trace, steps, best = [], 0, None
    for n, trial in enumerate(trials, 1):
        steps += trial["steps_trained"]
        if best is None or trial["objective"] < best["objective"]:
            best = trial
        trace.append({"trials": n, "round": trial["round"], "cumulative_model_steps": steps,
                      "incumbent_objective": best["objective"], "incumbent_index": best["index"]})
    return trace


@dataclasses.dataclass
class SearchResult:
    """What a search found and what it cost (in model-steps: member-steps actually trained)."""

    method: str
    trials: list[Trial]
    rounds: list[dict[str, Any]]  # per round: members, model_steps, cumulative_model_steps, incumbent
    timing: list[dict[str, Any]]  # per round: run_sweep's statistics

    @property
    def best(self) -> Trial | None:
        return best_trial(self.trials)

    @property
    def total_model_steps(self) -> int:
        return int(sum(t["steps_trained"] for t in self.trials))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "best": self.best, "total_model_steps": self.total_model_steps,
                "rounds": self.rounds, "trace": incumbent_trace(self.trials), "trials": self.trials,
                "timing": self.timing}


def _round_settings(settings: runner.SweepSettings, round_index: int) -> runner.SweepSettings:
    """Each round checkpoints in its own folder, so a finished round restores instead of training."""
    if settings.checkpoint_dir is None:
        return settings
    return dataclasses.replace(settings, checkpoint_dir=settings.checkpoint_dir / f"round-{round_index}")


def _train_round(dataset: Any, optimizer: str, hparams_K: dict[str, np.ndarray], settings: runner.SweepSettings,
                 round_index: int, static_overrides: tuple[tuple[str, float], ...],
                 stop: StopSignal | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One population of candidates trained by run_sweep: its member records and timing."""
    records, stats = runner.run_sweep(dataset, {optimizer: hparams_K}, {optimizer: static_overrides},
                                      _round_settings(settings, round_index), stop=stop)
    return records, {"round": round_index, **stats[optimizer]}


def _round_entry(round_index: int, trials: list[Trial], new: list[Trial]) -> dict[str, Any]:
    """The per-round summary: its members and model-steps, the cumulative cost, the incumbent."""
    return {"round": round_index, "members": len(new), "model_steps": int(sum(t["steps_trained"] for t in new)),
            "cumulative_model_steps": int(sum(t["steps_trained"] for t in trials)),
            "incumbent_objective": best_trial(trials)["objective"], "incumbent": best_trial(trials)}


def random_search(dataset: Any, optimizer: str, ranges: Ranges, n: int, settings: runner.SweepSettings,
                  seed: int, *, overrides: Mapping[str, float] | None = None,
                  static_overrides: tuple[tuple[str, float], ...] = (), stop: StopSignal | None = None,
                  on_round: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """`n` candidates from `sample_random(ranges, n, seed)` trained as one population (round 0);
    `overrides` sets the hyperparameters not searched (default: the optimizer's TF1 defaults)."""
    hparams_K = candidate_hparams(optimizer, sample_random(ranges, n, seed), overrides)
    records, timing = _train_round(dataset, optimizer, hparams_K, settings, 0, static_overrides, stop)
    trials = [make_trial(r, 0, i, settings.budget) for i, r in enumerate(records)]
    rounds = [_round_entry(0, trials, trials)]
    if on_round is not None:
        on_round(rounds[-1])
    return SearchResult("random", trials, rounds, [timing])


def tpe_gamma(n: int) -> int:
    """How many of `n` finished trials TPE models as "good": the top quarter (at most 25).

    Optuna's default (the top 10%) keeps one good trial of a first batch of 8, and its next batch
    then explores the range's edges: on a synthetic valley (8 seeds, 4 rounds x 8) the second
    round's median distance to the optimum was 2.0 decades with 10%, 1.05 with 25%, and the best
    of 24 trials 0.11 decades (no better than random) against 0.05.
    """
    return min(max(math.ceil(0.25 * n), 1), 25)


def make_study(seed: int, n_startup: int):
    """A minimising Optuna study with a seeded multivariate TPE sampler; its first `n_startup`
    trials are random, a batch's pending trials count as bad (constant liar) so it spreads, and
    the top quarter counts as good (`tpe_gamma`; Optuna >= 4.9 deprecates the argument and a
    version without it falls back to Optuna's default)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    kwargs = {"gamma": tpe_gamma} if "gamma" in inspect.signature(optuna.samplers.TPESampler).parameters else {}
    with warnings.catch_warnings():  # experimental (multivariate, constant_liar) / deprecated (gamma) notices
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                             constant_liar=True, **kwargs)
    return optuna.create_study(direction="minimize", sampler=sampler)


def distributions(ranges: Ranges) -> dict[str, Any]:
    """Optuna's search space of the ranges (FloatDistribution each)."""
    import optuna

    return {name: optuna.distributions.FloatDistribution(low, high, log=log)
            for name, (low, high, log) in ranges.items()}


def propose(study: Any, ranges: Ranges, batch: int) -> tuple[list[Any], dict[str, np.ndarray]]:
    """The next round: `batch` Optuna trials asked at once, and their values {name: float32[batch]}
    (clipped into the ranges after the cast to float32)."""
    space = distributions(ranges)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature warnings
        trials = [study.ask(space) for _ in range(batch)]
    sampled = {name: np.clip(np.array([t.params[name] for t in trials], np.float64), low, high).astype(np.float32)
               for name, (low, high, _) in ranges.items()}
    return trials, sampled


def bayes_search(dataset: Any, optimizer: str, ranges: Ranges, rounds: int, batch: int,
                 settings: runner.SweepSettings, seed: int, *, n_startup: int | None = None,
                 overrides: Mapping[str, float] | None = None,
                 static_overrides: tuple[tuple[str, float], ...] = (), stop: StopSignal | None = None,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """`rounds` rounds of TPE: each asks `batch` candidates, trains them as one population, tells
    their objectives. The first `n_startup` (default: one batch) candidates are random.

    Resumable: finished rounds restore from their checkpoints, and re-telling them rebuilds the
    same study, so the next round's proposals are the uninterrupted run's.
    """
    study = make_study(seed, batch if n_startup is None else n_startup)
    trials: list[Trial] = []
    entries, timing = [], []
    for r in range(rounds):
        asked, sampled = propose(study, ranges, batch)
        hparams_K = candidate_hparams(optimizer, sampled, overrides)
        records, stats = _train_round(dataset, optimizer, hparams_K, settings, r, static_overrides, stop)
        new = [make_trial(rec, r, len(trials) + i, settings.budget, t.number)
               for i, (rec, t) in enumerate(zip(records, asked))]
        for trial, t in zip(new, asked):
            study.tell(t, trial["objective"])
        trials += new
        timing.append(stats)
        entries.append(_round_entry(r, trials, new))
        if on_round is not None:
            on_round(entries[-1])
    return SearchResult("bayes", trials, entries, timing)


def format_trials(trials: list[Trial], searched: list[str], eval_every: int) -> str:
    """Printed table of the trials ranked by objective (best first), then the best one."""
    others = [n for n in searched if n != "learning_rate"]
    lines = [f"{'rank':>4}  {'round':>5}  {'learning_rate':>13}  " + "".join(f"{n:>10}  " for n in others)
             + f"{'status':<9}  {'steps':>6}  {'best_acc':>8}  {'test_acc':>8}  {'objective':>9}"]
    ranked = sorted(trials, key=lambda t: (t["objective"], t["index"]))
    for rank, t in enumerate(ranked, 1):
        lines.append(f"{rank:>4}  {t['round'] + 1:>5}  {t['learning_rate']:>13.4g}  "
                     + "".join(f"{t['hyperparameters'][n]:>10.4g}  " for n in others)
                     + f"{t['status']:<9}  {results.cell(t['steps_to_target'], 6, 'd')}  {t['best_train_accuracy']:>8.4f}  "
                     f"{t['final_test_accuracy']:>8.4f}  {t['objective']:>9.1f}")
    lines.append(f"steps: to the target (resolution {eval_every}); objective: steps when reached, else above "
                 "the budget and ranked by best training accuracy; diverged last")
    best = best_trial(trials)
    if best is not None and best["status"] == "reached":
        extra = "".join(f", {n} {best['hyperparameters'][n]:.4g}" for n in others)
        lines.append(f"best: learning rate {best['learning_rate']:.4g}{extra}: {best['steps_to_target']} steps "
                     f"to target (round {best['round'] + 1}, trial {best['index'] + 1})")
    elif best is not None:
        lines.append(f"no candidate reached the target; closest: learning rate {best['learning_rate']:.4g} "
                     f"(best training accuracy {best['best_train_accuracy']:.4f})")
    return "\n".join(lines)
