"""Population Based Training (Jaderberg et al. 2017) inside the vectorized program.

The population trains as usual, one jitted segment of `eval_every` steps at a time. Every
`ready_steps` steps the members are ranked by their training-subset accuracy (a diverged member
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

PBT's time to target is the first evaluation at which any member reaches the target accuracy on
the training subset (the segment itself is given an unreachable target, so no member freezes);
its cost is K x steps run ("model-steps"), comparable with a sweep's sum of steps trained.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from lrlab import checkpoints as ckpt_lib
from lrlab import data as data_lib
from lrlab import optimizers, results, runner
from lrlab import population as pop_lib
from lrlab.population import Population

# Default bounds of the hyperparameters PBT may explore: name -> (low, high, log-uniform resample).
DEFAULT_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (1e-6, 100.0, True),
    "momentum": (0.0, 0.99, False),
    "b1": (0.0, 0.99, False),
    "b2": (0.9, 0.9999, False),
    "rho": (0.5, 0.999, False),
    "decay": (0.5, 0.999, False),
    "eps": (1e-10, 1e-4, True),
}
UNREACHABLE = 2.0  # the segment's target: accuracy never reaches it, so no member freezes at the target
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
    """Settings of PBT (the training settings are runner.SweepSettings)."""

    ready_steps: int = 200  # steps between exploit/explore events; a multiple of the evaluation period
    truncation: float = 0.2  # bottom fraction replaced by copies of the top fraction, in (0, 0.5]
    perturb_factors: tuple[float, ...] = (0.8, 1.2)
    resample_probability: float = 0.25
    explore: tuple[Bound, ...] = (Bound("learning_rate", *DEFAULT_BOUNDS["learning_rate"]),)
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


def parse_explore(entries: Sequence[str], optimizer: str) -> tuple[Bound, ...]:
    """--explore entries `name` or `name:low:high` -> Bounds (DEFAULT_BOUNDS where not given);
    ValueError naming the bad entry: unknown to `optimizer`, listed twice, malformed bounds."""
    known = ["learning_rate", *optimizers.default_hparams(optimizer)]
    bounds: list[Bound] = []
    for entry in entries:
        name, *limits = (part.strip() for part in entry.split(":"))
        if name not in known:
            raise ValueError(f"{entry!r}: {optimizer} has no hyperparameter {name!r} (it has {', '.join(known)})")
        if name in [b.name for b in bounds]:
            raise ValueError(f"{entry!r}: {name} listed twice")
        default = DEFAULT_BOUNDS.get(name)
        if not limits and default is None:
            raise ValueError(f"{entry!r}: no default bounds for {name}: give {name}:LOW:HIGH")
        if limits and len(limits) != 2:
            raise ValueError(f"{entry!r} is not NAME or NAME:LOW:HIGH")
        try:
            low, high = (float(v) for v in limits) if limits else default[:2]
            bounds.append(Bound(name, low, high, default[2] if default else False))
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
                   out_shardings=(pop_lib.member_sharding(mesh), pop_lib.replicated(mesh)))


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
    engine: pop_lib.EngineConfig  # the population's program settings (for runner.test_accuracy)
    explored: tuple[str, ...]  # the hyperparameters PBT perturbs (hparams_E1K records them all)
    k: int
    step_T: np.ndarray  # int64[T]: steps run at each evaluation
    accuracy_TK: np.ndarray  # float32[T, K]: training-subset accuracy of each slot
    loss_TK: np.ndarray  # float32[T, K]: each slot's mean training loss over the segment
    event_steps: np.ndarray  # int64[E]
    sources_EK: np.ndarray  # int64[E, K]: the slot each slot copied at each event (itself if none)
    scores_EK: np.ndarray  # float32[E, K]: the ranking scores
    hparams_E1K: dict[str, np.ndarray]  # name -> float32[E+1, K]: initial, then after each event
    final: Population  # the K real members at the end (numpy leaves)
    best_member: int  # the slot with the highest final training-subset accuracy (healthy members)
    steps_to_target: int | None  # first evaluation at which any member reached the target
    member_at_target: int | None
    seconds_to_target: float | None
    target_accuracy: float
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

    def lineage_accuracy(self) -> np.ndarray:
        """float32[T]: the best lineage's training-subset accuracy at each evaluation."""
        slot_T = self.best_lineage[interval_of(self.step_T, self.event_steps)]
        return self.accuracy_TK[np.arange(len(self.step_T)), slot_T]


