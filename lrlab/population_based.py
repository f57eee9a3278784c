"""Population Based Training (Jaderberg et al. 2017) inside the vectorized program.

The population trains as usual, one jitted segment of `eval_every` steps at a time. Every
`ready_steps` steps the members are ranked by the task's target metric (a diverged member
scores -inf): each member in the bottom `truncation` fraction copies every leaf of the Population
(parameters, optimizer state with its step count, model state, bookkeeping) from a random member
of the top fraction, keeping its own slot id (`member`) and key (`rng`), and is set running again;
then it explores: each hyperparameter in `explore` is the source's times a random perturb factor
(x0.8 or x1.2), or with `resample_probability` a fresh draw within its bounds, clipped to them.

Exploit and explore (`exploit_explore`) are one jitted program of array operations over the
member axis, on the device: parameters never visit the host, and the factors, bounds and
truncation are data (a new value never recompiles). Only small arrays go to the host at a ready
event: the source of each slot (int32[K]) and each member's hyperparameters, from which the
lineage of the best final member and its hyperparameter schedule are rebuilt.

PBT's time to target is the first evaluation at which any member reaches the task's target (the
segments are given an unreachable goal, so no member freezes);
its cost is K x steps run ("model-steps"), comparable with a sweep's sum of steps trained.
"""

from __future__ import annotations

import bisect

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lrlab import checkpoints as ckpt_lib
from lrlab import data as data_lib
from lrlab import optimizers, packing, plots, results, runner
from lrlab import population as pop_lib
from lrlab.optimizers import Members, Optimizer
from lrlab.population import Population
from lrlab import workdir as workdir_lib
from lrlab.sweep import SweepSettings, api_identity, engine_config, sweep_data, test_metrics
from lrlab.sweep import identity as sweep_identity
from lrlab.tasks import Target, Task
from lrlab.workdir import NO_SCOPE, Scope

KEY_SALT = 2**21  # PBT's random stream: fold_in(PRNGKey(seed), KEY_SALT), then the step


@dataclasses.dataclass(frozen=True)
class Bound:
    """Where one explored hyperparameter may go, and how it is resampled."""

    name: str
    low: float
    high: float
    log: bool  # resample log-uniformly (rates, epsilons) instead of uniformly

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"{self.name}: bounds must be finite with low < high, got {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: a log-uniform range needs low > 0, got {self.low}")


@dataclasses.dataclass(frozen=True)
class PBTConfig:
    """Settings of PBT (the training settings are sweep.SweepSettings)."""

    ready_steps: int = 200  # steps between exploit/explore events; a multiple of the evaluation period
    truncation: float = 0.2  # bottom fraction replaced by copies of the top fraction, in (0, 0.5]
    perturb_factors: tuple[float, ...] = (0.8, 1.2)
    resample_probability: float = 0.25
    explore: tuple[Bound, ...] = (Bound("learning_rate", *optimizers.RATE.search),)
    stop_at_target: bool = True  # end the run at the first evaluation where any member reaches the target

    def __post_init__(self):
        if self.ready_steps < 1:
            raise ValueError(f"ready_steps must be >= 1, got {self.ready_steps}")
        if not 0 < self.truncation <= 0.5:
            raise ValueError(f"truncation must be in (0, 0.5], got {self.truncation}")
        if not self.perturb_factors or not all(math.isfinite(f) and f > 0 for f in self.perturb_factors):
            raise ValueError(f"perturb factors must be positive, got {self.perturb_factors}")
        if not 0 <= self.resample_probability <= 1:
            raise ValueError(f"resample_probability must be in [0, 1], got {self.resample_probability}")
        names = [b.name for b in self.explore]
        if len(set(names)) != len(names):
            raise ValueError(f"a hyperparameter is explored twice: {', '.join(names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.explore)

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "perturb_factors": list(self.perturb_factors),
                "explore": [dataclasses.asdict(b) for b in self.explore]}


