"""Hyperparameter search over populations: random search, and Bayesian optimisation in rounds.

Random search samples every candidate at once (log-uniform learning rates, uniform or log-uniform
other float hyperparameters) and trains them as ONE population. Bayesian search (Optuna's TPE,
batch ask/tell) trains each round's batch of candidates as one population, tells the results, and
asks for the next batch. Both score a member by lrlab's one ranking rule as a number
(`ranking.objective`, lower is better): steps to target when reached, else a penalty above every
reached value that still ranks by the best value of the target metric.

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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lrlab.engine.stop import StopSignal
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers
from lrlab.optim.optimizers import Optimizer
from lrlab.store import plots, ranking, views
from lrlab.store import records as records_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.task.target import Target
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import run_sweep

# name -> (low, high, log scale)
Ranges = dict[str, tuple[float, float, bool]]
Trial = dict[str, Any]  # one trained candidate, see `make_trial`
def searchable(optimizer: Optimizer) -> list[str]:
    """The hyperparameters of `optimizer` a search may vary (learning rate first)."""
    return list(optimizer.hparams)


def parse_ranges(entries: list[str], optimizer: Optimizer) -> Ranges:
    """['learning_rate:1e-5:1', 'b1:0.8:0.99:linear'] -> {name: (low, high, log)}.

    Each entry is NAME:LOW:HIGH[:log|linear]; the scale defaults to the hyperparameter's search
    scale (`optimizers.HParam.search`: log for learning rates and epsilons), else linear. NAME must
    be a hyperparameter of `optimizer`, each once, and the learning rate must be searched; LOW <
    HIGH, both finite and valid values of the hyperparameter; log needs LOW > 0. Bad input:
    ValueError naming the entry.
    """
    allowed = searchable(optimizer)
    ranges: Ranges = {}
    for entry in entries:
        parts = [p.strip() for p in entry.split(":")]
        if len(parts) not in (3, 4) or not parts[0]:
            raise ValueError(f"{entry!r} is not NAME:LOW:HIGH[:log|linear] (for example learning_rate:1e-5:1)")
        name = parts[0]
        if name not in allowed:
            raise ValueError(f"{entry!r}: {optimizer.name} has no hyperparameter {name!r}: choose from "
                             f"{', '.join(allowed)}")
        if name in ranges:
            raise ValueError(f"{entry!r}: {name} given twice")
        try:
            low, high = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"{entry!r}: LOW and HIGH must be numbers") from None
        if len(parts) == 4 and parts[3] not in ("log", "linear"):
            raise ValueError(f"{entry!r}: the scale must be log or linear, not {parts[3]!r}")
        spec = optimizer.hparams[name]
        log = parts[3] == "log" if len(parts) == 4 else bool(spec.search and spec.search[2])
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{entry!r}: need finite LOW < HIGH")
        if log and low <= 0:
            raise ValueError(f"{entry!r}: a log-scale range needs LOW > 0 (append :linear for a linear one)")
        try:
            for value in (low, high):
                spec.check(name, value)
        except ValueError as e:
            raise ValueError(f"{entry!r}: {e}") from None
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


def candidate_hparams(optimizer: Optimizer, sampled: Mapping[str, np.ndarray],
                      overrides: Mapping[str, float] | None = None) -> members_lib.Members:
    """The population of candidates: `optimizer`'s defaults (then `overrides`, e.g. the flags) for
    all, replaced by the sampled values where searched."""
    hparams_K = members_lib.population_hparams(optimizer, sampled["learning_rate"], overrides)
    for name, values_K in sampled.items():
        hparams_K[name] = np.asarray(values_K, np.float32)
    return members_lib.Members(optimizer, hparams_K)


def make_trial(record: Mapping[str, Any], round_index: int, index: int, max_steps: int, target: Target,
               target_key: str, optuna_number: int | None = None) -> Trial:
    """The JSON record of one trained candidate: its round, hyperparameters, outcome, cost
    (steps_trained, the model-steps it took) and objective."""
    metric = target.metric
    trial = {"index": index, "round": round_index, "learning_rate": record["learning_rate"],
             "hyperparameters": dict(record["hyperparameters"]), "status": record["status"],
             "steps_to_target": record["steps_to_target"],
             "best_target_value": ranking.best_value(record, target, target_key),
             f"final_test_{metric}": record.get(f"final_test_{metric}"), "steps_trained": record["steps_trained"],
             "objective": ranking.objective(record, max_steps, target, target_key)}
    if optuna_number is not None:
        trial["optuna_trial"] = optuna_number
    return trial


def trial_order(trial: Trial) -> tuple[float, float, int]:
    """A trial's place under lrlab's one ranking rule (`ranking.RULE`): its objective, then the lower
    learning rate, then the earlier trial."""
    return trial["objective"], trial["learning_rate"], trial["index"]


def best_trial(trials: list[Trial]) -> Trial | None:
    """The first trial by lrlab's one ranking rule (`trial_order`)."""
    return min(trials, key=trial_order) if trials else None


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
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the members, curves included
    study: Any = None  # bayes: the Optuna study its TPE sampler asked and was told (the run's exported study)

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