def result_json(result: PBTResult, test_accuracy_K: np.ndarray | None = None,
                batch_size: int = 100) -> dict[str, Any]:
    """results.json's PBT fields: events, curves, the best lineage and its schedules, cost, target."""
    names, explored = list(result.hparams_E1K), list(result.explored)
    best = result.best_member
    slots = result.best_lineage
    final_hparams = {n: v[-1] for n, v in result.hparams_E1K.items()}
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
                   "train_accuracy": result.accuracy_TK.astype(float).tolist(),
                   "loss": result.loss_TK.astype(float).tolist(),
                   "best_lineage_train_accuracy": result.lineage_accuracy().astype(float).tolist()},
        # every slot's hyperparameters from each event on: {"step": [0, event steps...], name: [[K], ...]}
        "hyperparameter_schedules": {"step": [0, *map(int, result.event_steps)],
                                     **{n: v.astype(float).tolist() for n, v in result.hparams_E1K.items()}},
        "best": {"member": best, "lineage": slots.astype(int).tolist(),
                 "final_train_accuracy": float(result.accuracy_TK[-1, best]) if len(result.step_T) else None,
                 "final_test_accuracy": None if test_accuracy_K is None else float(test_accuracy_K[best]),
                 "hyperparameters": {n: float(final_hparams[n][best]) for n in names},
                 "schedules": {n: result.schedule_of(n, slots) for n in explored}},
        "final_members": [{"member": m, "status": pop_lib.STATUS_NAMES[int(result.final.status[m])],
                           "hyperparameters": {n: float(final_hparams[n][m]) for n in names},
                           "final_train_accuracy": float(result.accuracy_TK[-1, m]) if len(result.step_T) else None,
                           "final_test_accuracy": None if test_accuracy_K is None else float(test_accuracy_K[m])}
                          for m in range(result.k)],
        "target_accuracy": result.target_accuracy,
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


def _pad(pop: Population, size: int) -> Population:
    """`pop` padded to `size` members with copies of its first, marked PADDING (they train nothing)."""
    k = pop.size
    if size == k:
        return pop
    pos = np.concatenate([np.arange(k), np.zeros(size - k, np.int64)])
    padded = pop_lib.gather_members(pop, pos)
    return padded.replace(status=jnp.where(jnp.arange(size) >= k, pop_lib.PADDING, padded.status))