def parse_explore(entries: Sequence[str], optimizer: Optimizer) -> tuple[Bound, ...]:
    """--explore entries `name` or `name:low:high` -> Bounds (the hyperparameter's search range,
    `optimizers.HParam.search`, where not given); ValueError naming the bad entry: unknown to
    `optimizer`, listed twice, malformed, or bounds outside the hyperparameter's valid range."""
    bounds: list[Bound] = []
    for entry in entries:
        name, *limits = (part.strip() for part in entry.split(":"))
        spec = optimizer.hparams.get(name)
        if spec is None:
            raise ValueError(f"{entry!r}: {optimizer.name} has no hyperparameter {name!r} "
                             f"(it has {', '.join(optimizer.hparams)})")
        if name in [b.name for b in bounds]:
            raise ValueError(f"{entry!r}: {name} listed twice")
        if not limits and spec.search is None:
            raise ValueError(f"{entry!r}: no default range for {name}: give {name}:LOW:HIGH")
        if limits and len(limits) != 2:
            raise ValueError(f"{entry!r} is not NAME or NAME:LOW:HIGH")
        try:
            low, high = (float(v) for v in limits) if limits else spec.search[:2]
            for value in (low, high):
                spec.check(name, value)
            bounds.append(Bound(name, low, high, spec.search[2] if spec.search else False))
        except ValueError as e:
            raise ValueError(f"{entry!r}: {e}") from None
    if not bounds:
        raise ValueError("explore at least one hyperparameter (for example learning_rate)")
    return tuple(bounds)


class Explore(NamedTuple):
    """exploit_explore's settings as data (arrays): changing any value never recompiles.
    H: the explored hyperparameters, in the order of the `names` given with them."""

    truncation: jax.Array  # float32[]
    factors: jax.Array  # float32[F]: perturb factors, one drawn per copied member
    resample_probability: jax.Array  # float32[]
    low_H: jax.Array  # float32[H]
    high_H: jax.Array  # float32[H]
    log_H: jax.Array  # bool[H]: resample log-uniformly


def explore_arrays(cfg: PBTConfig) -> Explore:
    """The array form of `cfg`'s exploit/explore settings."""
    return Explore(jnp.float32(cfg.truncation), jnp.asarray(cfg.perturb_factors, jnp.float32),
                   jnp.float32(cfg.resample_probability), jnp.asarray([b.low for b in cfg.explore], jnp.float32),
                   jnp.asarray([b.high for b in cfg.explore], jnp.float32),
                   jnp.asarray([b.log for b in cfg.explore], bool))


def exploit_explore(pop: Population, score_K: jax.Array, key: jax.Array, explore: Explore,
                    names: tuple[str, ...]) -> tuple[Population, jax.Array]:
    """One PBT ready event (pure, jit-able): truncation selection, copy, perturb/resample.

    Members are ranked by `score_K` (diverged or non-finite: -inf; ties broken at random; padding
    members take no part). The bottom max(1, floor(n * truncation)) of the n real members, and
    every diverged one, copy every leaf of a random top member (top: the same number of best
    healthy members), except their `member` id and `rng`; their status becomes RUNNING, and each
    hyperparameter in `names` becomes source * factor (a random one of explore.factors) or, with
    explore.resample_probability, a fresh draw in [low, high]; clipped to [low, high].
    Returns the new population and source_K (int32[K]: the member each slot copied; itself if none).
    """
    k = score_K.shape[0]
    index_K = jnp.arange(k, dtype=jnp.int32)
    real_K = pop.status != pop_lib.PADDING
    healthy_K = real_K & (pop.status != pop_lib.DIVERGED) & jnp.isfinite(score_K)
    score_K = jnp.where(healthy_K, score_K, -jnp.inf)
    key_tie, key_pick, key_explore = jax.random.split(key, 3)
    # Best first, padding last; jnp.lexsort's last key is the primary one.
    order_K = jnp.lexsort((jax.random.uniform(key_tie, (k,)), -score_K, ~real_K)).astype(jnp.int32)
    rank_K = jnp.zeros((k,), jnp.int32).at[order_K].set(index_K)
    n_real = real_K.sum()
    n_cut = jnp.maximum(1, jnp.floor(n_real * explore.truncation).astype(jnp.int32))
    top_K = (rank_K < n_cut) & healthy_K  # healthy members rank first, so the top ranks are 0..n_top-1
    n_top = top_K.sum()
    bottom_K = real_K & ((rank_K >= n_real - n_cut) | ~healthy_K)
    replaced_K = bottom_K & ~top_K & (n_top > 0)
    pick_K = jax.random.randint(key_pick, (k,), 0, jnp.maximum(n_top, 1))
    source_K = jnp.where(replaced_K, order_K[pick_K], index_K)

    new = jax.tree_util.tree_map(lambda x: x[source_K], pop)
    new = new.replace(member=pop.member, rng=pop.rng, status=jnp.where(replaced_K, pop_lib.RUNNING, pop.status))
    hyper = dict(new.opt_state.hyperparams)
    for h, (name, key_h) in enumerate(zip(names, jax.random.split(key_explore, max(len(names), 1)))):
        key_factor, key_resample, key_value = jax.random.split(key_h, 3)
        value_K = hyper[name]  # the source's, copied above
        low, high, log = explore.low_H[h], explore.high_H[h], explore.log_H[h]
        factor_K = explore.factors[jax.random.randint(key_factor, (k,), 0, explore.factors.shape[0])]
        u_K = jax.random.uniform(key_value, (k,))
        log_low, log_high = jnp.log(jnp.maximum(low, 1e-30)), jnp.log(jnp.maximum(high, 1e-30))
        drawn_K = jnp.where(log, jnp.exp(log_low + u_K * (log_high - log_low)), low + u_K * (high - low))
        resample_K = jax.random.uniform(key_resample, (k,)) < explore.resample_probability
        explored_K = jnp.clip(jnp.where(resample_K, drawn_K, value_K * factor_K), low, high)
        hyper[name] = jnp.where(replaced_K, explored_K, value_K).astype(value_K.dtype)
    new = new.replace(opt_state=new.opt_state._replace(hyperparams=hyper))
    return new, source_K