def _train_round(task: Task, members: members_lib.Members, settings: SweepSettings, round_index: int,
                 scope: Scope, stop: StopSignal | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One population of candidates trained by run_sweep, checkpointed in scope/round-<r>/ (a
    finished round restores instead of training): its member records and timing."""
    records, stats = run_sweep(task, [members], settings, scope=scope.child(f"round-{round_index}"), stop=stop)
    return records, {"round": round_index, **stats[members.name]}


def _round_entry(round_index: int, trials: list[Trial], new: list[Trial]) -> dict[str, Any]:
    """The per-round summary: its members and model-steps, the cumulative cost, the incumbent."""
    return {"round": round_index, "members": len(new), "model_steps": int(sum(t["steps_trained"] for t in new)),
            "cumulative_model_steps": int(sum(t["steps_trained"] for t in trials)),
            "incumbent_objective": best_trial(trials)["objective"], "incumbent": best_trial(trials)}


def _trials(task: Task, settings: SweepSettings, records: list[dict[str, Any]], round_index: int, first: int,
            optuna_numbers: list[int] | None = None) -> list[Trial]:
    return [make_trial(r, round_index, first + i, settings.budget.max_steps, task.target, task.target_key,
                       None if optuna_numbers is None else optuna_numbers[i]) for i, r in enumerate(records)]


def train_random(task: Task, optimizer: str | Optimizer, ranges: Ranges, n: int, settings: SweepSettings,
                  seed: int, *, overrides: Mapping[str, float] | None = None, scope: Scope = NO_SCOPE,
                  stop: StopSignal | None = None,
                  on_round: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """`n` candidates from `sample_random(ranges, n, seed)` trained as one population (round 0);
    `overrides` sets the hyperparameters not searched (default: the optimizer's defaults)."""
    members = candidate_hparams(optimizers.get(optimizer), sample_random(ranges, n, seed), overrides)
    records, timing = _train_round(task, members, settings, 0, scope, stop)
    trials = _trials(task, settings, records, 0, 0)
    rounds = [_round_entry(0, trials, trials)]
    if on_round is not None:
        on_round(rounds[-1])
    return SearchResult("random", trials, rounds, [timing], records)


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


def train_bayes(task: Task, optimizer: str | Optimizer, ranges: Ranges, rounds: int, batch: int,
                 settings: SweepSettings, seed: int, *, n_startup: int | None = None,
                 overrides: Mapping[str, float] | None = None, scope: Scope = NO_SCOPE,
                 stop: StopSignal | None = None,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> SearchResult:
    """`rounds` rounds of TPE: each asks `batch` candidates, trains them as one population, tells
    their objectives. The first `n_startup` (default: one batch) candidates are random.

    Resumable: finished rounds restore from their checkpoints, and re-telling them rebuilds the
    same study, so the next round's proposals are the uninterrupted run's.
    """
    opt = optimizers.get(optimizer)
    study = make_study(seed, batch if n_startup is None else n_startup)
    trials: list[Trial] = []
    entries, timing, all_records = [], [], []
    for r in range(rounds):
        asked, sampled = propose(study, ranges, batch)
        records, stats = _train_round(task, candidate_hparams(opt, sampled, overrides), settings, r, scope, stop)
        new = _trials(task, settings, records, r, len(trials), [t.number for t in asked])
        for trial, t, record, name in zip(new, asked, records, views.member_names(records)):
            views.annotate(t, record, name, task.target_key)
            study.tell(t, trial["objective"])
        all_records += records
        trials += new
        timing.append(stats)
        entries.append(_round_entry(r, trials, new))
        if on_round is not None:
            on_round(entries[-1])
    return SearchResult("bayes", trials, entries, timing, all_records, study)


def format_trials(trials: list[Trial], searched: list[str], eval_every: int, metric: str = "accuracy") -> str:
    """Printed table of the trials ranked by objective (best first), then the best one."""
    others = [n for n in searched if n != "learning_rate"]
    best_label = f"best_{metric}"[:10]
    lines = [f"{'rank':>4}  {'round':>5}  {'learning_rate':>13}  " + "".join(f"{n:>10}  " for n in others)
             + f"{'status':<9}  {'steps':>6}  {best_label:>10}  {'test_' + metric:>10}  {'objective':>9}"]
    ranked = sorted(trials, key=trial_order)
    for rank, t in enumerate(ranked, 1):
        lines.append(f"{rank:>4}  {t['round'] + 1:>5}  {t['learning_rate']:>13.4g}  "
                     + "".join(f"{t['hyperparameters'][n]:>10.4g}  " for n in others)
                     + f"{t['status']:<9}  {records_lib.cell(t['steps_to_target'], 6, 'd')}  "
                     f"{records_lib.cell(t['best_target_value'], 10, '.4f')}  "
                     f"{records_lib.cell(t.get('final_test_' + metric), 10, '.4f')}  {t['objective']:>9.1f}")
    lines.append(f"steps: to the target (resolution {eval_every}); objective: steps when reached, else above "
                 f"the budget and ranked by the best {metric}; diverged last")
    best = best_trial(trials)
    if best is not None and best["status"] == "reached":
        extra = "".join(f", {n} {best['hyperparameters'][n]:.4g}" for n in others)
        lines.append(f"best: learning rate {best['learning_rate']:.4g}{extra}: {best['steps_to_target']} steps "
                     f"to target (round {best['round'] + 1}, trial {best['index'] + 1})")
    elif best is not None:
        lines.append(f"no candidate reached the target; closest: learning rate {best['learning_rate']:.4g} "
                     f"(best {metric} {records_lib.cell(best['best_target_value'], 0, '.4f')})")
    return "\n".join(lines)


class SearchRun(StudyResult):
    """A search's results (its results.json as `summary`): the trials, the best one, the cost, the
    printed report and the figure."""

    FIGURE = "search.png"

    @property
    def best(self) -> Trial | None:
        return self.summary["best"]

    def report(self) -> str:
        s = self.summary
        text = format_trials(s["trials"], list(s["search"]["ranges"]), s["steps_to_target_resolution"],
                             s["target"]["metric"])
        timing = s["timing"]
        return (text + f"\ntotal {s['total_model_steps']:,} model-steps over {len(s['trials'])} candidates; compile "
                f"{sum(t['compile_seconds'] for t in timing):.1f} s, training "
                f"{sum(t['train_seconds'] for t in timing):.1f} s")

    def plot(self, path: Any) -> None:
        s = self.summary
        label = {"random": "Random search", "bayes": "Bayesian search (TPE)"}[s["method"]]
        plots.search_trials(s["trials"], s["trace"], s["rounds"], path, budget_steps=s["max_steps"],
                            eval_every=s["steps_to_target_resolution"],
                            title=f"{label}, {s['search']['optimizer']} on {s['model']['name']}, {s['dataset']}: "
                                  f"{s['search']['candidates']}, target {records_lib.target_text(s)}")


def search_details(method: str, num_samples: int = 48, rounds: int = 4, batch: int = 8,
                   n_startup: int | None = None) -> dict[str, Any]:
    """How a search draws its candidates, as its identity and results.json say it."""
    if method == "random":
        return {"num_samples": num_samples, "candidates": f"{num_samples} candidates"}
    return {"rounds": rounds, "batch": batch, "n_startup": n_startup or batch,
            "sampler": "optuna TPESampler(multivariate, constant_liar)", "candidates": f"{rounds} rounds x {batch} candidates"}


def search_identity(task: Task, optimizer: Optimizer, ranges: Ranges, seed: int, overrides: Mapping[str, float] | None,
                    settings: SweepSettings, details: Mapping[str, Any]) -> dict[str, Any]:
    """What a search's workdir must match to be resumed."""
    return {"task": task.identity(), "optimizer": optimizer.name, "ranges": describe_ranges(ranges), "seed": seed,
            "overrides": dict(overrides or {}), "settings": settings.to_json(), **details}


def search_trained(result: SearchResult, optimizer: Optimizer, ranges: Ranges, seed: int,
                   details: Mapping[str, Any]) -> Trained:
    """What a search hands the run skeleton: its trials, rounds and cost, its members for the views,
    and (Bayesian) its own Optuna study."""
    return Trained({"search": {"optimizer": optimizer.name, "ranges": describe_ranges(ranges), "seed": seed, **details},
                    "objective": ranking.OBJECTIVE, **result.to_json()}, members=result.records,
                   optuna_study=result.study, ranges=ranges)