def pbt_identity(optimizer: str, hparams_K: dict[str, np.ndarray], cfg: PBTConfig,
                 settings: runner.SweepSettings, static_overrides: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    """What a PBT checkpoint must match to be resumed (JSON)."""
    budget = settings.budget
    return {**runner.run_identity(optimizer, hparams_K, settings, static_overrides), "pbt": cfg.to_json(),
            "target_accuracy": budget.target_accuracy, "max_steps": budget.max_steps, "eval_every": budget.eval_every,
            "eval_examples": settings.eval_examples}


def run_pbt(dataset: data_lib.Dataset, optimizer: str, hparams_K: dict[str, np.ndarray], cfg: PBTConfig,
            settings: runner.SweepSettings, static_overrides: tuple[tuple[str, float], ...] = (),
            stop: ckpt_lib.StopSignal | None = None, mesh: jax.sharding.Mesh | None = None,
            exploit_seed: int | None = None) -> PBTResult:
    """Trains one population of `optimizer` (one member per hparams_K['learning_rate']) with PBT.

    `settings` gives the model, data subset, budget (target, max_steps, max_seconds, eval_every),
    seed and checkpointing, as for runner.run_sweep (whose data and engine configuration it reuses);
    its sequential, repack, prune and early-stopping settings do not apply (ValueError). With
    `settings.checkpoint_dir` it checkpoints every `checkpoint_every` segments and on `stop`
    (then raises checkpoints.Interrupted), and a rerun resumes with identical results.
    `exploit_seed` (default: settings.seed) seeds only the exploit/explore randomness, so PBT's own
    randomness can vary while the training (init, batches) stays fixed.
    """
    budget = settings.budget
    if budget.target_accuracy > 1:
        raise ValueError(f"target accuracy must be in (0, 1], got {budget.target_accuracy}")
    if cfg.ready_steps % budget.eval_every:
        raise ValueError(f"ready_steps ({cfg.ready_steps}) must be a multiple of eval_every ({budget.eval_every})")
    if settings.sequential or settings.prune is not None or settings.patience:
        raise ValueError("PBT trains one vectorized population: no sequential mode, pruning or early stopping")
    known = set(optimizers.default_hparams(optimizer)) | {"learning_rate"}
    if not set(cfg.names) <= known:
        raise ValueError(f"{optimizer} cannot explore {sorted(set(cfg.names) - known)} (it has {sorted(known)})")
    data, eval_chunk = runner.sweep_data(dataset, settings)
    engine = runner.sweep_config(settings, optimizer, eval_chunk, static_overrides)
    programs = runner.Programs(engine, mesh)
    k = len(hparams_K["learning_rate"])
    template = _pad(pop_lib.init_population(engine, hparams_K, dataset.image_shape, settings.seed),
                    pop_lib.round_up(k, programs.multiple))
    names = tuple(sorted(template.opt_state.hyperparams))  # every hyperparameter is recorded
    exploit = make_exploit_fn(cfg.names, programs.mesh)
    explore = programs.replicate(explore_arrays(cfg))
    root = jax.random.PRNGKey(settings.seed)
    exploit_root = root if exploit_seed is None else jax.random.PRNGKey(exploit_seed)
    data_key, pbt_key = jax.random.fold_in(root, 2**20), jax.random.fold_in(exploit_root, KEY_SALT)

    state: dict[str, Any] = {  # the host state, JSON (checkpointed with the population)
        "step": 0, "segments": 0, "train_seconds": 0.0, "exploit_seconds": 0.0, "done": False,
        "stopped_by": "max_steps", "steps": [], "accuracy": [], "loss": [], "event_steps": [], "sources": [],
        "scores": [], "hparams": [], "at_target": None,
    }
    checkpoints = None if settings.checkpoint_dir is None else ckpt_lib.RunCheckpoints(
        settings.checkpoint_dir, {**pbt_identity(optimizer, hparams_K, cfg, settings, static_overrides),
                                  **({} if exploit_seed is None else {"exploit_seed": exploit_seed})},
        settings.checkpoint_every)
    restored = checkpoints.restore(template, programs.mesh) if checkpoints is not None else None
    if restored is not None:
        pop, state = restored
        pop = programs.shard(pop)
    else:
        pop = programs.shard(template)
        state["hparams"].append(_host_hparams(pop, names, k))
    data = programs.replicate(data)
    target, max_steps = jnp.float32(UNREACHABLE), jnp.int32(budget.max_steps)
    bar = tqdm.tqdm(total=budget.max_steps, initial=state["step"], desc=f"pbt {optimizer}", unit="step",
                    disable=not settings.progress, dynamic_ncols=True)
    while not state["done"]:
        step = state["step"]
        num_steps = min(budget.eval_every, budget.max_steps - step)
        args = (pop, data, jnp.int32(step), data_key, target, max_steps)
        program = programs.get(num_steps, args)
        start = time.perf_counter()
        pop, metrics = program(*args)
        acc_K, loss_K, status_K = (x[:k] for x in pop_lib.to_host((metrics.accuracy, pop.loss, pop.status)))
        state["train_seconds"] += time.perf_counter() - start
        step += num_steps
        state["step"], state["segments"] = step, state["segments"] + 1
        state["steps"].append(step)
        state["accuracy"].append(acc_K.astype(float).tolist())
        state["loss"].append(loss_K.astype(float).tolist())
        at = np.flatnonzero((status_K != pop_lib.DIVERGED) & (acc_K >= budget.target_accuracy))
        if state["at_target"] is None and at.size:
            state["at_target"] = {"step": step, "member": int(at[np.argmax(acc_K[at])]),
                                  "seconds": state["train_seconds"]}
        running = status_K == pop_lib.RUNNING
        reason = stop_reason(state, budget, cfg.stop_at_target)
        if reason is not None:
            state["done"], state["stopped_by"] = True, reason
        elif step % cfg.ready_steps == 0:
            start = time.perf_counter()
            pop, source_K = exploit(pop, metrics.accuracy, jax.random.fold_in(pbt_key, step), explore)
            source_K, status_K = (x[:k] for x in pop_lib.to_host((source_K, pop.status)))
            state["event_steps"].append(step)
            state["sources"].append(source_K.astype(int).tolist())
            state["scores"].append(acc_K.astype(float).tolist())
            state["hparams"].append(_host_hparams(pop, names, k))
            state["exploit_seconds"] += time.perf_counter() - start
            running = status_K == pop_lib.RUNNING
        if not state["done"] and not running.any():
            state["done"], state["stopped_by"] = True, "no_member_running"
        bar.update(num_steps)
        bar.set_postfix({"best acc": f"{np.nanmax(acc_K):.4f}", "events": len(state["event_steps"]),
                         "diverged": int(np.sum(status_K == pop_lib.DIVERGED))}, refresh=False)
        if checkpoints is not None and (stop is not None and stop.requested or checkpoints.due(state["segments"])
                                        or state["done"]):
            checkpoints.save(state["segments"], pop, state)
        if checkpoints is not None and stop is not None and stop.requested and not state["done"]:
            bar.close()
            raise ckpt_lib.Interrupted(stop.requested, step, checkpoints.directory)
    bar.close()
    return _result(optimizer, engine, cfg.names, k, state, pop_lib.to_host(pop), budget.target_accuracy,
                   programs.compile_seconds)


def stop_reason(state: dict[str, Any], budget: runner.Budget, stop_at_target: bool) -> str | None:
    """Why the run ends after the segment that brought it to `state`, or None to go on."""
    if stop_at_target and state["at_target"] is not None:
        return "target"
    if state["step"] >= budget.max_steps:
        return "max_steps"
    if budget.max_seconds is not None and state["train_seconds"] >= budget.max_seconds:
        return "max_seconds"
    return None


def _host_hparams(pop: Population, names: tuple[str, ...], k: int) -> dict[str, list[float]]:
    """Every member's hyperparameters (small arrays: the only per-member state that leaves the device)."""
    hyper = pop_lib.to_host({n: pop.opt_state.hyperparams[n] for n in names})
    return {n: hyper[n][:k].astype(float).tolist() for n in names}


def _result(optimizer: str, engine: pop_lib.EngineConfig, explored: tuple[str, ...], k: int, state: dict[str, Any],
            final: Population, target_accuracy: float, compile_seconds: float) -> PBTResult:
    """The PBTResult of a finished run's host state and population."""
    final = jax.tree_util.tree_map(lambda x: x[:k], final)
    accuracy_TK = np.asarray(state["accuracy"], np.float32).reshape(-1, k)
    healthy = np.asarray(final.status) != pop_lib.DIVERGED
    last = np.where(healthy, accuracy_TK[-1], -np.inf) if len(accuracy_TK) else np.zeros(k)
    at = state["at_target"]
    names = list(state["hparams"][0])
    return PBTResult(
        optimizer=optimizer, engine=engine, explored=explored, k=k, step_T=np.asarray(state["steps"], np.int64),
        accuracy_TK=accuracy_TK,
        loss_TK=np.asarray(state["loss"], np.float32).reshape(-1, k),
        event_steps=np.asarray(state["event_steps"], np.int64),
        sources_EK=np.asarray(state["sources"], np.int64).reshape(-1, k),
        scores_EK=np.asarray(state["scores"], np.float32).reshape(-1, k),
        hparams_E1K={n: np.asarray([h[n] for h in state["hparams"]], np.float32) for n in names},
        final=final, best_member=int(np.argmax(last)),
        steps_to_target=None if at is None else at["step"], member_at_target=None if at is None else at["member"],
        seconds_to_target=None if at is None else at["seconds"], target_accuracy=target_accuracy,
        steps_run=state["step"], stopped_by=state["stopped_by"], compile_seconds=compile_seconds,
        train_seconds=state["train_seconds"], exploit_seconds=state["exploit_seconds"])


def format_summary(summary: dict[str, Any]) -> str:
    """The printed report of a PBT results.json: time to target and cost, the best lineage's
    hyperparameter schedule, and every final member."""
    pct = f"{summary['target_accuracy'] * 100:g}%"
    k, best = summary["members"], summary["best"]
    names = list(best["schedules"])
    lines = [f"PBT {summary['optimizer']}: {k} members, {len(summary['events'])} ready events; stopped by "
             f"{summary['stopped_by']} after {summary['steps_run']} steps ({summary['model_steps']:,} model-steps "
             f"= {k} x {summary['steps_run']})"]
    if summary["steps_to_target"] is None:
        lines.append(f"no member reached {pct} training-subset accuracy")
    else:
        lines.append(f"steps to {pct}: {summary['steps_to_target']} ({summary['examples_to_target']:,} examples, "
                     f"{summary['seconds_to_target']:.1f} s, member {summary['member_at_target']}; resolution "
                     f"{summary.get('steps_to_target_resolution', '?')} steps), model-steps to target "
                     f"{summary['model_steps_to_target']:,}")
    lines.append(f"best member {best['member']}: train acc {results.cell(best['final_train_accuracy'], 0, '.4f')}, "
                 f"test acc {results.cell(best['final_test_accuracy'], 0, '.4f')}; its lineage's schedule:")
    lines.append(f"{'from step':>9}  {'slot':>4}  " + "  ".join(f"{n:>13}" for n in names))
    first = best["schedules"][names[0]]
    for i, step in enumerate(first["step"]):
        lines.append(f"{step:>9d}  {first['slot'][i]:>4d}  "
                     + "  ".join(f"{best['schedules'][n][n][i]:>13.4g}" for n in names))
    lines.append(f"{'member':>6}  {'status':<9}  " + "  ".join(f"{n:>13}" for n in names)
                 + f"  {'train_acc':>9}  {'test_acc':>8}")
    for m in summary["final_members"]:
        lines.append(f"{m['member']:>6d}  {m['status']:<9}  "
                     + "  ".join(f"{m['hyperparameters'][n]:>13.4g}" for n in names)
                     + f"  {results.cell(m['final_train_accuracy'], 9, '.4f')}  {results.cell(m['final_test_accuracy'], 8, '.4f')}")
    return "\n".join(lines)