def make_exploit_fn(names: tuple[str, ...], mesh: jax.sharding.Mesh) -> Callable:
    """exploit_explore jitted for `names`, the population donated and kept sharded over `mesh`."""
    return jax.jit(functools.partial(exploit_explore, names=names), donate_argnums=0,
                   out_shardings=(packing.member_sharding(mesh), packing.replicated(mesh)))


# Lineage (host, numpy): from the sources of the ready events back to the start.

def lineage(sources_EK: np.ndarray, member: int) -> np.ndarray:
    """int[E+1]: the slot whose state `member`'s final state descends from, in each interval:
    entry 0 before the first event, entry e+1 after event e (the last entry is `member`)."""
    slots = [int(member)]
    for source_K in np.asarray(sources_EK)[::-1]:
        slots.append(int(source_K[slots[-1]]))
    return np.asarray(slots[::-1], np.int64)


def lineage_values(values_E1K: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The value (a hyperparameter) the lineage had in each interval: values_E1K[i, slots[i]]."""
    values = np.asarray(values_E1K)
    return values[np.arange(len(slots)), slots]


def interval_of(step_T: Sequence[int], event_steps: Sequence[int]) -> np.ndarray:
    """For each evaluation step, the interval it belongs to: how many events came before it (an
    evaluation at a ready step comes before that step's event)."""
    return np.searchsorted(np.asarray(event_steps), np.asarray(step_T), side="left")


@dataclasses.dataclass
class PBTResult:
    """What one PBT run measured (host arrays; K members, T evaluations, E ready events)."""

    optimizer: str
    engine: pop_lib.EngineConfig  # the population's program settings (for the test-set evaluation)
    explored: tuple[str, ...]  # the hyperparameters PBT perturbs (hparams_E1K records them all)
    k: int
    step_T: np.ndarray  # int64[T]: steps run at each evaluation
    value_TK: np.ndarray  # float32[T, K]: each slot's target metric at each evaluation
    loss_TK: np.ndarray  # float32[T, K]: each slot's mean training loss over the segment
    event_steps: np.ndarray  # int64[E]
    sources_EK: np.ndarray  # int64[E, K]: the slot each slot copied at each event (itself if none)
    scores_EK: np.ndarray  # float32[E, K]: the ranking scores
    hparams_E1K: dict[str, np.ndarray]  # name -> float32[E+1, K]: initial, then after each event
    final: Population  # the K real members at the end (numpy leaves)
    best_member: int  # the slot with the best final target metric (healthy members)
    steps_to_target: int | None  # first evaluation at which any member reached the target
    member_at_target: int | None
    seconds_to_target: float | None
    target: Target
    steps_run: int
    stopped_by: str  # "target", "max_steps", "max_seconds" or "no_member_running"
    compile_seconds: float
    train_seconds: float
    exploit_seconds: float  # ready events (compilation of the exploit program included)

    @property
    def model_steps(self) -> int:
        """The compute spent: every member runs every step (K x steps run)."""
        return self.k * self.steps_run

    @property
    def model_steps_to_target(self) -> int | None:
        return None if self.steps_to_target is None else self.k * self.steps_to_target

    @property
    def best_lineage(self) -> np.ndarray:
        return lineage(self.sources_EK, self.best_member)

    def schedule_of(self, name: str, slots: np.ndarray | None = None) -> dict[str, list]:
        """The lineage's (default: the best's) value of hyperparameter `name` from each step on:
        {"step": [0, event steps...], name: [...], "slot": [...]}."""
        slots = self.best_lineage if slots is None else slots
        return {"step": [0, *map(int, self.event_steps)],
                name: lineage_values(self.hparams_E1K[name], slots).astype(float).tolist(),
                "slot": slots.astype(int).tolist()}

    def lineage_values(self) -> np.ndarray:
        """float32[T]: the best lineage's target metric at each evaluation."""
        slot_T = self.best_lineage[interval_of(self.step_T, self.event_steps)]
        return self.value_TK[np.arange(len(self.step_T)), slot_T]


def result_json(result: PBTResult, target_key: str, test_K: dict[str, np.ndarray] | None = None,
                batch_size: int = 100) -> dict[str, Any]:
    """results.json's PBT fields: events, curves, the best lineage and its schedules, cost, target.
    `target_key` names the target metric ("train_accuracy"); `test_K` the test set's metrics."""
    names, explored = list(result.hparams_E1K), list(result.explored)
    best = result.best_member
    slots = result.best_lineage
    final_hparams = {n: v[-1] for n, v in result.hparams_E1K.items()}
    last = lambda m: float(result.value_TK[-1, m]) if len(result.step_T) else None
    tests = lambda m: {f"final_test_{name}": float(v[m]) for name, v in (test_K or {}).items()}
    return {
        "optimizer": result.optimizer,
        "explored": explored,
        "members": result.k,
        "initial_hyperparameters": {n: v[0].astype(float).tolist() for n, v in result.hparams_E1K.items()},
        "events": [{"step": int(s), "source": result.sources_EK[e].astype(int).tolist(),
                    "replaced": np.flatnonzero(result.sources_EK[e] != np.arange(result.k)).tolist(),
                    "score": result.scores_EK[e].astype(float).tolist(),
                    "hyperparameters": {n: result.hparams_E1K[n][e + 1].astype(float).tolist() for n in names}}
                   for e, s in enumerate(result.event_steps)],
        "curves": {"step": result.step_T.astype(int).tolist(),
                   target_key: result.value_TK.astype(float).tolist(),
                   "loss": result.loss_TK.astype(float).tolist(),
                   f"best_lineage_{target_key}": result.lineage_values().astype(float).tolist()},
        # every slot's hyperparameters from each event on: {"step": [0, event steps...], name: [[K], ...]}
        "hyperparameter_schedules": {"step": [0, *map(int, result.event_steps)],
                                     **{n: v.astype(float).tolist() for n, v in result.hparams_E1K.items()}},
        "best": {"member": best, "lineage": slots.astype(int).tolist(), f"final_{target_key}": last(best),
                 **tests(best), "hyperparameters": {n: float(final_hparams[n][best]) for n in names},
                 "schedules": {n: result.schedule_of(n, slots) for n in explored}},
        "final_members": [{"member": m, "status": pop_lib.STATUS_NAMES[int(result.final.status[m])],
                           "hyperparameters": {n: float(final_hparams[n][m]) for n in names},
                           f"final_{target_key}": last(m), **tests(m)}
                          for m in range(result.k)],
        "steps_to_target": result.steps_to_target,
        "examples_to_target": None if result.steps_to_target is None else result.steps_to_target * batch_size,
        "seconds_to_target": result.seconds_to_target,
        "member_at_target": result.member_at_target,
        "model_steps_to_target": result.model_steps_to_target,
        "steps_run": result.steps_run,
        "model_steps": result.model_steps,
        "stopped_by": result.stopped_by,
        "timing": {"compile_seconds": result.compile_seconds, "train_seconds": result.train_seconds,
                   "exploit_seconds": result.exploit_seconds},
    }


def member_records(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each slot of a PBT results.json as a member record (views.py: the Optuna study, TensorBoard,
    members.csv): its final hyperparameters (`initial_<name>` its first), status, steps to target
    (the slot that reached it first), final metrics, and curves: the target metric, the training
    loss and the learning rate its lineage trained with at each evaluation."""
    key, curves, schedules = summary["target_key"], summary["curves"], summary["hyperparameter_schedules"]
    entry_T = [bisect.bisect_left(schedules["step"], step) - 1 for step in curves["step"]]  # before that step's event
    records = []
    for m, final in enumerate(summary["final_members"]):
        reached = summary["member_at_target"] == m
        records.append({
            "optimizer": summary["optimizer"], "member": m, "hyperparameters": final["hyperparameters"],
            **{f"initial_{n}": v[m] for n, v in summary["initial_hyperparameters"].items()},
            "status": final["status"],
            "steps_to_target": summary["steps_to_target"] if reached else None,
            **{k: v for k, v in final.items() if k.startswith("final_")},
            "curve": {"step": curves["step"], key: [row[m] for row in curves[key]],
                      "loss": [row[m] for row in curves["loss"]],
                      "learning_rate": [schedules["learning_rate"][e][m] for e in entry_T]}})
    return records


class PBTHook(runner.Hook):
    """PBT in the segment loop: after each evaluation it records every slot's target metric, loss
    and statuses, notes the first evaluation at the target (ending the run there with
    `stop_at_target`), and at each ready step runs exploit/explore on the device."""

    name = "pbt"

    def __init__(self, cfg: PBTConfig, k: int, names: tuple[str, ...], exploit: Callable, explore: Explore,
                 key: jax.Array, target: Any, initial_hparams: dict[str, list[float]]):
        self.cfg, self.k, self.names, self.exploit, self.explore, self.key = cfg, k, names, exploit, explore, key
        self.target = target
        self.record: dict[str, Any] = {"exploit_seconds": 0.0, "steps": [], "values": [], "loss": [],
                                       "event_steps": [], "sources": [], "scores": [],
                                       "hparams": [initial_hparams], "at_target": None}

    def state(self) -> dict[str, Any]:
        return self.record

    def restore(self, state: dict[str, Any]) -> None:
        if state:
            self.record = state

    def after_segment(self, loop: runner.Loop, metrics: pop_lib.SegmentMetrics) -> None:
        rec, k = self.record, self.k
        value_K = loop.host["metrics"][self.target.metric][:k]
        status_K = loop.status[:k]
        rec["steps"].append(loop.step)
        rec["values"].append(value_K.astype(float).tolist())
        rec["loss"].append(loop.host["loss"][:k].astype(float).tolist())
        at = np.flatnonzero((status_K != pop_lib.DIVERGED) & self.target.reached(value_K))
        if rec["at_target"] is None and at.size:
            rec["at_target"] = {"step": loop.step, "member": int(at[np.argmax(self.target.score(value_K[at]))]),
                                "seconds": loop.train_seconds}
        if self.cfg.stop_at_target and rec["at_target"] is not None:
            loop.finish("target")
        elif loop.running.size and loop.step % self.cfg.ready_steps == 0:
            start = time.perf_counter()
            score = self.target.score(metrics.metrics[self.target.metric])
            sub, source_K = self.exploit(loop.sub, score, jax.random.fold_in(self.key, loop.step), self.explore)
            loop.replace_sub(sub)
            rec["event_steps"].append(loop.step)
            rec["sources"].append(packing.to_host(source_K)[:k].astype(int).tolist())
            rec["scores"].append(self.target.score(value_K).astype(float).tolist())
            rec["hparams"].append(_host_hparams(loop.sub, self.names, k))
            rec["exploit_seconds"] += time.perf_counter() - start

    def postfix(self, loop: runner.Loop) -> dict[str, Any]:
        last = self.record["values"][-1] if self.record["values"] else [np.nan]
        best = np.nanmax(self.target.score(np.asarray(last, np.float64)))
        return {f"best {self.target.metric}": f"{self.target.score(best):.4f}",
                "events": len(self.record["event_steps"])}


def run_pbt(task: Task, members: Members, cfg: PBTConfig, settings: SweepSettings, *, scope: Scope = NO_SCOPE,
            stop: ckpt_lib.StopSignal | None = None, mesh: jax.sharding.Mesh | None = None,
            exploit_seed: int | None = None) -> PBTResult:
    """Trains one population (`members`) on `task` with PBT.

    `settings` gives the data subset, budget (max_steps, max_seconds, eval_every), seed and the
    techniques, as for sweep.run_sweep (whose data and engine configuration it reuses); sequential,
    pruning and early stopping do not apply (ValueError). With a checkpoint `scope` it checkpoints
    every `checkpoint_every` segments and on `stop` (then raises checkpoints.Interrupted), and a
    rerun resumes with identical results. `exploit_seed` (default: settings.seed) seeds only the
    exploit/explore randomness, so PBT's own randomness can vary while the training stays fixed.
    """
    budget = settings.budget
    if cfg.ready_steps % budget.eval_every:
        raise ValueError(f"ready_steps ({cfg.ready_steps}) must be a multiple of eval_every ({budget.eval_every})")
    if settings.sequential or settings.prune is not None or settings.patience:
        raise ValueError("PBT trains one vectorized population: no sequential mode, pruning or early stopping")
    known = set(members.optimizer.hparams)
    if not set(cfg.names) <= known:
        raise ValueError(f"{members.name} cannot explore {sorted(set(cfg.names) - known)} (it has {sorted(known)})")
    if members.size < 2:
        raise ValueError("PBT needs at least 2 members")
    data, eval_chunk = sweep_data(task, settings)
    engine = engine_config(task, members.optimizer, settings, eval_chunk)
    programs = runner.Programs(engine, mesh)
    k = members.size
    pop = pop_lib.init_population(engine, members.hparams, settings.seed)
    names = tuple(sorted(pop.opt_state.hyperparams))  # every hyperparameter is recorded
    root = jax.random.PRNGKey(settings.seed if exploit_seed is None else exploit_seed)
    hook = PBTHook(cfg, k, names, make_exploit_fn(cfg.names, programs.mesh), programs.replicate(explore_arrays(cfg)),
                   jax.random.fold_in(root, KEY_SALT), task.target, _host_hparams(pop, names, k))
    ident = sweep_identity(task, members, settings, pbt=cfg.to_json(),
                           **({} if exploit_seed is None else {"exploit_seed": exploit_seed}))
    out = runner.train(pop, data, budget, data_lib.data_key(settings.seed), programs, freeze_at_target=False,
                       repack=False, curves=False, hooks=[hook], progress=settings.progress, desc=f"pbt {members.name}",
                       checkpoints=scope.checkpoints(ident), stop=stop)
    return _result(members.name, engine, cfg.names, k, hook.record, out)


def _host_hparams(pop: Population, names: tuple[str, ...], k: int) -> dict[str, list[float]]:
    """Every member's hyperparameters (small arrays: the only per-member state that leaves the device)."""
    hyper = packing.to_host({n: pop.opt_state.hyperparams[n] for n in names})
    return {n: hyper[n][:k].astype(float).tolist() for n in names}


def _result(name: str, engine: pop_lib.EngineConfig, explored: tuple[str, ...], k: int, state: dict[str, Any],
            out: runner.RunOutput) -> PBTResult:
    """The PBTResult of a finished run's hook record and loop output."""
    final = out.final
    target = engine.task.target
    value_TK = np.asarray(state["values"], np.float32).reshape(-1, k)
    healthy = np.asarray(final.status) != pop_lib.DIVERGED
    last = np.where(healthy, target.score(value_TK[-1]), -np.inf) if len(value_TK) else np.zeros(k)
    at = state["at_target"]
    names = list(state["hparams"][0])
    return PBTResult(
        optimizer=name, engine=engine, explored=explored, k=k, step_T=np.asarray(state["steps"], np.int64),
        value_TK=value_TK,
        loss_TK=np.asarray(state["loss"], np.float32).reshape(-1, k),
        event_steps=np.asarray(state["event_steps"], np.int64),
        sources_EK=np.asarray(state["sources"], np.int64).reshape(-1, k),
        scores_EK=np.asarray(state["scores"], np.float32).reshape(-1, k),
        hparams_E1K={n: np.asarray([h[n] for h in state["hparams"]], np.float32) for n in names},
        final=final, best_member=int(np.argmax(last)),
        steps_to_target=None if at is None else at["step"], member_at_target=None if at is None else at["member"],
        seconds_to_target=None if at is None else at["seconds"], target=target,
        steps_run=out.steps_run, stopped_by=out.ended_by, compile_seconds=out.compile_seconds,
        train_seconds=out.train_seconds, exploit_seconds=state["exploit_seconds"])


def format_summary(summary: dict[str, Any]) -> str:
    """The printed report of a PBT results.json: time to target and cost, the best lineage's
    hyperparameter schedule, and every final member."""
    key, metric = summary["target_key"], summary["target"]["metric"]
    goal = results.target_text(summary)
    k, best = summary["members"], summary["best"]
    names = list(best["schedules"])
    lines = [f"PBT {summary['optimizer']}: {k} members, {len(summary['events'])} ready events; stopped by "
             f"{summary['stopped_by']} after {summary['steps_run']} steps ({summary['model_steps']:,} model-steps "
             f"= {k} x {summary['steps_run']})"]
    if summary["steps_to_target"] is None:
        lines.append(f"no member reached {goal}")
    else:
        lines.append(f"steps to {goal}: {summary['steps_to_target']} ({summary['examples_to_target']:,} examples, "
                     f"{summary['seconds_to_target']:.1f} s, member {summary['member_at_target']}; resolution "
                     f"{summary.get('steps_to_target_resolution', '?')} steps), model-steps to target "
                     f"{summary['model_steps_to_target']:,}")
    lines.append(f"best member {best['member']}: {key} {results.cell(best.get('final_' + key), 0, '.4f')}, "
                 f"test {metric} {results.cell(best.get('final_test_' + metric), 0, '.4f')}; its lineage's schedule:")
    lines.append(f"{'from step':>9}  {'slot':>4}  " + "  ".join(f"{n:>13}" for n in names))
    first = best["schedules"][names[0]]
    for i, step in enumerate(first["step"]):
        lines.append(f"{step:>9d}  {first['slot'][i]:>4d}  "
                     + "  ".join(f"{best['schedules'][n][n][i]:>13.4g}" for n in names))
    lines.append(f"{'member':>6}  {'status':<9}  " + "  ".join(f"{n:>13}" for n in names)
                 + f"  {key:>14}  {'test_' + metric:>13}")
    for m in summary["final_members"]:
        lines.append(f"{m['member']:>6d}  {m['status']:<9}  "
                     + "  ".join(f"{m['hyperparameters'][n]:>13.4g}" for n in names)
                     + f"  {results.cell(m.get('final_' + key), 14, '.4f')}  "
                     f"{results.cell(m.get('final_test_' + metric), 13, '.4f')}")
    return "\n".join(lines)


EXPERIMENT = "pbt"


class PBTRun:
    """A PBT run's results (its results.json as `summary`), with the printed report and the figure."""

    def __init__(self, summary: dict[str, Any], result: PBTResult | None = None, paths: dict | None = None):
        self.summary, self.result, self.paths = summary, result, dict(paths or {})

    def report(self) -> str:
        text = format_summary(self.summary)
        timing = self.summary["timing"]
        return (text + f"\ncompile {timing['compile_seconds']:.1f} s, training {timing['train_seconds']:.1f} s, "
                f"ready events {timing['exploit_seconds']:.1f} s")

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.pbt_lineage(s, path, title=f"PBT of {s['optimizer']} on {s['model']['name']}, {s['dataset']}: "
                                         f"{s['members']} members, ready every {s['pbt']['ready_steps']} steps, "
                                         f"truncation {s['pbt']['truncation']:g}")


def pbt(task: Task, members: Members, cfg: PBTConfig = PBTConfig(), settings: SweepSettings = SweepSettings(),
        workdir: Any = None, *, stop: ckpt_lib.StopSignal | None = None, overwrite: bool = False,
        exploit_seed: int | None = None, info: dict[str, Any] | None = None) -> PBTRun:
    """PBT of one population on `task`, as `python -m lrlab.experiments.pbt` runs it: with a
    `workdir`, resumable, and writing results.json and pbt.png there."""
    started = time.perf_counter()
    run = workdir_lib.resolve(workdir, EXPERIMENT, api_identity(task, [members], settings, pbt=cfg.to_json()),
                              overwrite)
    if run is not None and run.finished:
        return PBTRun(run.read_results(), paths={"results": run.results_path})
    try:
        result = run_pbt(task, members, cfg, settings, scope=run.scope() if run else NO_SCOPE, stop=stop,
                         exploit_seed=exploit_seed)
    finally:
        if run is not None:
            run.close()
    summary = {**results.run_header(EXPERIMENT), **results.task_header(task, settings), **(info or {}),
               "pbt": cfg.to_json(),
               **result_json(result, task.target_key, test_metrics(result.engine, result.final), settings.batch_size)}
    out = PBTRun(summary, result)
    if run is not None:
        out.paths = run.save(summary, {"pbt.png": out.plot}, started=started, members=member_records(summary),
                             views=settings.views)
    return out
