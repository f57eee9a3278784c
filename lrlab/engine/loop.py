"""The one segment loop: the only Python loop of lrlab, with hooks for what the methods add.

The device program (`segment.py`, placed by `placement.py`) is pure and jitted. Between segments `train` reads the members'
status, records their curves, stops members on the time budget, lets the hooks act (successive
halving prunes at its rungs, PBT exploits and explores, the range test watches for divergence, a
test-set curve is measured), re-packs the still-running members (into fewer member chunks, or a
smaller population: see placement.py) so finished members stop costing compute, checkpoints, and
honours a stop signal. A resumed run gives the uninterrupted run's results: batches depend only on
(data_key, step), the packed population is rebuilt from the saved layout, and each hook saves and
restores its own state.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from lrlab.engine import devices, member_map, placement, population
from lrlab.engine import segment as segment_lib
from lrlab.engine.config import EngineConfig
from lrlab.engine.population import Population, TrainData
from lrlab.engine.segment import SegmentMetrics
from lrlab.engine.stop import Interrupted, StopSignal
from lrlab.task import sampling

STOP_CHECK_SECONDS = 10.0  # the longest the loop trains between two checks of the stop signal
PROBE_STEPS = 10  # at most this many steps per chunk until the time per step is measured,
PROBE_MEMBER_STEPS = 2000  # and at most this many member-steps (a huge population probes with 1 step)
FEWER_DISPATCHES = 8  # a chunk grows (a new program) only when an interval takes this many of them


@dataclasses.dataclass(frozen=True)
class Budget:
    """When a member stops besides reaching the target: steps or seconds spent; and how often
    the target is evaluated (the resolution of steps to target)."""

    max_steps: int = 3000
    max_seconds: float | None = None  # wall-clock training seconds (compilation excluded)
    eval_every: int = 50

    def __post_init__(self):
        if self.max_steps < 1 or self.eval_every < 1:
            raise ValueError(f"max_steps and eval_every must be at least 1, got {self.max_steps}, {self.eval_every}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, got {self.max_seconds}")
        if self.eval_every > self.max_steps:
            raise ValueError(f"eval_every={self.eval_every}: above max_steps={self.max_steps}, no member would be "
                             "evaluated before the budget ends")


class Programs:
    """Compiled segment programs keyed by (population size, steps): each compiled once, timed.

    Members are sharded over `mesh` (default: all devices); population sizes are multiples of its
    size (`multiple`), reached with padding members.
    """

    def __init__(self, cfg: EngineConfig, mesh: jax.sharding.Mesh | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else placement.make_mesh()
        self.multiple = self.mesh.size
        self._compiled: dict[tuple[int, int], Any] = {}
        self._jitted: dict[int, Callable] = {}
        self.compile_seconds = 0.0

    def get(self, num_steps: int, args: tuple) -> Callable:
        """The program of `num_steps` steps for the population args[0] (one for the chunks that
        evaluate and those that do not: `evaluate` is an argument)."""
        pop = args[0]
        key = (pop.size, num_steps)
        if key not in self._compiled:
            if num_steps not in self._jitted:
                self._jitted[num_steps] = placement.make_segment_fn(self.cfg, num_steps, self.mesh)
            start = time.perf_counter()
            self._compiled[key] = self._jitted[num_steps].lower(*args).compile()
            self.compile_seconds += time.perf_counter() - start
        return self._compiled[key]

    @property
    def compilations(self) -> int:
        return len(self._compiled)

    def member_chunk(self, pop: Population) -> int:
        """Members per vmap in each device's member loop for `pop` (as the segment program picks it)."""
        return member_map.members_and_chunk(self.cfg, pop.params, pop.size // self.multiple)[1]

    def skips_idle(self, pop: Population) -> bool:
        """Whether the member loop of `pop` runs in several chunks per device, so chunks without a
        running member are skipped (population.member_map) and compacting is free of recompilation."""
        return self.member_chunk(pop) < pop.size // self.multiple

    def shard(self, pop: Population) -> Population:
        return placement.place(pop, placement.member_sharding(self.mesh))

    def replicate(self, tree: Any) -> Any:
        return placement.place(tree, placement.replicated(self.mesh))


class Checkpoints(Protocol):
    """Where the loop keeps its checkpoints (`lrlab.store.checkpoints.RunCheckpoints`): restore the
    latest, say when one is due, save one."""

    directory: pathlib.Path

    def restore(self, template: Population, mesh: jax.sharding.Mesh) -> tuple[Population, dict[str, Any]] | None: ...

    def due(self, segments: int) -> bool: ...

    def save(self, step: int, population: Population, state: dict[str, Any]) -> None: ...


class Hook:
    """What a method adds to the loop. After each evaluation (the members' statuses, curves and the
    time budget already updated) `after_segment` may read and change the loop: prune members,
    replace the population (PBT), record, or end the run (`loop.finish`). Its `state` is
    checkpointed with the loop's and given back to `restore` on resume; `postfix` joins the
    progress bar."""

    name = "hook"

    def after_segment(self, loop: Loop, metrics: SegmentMetrics) -> None:
        pass

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass

    def postfix(self, loop: Loop) -> dict[str, Any]:
        return {}


@dataclasses.dataclass
class RunOutput:
    """Everything a run measured, member-indexed by position in the original population (host)."""

    final: Population  # numpy leaves, K members, in the original order
    curves: list[dict[str, list[float]]]  # per member: step, each metric, loss, seconds (empty: not recorded)
    seconds_to_target: np.ndarray  # float64[K], nan when not reached
    seconds_trained: np.ndarray  # float64[K]
    compile_seconds: float
    train_seconds: float  # wall-clock seconds of training (compilation excluded)
    segments: int = 0
    population_sizes: list[int] = dataclasses.field(default_factory=list)
    compactions: int = 0  # re-packings in place (idle member chunks skipped; see Loop.repack_running)
    steps_run: int = 0
    ended_by: str = "no_member_running"  # or "max_steps", "max_seconds", or a hook's reason


def status_counts(status: np.ndarray) -> dict[str, int]:
    """Members per status for the progress bar (statuses nobody has are left out, except running)."""
    counts = {name: int(np.sum(status == code)) for code, name in enumerate(population.STATUS_NAMES)
              if code != population.PADDING}
    return {name: n for name, n in counts.items() if n or name == "running"}


class Loop:
    """The state of one population's training between segments (see `train`); hooks read it.

    `full` holds every member once `sub` (the population on the devices: the running members,
    packed and padded) no longer is the whole population; `pos[i]` is the position in the original
    population of `sub`'s entry i, a real member where `real[i]` (the others are padding).

    Between two evaluations (every `eval_every` steps) the loop may train in several chunks, so
    that it checks the stop signal at least every STOP_CHECK_SECONDS whatever eval_every and K are;
    the steps are the same either way (batches depend only on the step), and so are the results:
    the interval's training loss is the mean of its step losses, kept per member on the host.
    """

    def __init__(self, pop: Population, programs: Programs, budget: Budget, *, repack: bool, curves: bool):
        k = pop.size
        self.k, self.programs, self.budget, self.repack, self.record_curves = k, programs, budget, repack, curves
        self.target = programs.cfg.task.target
        self.target_key = programs.cfg.task.target_key
        self.step, self.segments, self.sizes, self.train_seconds = 0, 0, [], 0.0
        self.status = np.full(k, population.RUNNING)
        self.curves: list[dict[str, list[float]]] = [{} for _ in range(k)]
        self.seconds_to_target = np.full(k, np.nan)
        self.seconds_trained = np.zeros(k)
        self.full: Population | None = None
        self.sub: Population | None = None
        self.pos = np.arange(k)
        self.real = np.ones(k, bool)
        self.saved_layout: tuple[np.ndarray, np.ndarray] | None = None  # `sub`'s layout in a checkpoint
        self.compactions = 0
        self.host: dict[str, Any] = {}  # this evaluation's metrics of sub's real entries (numpy)
        self.recorded: list[int] = []  # entries of `sub` whose member got a curve entry this segment
        self.finished: str | None = None
        self.interval_start = 0  # the step of the latest evaluation (or 0)
        self.pending_loss: list[np.ndarray] = []  # float[K, s] per chunk since it: step losses (NaN: none)
        self.last_loss = np.full(k, np.nan)  # each member's mean training loss over its latest interval
        self.step_seconds: float | None = None  # seconds per step of the current `sub` (None: not measured)
        self.chunk: int | None = None  # the steps of a chunk that does not evaluate, for this `sub`

    # The host state saved with every checkpoint.
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "segments": self.segments, "sizes": self.sizes,
                "train_seconds": self.train_seconds, "status": self.status.tolist(), "curves": self.curves,
                "seconds_to_target": self.seconds_to_target.tolist(),
                "seconds_trained": self.seconds_trained.tolist(), "finished": self.finished,
                "interval_start": self.interval_start, "last_loss": self.last_loss.tolist(),
                "pending_loss": np.concatenate(self.pending_loss, axis=1).tolist() if self.pending_loss else [],
                "layout": {"pos": self.pos.tolist(), "real": self.real.tolist()}, "compactions": self.compactions}

    def load(self, state: dict[str, Any]) -> None:
        self.step, self.segments, self.sizes = state["step"], state["segments"], state["sizes"]
        self.train_seconds = state["train_seconds"]
        self.status = np.asarray(state["status"])
        self.curves = state["curves"]
        self.seconds_to_target = np.asarray(state["seconds_to_target"], np.float64)
        self.seconds_trained = np.asarray(state["seconds_trained"], np.float64)
        self.finished = state.get("finished")
        self.interval_start = state["interval_start"]
        self.last_loss = np.asarray(state["last_loss"], np.float64)
        pending = np.asarray(state["pending_loss"], np.float64)
        self.pending_loss = [pending.reshape(self.k, -1)] if pending.size else []
        if "layout" in state:  # older checkpoints: rebuilt from the statuses
            layout = state["layout"]
            self.saved_layout = (np.asarray(layout["pos"], np.int64), np.asarray(layout["real"], bool))
        self.compactions = state.get("compactions", 0)

    @property
    def running(self) -> np.ndarray:
        """Positions of the members still training."""
        return np.flatnonzero(self.status == population.RUNNING)

    @property
    def active(self) -> bool:
        return self.finished is None and self.running.size > 0

    def finish(self, reason: str) -> None:
        """Ends the run after this segment (PBT at the target, the range test at divergence)."""
        self.finished = reason

    def merged(self) -> Population:
        """Every member, `sub`'s real members written back (device arrays)."""
        if self.full is None:
            return self.sub
        if self.sub is None:
            return self.full
        return placement.scatter_members(self.full, self.pos[self.entries], self.sub, self.entries)

    @property
    def entries(self) -> np.ndarray:
        """The entries of `sub` that are real members."""
        return np.flatnonzero(self.real)

    def place(self, members: np.ndarray, size: int, spread: bool = True) -> None:
        """`sub` becomes the population of `members` (positions), padded to `size`, sharded
        (`spread`: dealt round-robin to the devices; see placement.layout)."""
        self.place_layout(*placement.layout(members, size, self.programs.multiple, spread))

    def place_layout(self, pos: np.ndarray, real: np.ndarray) -> None:
        """`sub` becomes the population laid out as `pos` / `real` (placement.layout), sharded."""
        self.full = self.merged()
        resized = self.sub is None or self.sub.size != pos.size
        self.sub, self.pos, self.real = self.programs.shard(placement.pack(self.full, pos, real)), pos, real
        if resized:
            self.step_seconds = self.chunk = None  # another population size: measure again

    def set_status(self, members: np.ndarray, code: int) -> None:
        """Members (positions) take status `code`, on the host and in `sub`."""
        members = np.asarray(members, np.int64)
        self.status[members] = code
        is_set = np.isin(self.pos, members) & self.real
        self.sub = self.sub.replace(status=jnp.where(self.programs.shard(jnp.asarray(is_set)), code, self.sub.status))

    def replace_sub(self, sub: Population) -> None:
        """A hook's new population in place of `sub` (same entries); the host statuses follow it."""
        self.sub = sub
        self.status[self.pos[self.real]] = devices.to_host(sub.status)[self.real]

    def last_scores(self) -> np.ndarray:
        """float64[K]: each member's latest target value as a score (higher is better; NaN: none)."""
        last = np.array([c[self.target_key][-1] if c.get(self.target_key) else np.nan for c in self.curves])
        return np.asarray(self.target.score(last), np.float64)

    def reached_at(self) -> np.ndarray:
        """int[K]: the step of each reached member's last evaluation (its steps to target), else -1."""
        return np.array([c["step"][-1] if self.status[m] == population.REACHED else -1 for m, c in enumerate(self.curves)])

    def next_chunk(self) -> int:
        """The steps of the next chunk: a divisor of the steps left to the next evaluation (which
        ends the last chunk), at most PROBE_STEPS (and PROBE_MEMBER_STEPS) until the time per step
        is known, then at most what fits in STOP_CHECK_SECONDS. A chunk length is kept while it fits, so the interval
        reuses one compiled program; it grows only once an interval takes FEWER_DISPATCHES chunks."""
        end = min(self.interval_start + self.budget.eval_every, self.budget.max_steps)
        remaining = end - self.step
        if self.step_seconds is None:
            limit = self.chunk or max(1, min(PROBE_STEPS, PROBE_MEMBER_STEPS // self.k))
        else:
            affordable = max(1, int(STOP_CHECK_SECONDS / self.step_seconds))
            few = self.chunk and end - self.interval_start < FEWER_DISPATCHES * self.chunk  # chunks per interval
            limit = self.chunk if self.chunk and self.chunk <= affordable and few else affordable
        self.chunk = max(d for d in range(1, min(limit, remaining) + 1) if remaining % d == 0)
        return self.chunk

    def segment(self, data: TrainData, order: sampling.EpochOrders | jax.Array, goal: jax.Array, max_steps: jax.Array
                ) -> SegmentMetrics | None:
        """Runs the next chunk of `sub` (`order`: the shared batch order's epochs, or a key where each
        member has its own order); after one that evaluates, updates the statuses, the clock and the
        curves and returns its metrics (None after a chunk that only trains)."""
        num_steps = self.next_chunk()
        evaluate = self.step + num_steps == min(self.interval_start + self.budget.eval_every, self.budget.max_steps)
        batches = order.for_segment(self.step, num_steps) if isinstance(order, sampling.EpochOrders) else order
        args = (self.sub, data, jnp.int32(self.step), batches, goal, max_steps, jnp.bool_(evaluate))
        program = self.programs.get(num_steps, args)
        start = time.perf_counter()
        self.sub, metrics = program(*args)
        # the one host synchronisation per chunk: the statuses and the chunk's step losses together
        sub_status, chunk_loss = devices.to_host((self.sub.status, metrics.step_loss))
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        per_step = seconds / num_steps
        if self.step_seconds is None and per_step > STOP_CHECK_SECONDS:
            logging.warning("one training step of %d members takes %.0f s: a stop signal waits for the step in "
                            "progress", self.real.sum(), per_step)
        self.step_seconds = per_step if self.step_seconds is None else 0.5 * (self.step_seconds + per_step)
        self.step += num_steps
        step_loss = np.full((self.k, num_steps), np.nan)
        step_loss[self.pos[self.real]] = chunk_loss[self.real]
        self.pending_loss.append(step_loss)
        if not evaluate:
            return None
        self.segments += 1
        if self.budget.max_seconds is not None and self.train_seconds >= self.budget.max_seconds:
            self.sub = self.sub.replace(status=jnp.where(self.sub.status == population.RUNNING, population.EXHAUSTED,
                                                         self.sub.status))
            sub_status = devices.to_host(self.sub.status)
        interval_loss = np.concatenate(self.pending_loss, axis=1)
        stepped = np.isfinite(interval_loss).any(axis=1)
        mean = np.nanmean(np.where(stepped[:, None], interval_loss, 0.0), axis=1)
        self.last_loss = np.where(stepped, mean, self.last_loss)
        self.pending_loss, self.interval_start = [], self.step
        values, val, trained = devices.to_host((metrics.metrics, metrics.val, self.sub.steps_trained))
        loss = self.last_loss[self.pos]  # per entry of `sub`, like the metrics (padding: its source's)
        eval_name = self.programs.cfg.task.eval_name
        self.host = {"metrics": values, "val": val, "loss": loss, "steps_trained": trained, "status": sub_status,
                     "step_loss": interval_loss[self.pos]}
        self.recorded = []
        for i in self.entries:
            m = self.pos[i]
            if self.status[m] != population.RUNNING:
                continue
            self.recorded.append(i)
            if self.record_curves:
                curve = self.curves[m]
                curve.setdefault("step", []).append(int(trained[i]))
                for name, v in values.items():
                    curve.setdefault(f"{eval_name}_{name}", []).append(float(v[i]))
                curve.setdefault("loss", []).append(float(loss[i]))
                curve.setdefault("seconds", []).append(self.train_seconds)
                for name, v in val.items():
                    curve.setdefault(f"val_{name}", []).append(float(v[i]))
            self.seconds_trained[m] = self.train_seconds
            if sub_status[i] == population.REACHED:
                self.seconds_to_target[m] = self.train_seconds
            self.status[m] = sub_status[i]
        return metrics

    def repack_running(self) -> None:
        """Re-packs the running members: where idle member chunks are skipped, into the fewest
        chunks per device in the same population (no recompilation) when that saves a chunk;
        otherwise into a smaller population when they fit one."""
        running = self.running
        if not (running.size and self.repack):
            return
        devices = self.programs.multiple
        if self.programs.skips_idle(self.sub):
            chunk = self.programs.member_chunk(self.sub)
            busy = self.real & np.isin(self.pos, running)
            pos, real = placement.layout(running, self.sub.size, devices)
            if placement.live_chunks(real, devices, chunk) < placement.live_chunks(busy, devices, chunk):
                self.place_layout(pos, real)
                self.compactions += 1
            return
        size = placement.bucket_size(running.size, self.k, devices)
        if size < self.sub.size:
            self.place(running, size)
            self.sizes.append(size)

    def ended_by(self) -> str:
        if self.finished is not None:
            return self.finished
        if self.step >= self.budget.max_steps:
            return "max_steps"
        if self.budget.max_seconds is not None and self.train_seconds >= self.budget.max_seconds:
            return "max_seconds"
        return "no_member_running"


def train(
    pop: Population,
    data: TrainData,
    budget: Budget,
    data_key: jax.Array,
    programs: Programs,
    *,
    freeze_at_target: bool = True,
    repack: bool = True,
    curves: bool = True,
    hooks: Sequence[Hook] = (),
    progress: bool = True,
    desc: str = "",
    checkpoints: Checkpoints | None = None,
    stop: StopSignal | None = None,
) -> RunOutput:
    """Trains `pop` until no member is running (or a hook ends the run); returns the finished
    population and its curves.

    `freeze_at_target`: a member that reaches the task's target stops there (REACHED); otherwise
    the segments get an unreachable goal and nobody freezes (PBT, the range test). With early
    stopping (cfg.patience), each member's returned variables are its best ones. With
    `checkpoints`, it resumes from the latest one (if any) and saves one every `checkpoints.every`
    segments, at the end, and when `stop` is requested (then raises `Interrupted`).
    """
    loop = Loop(pop, programs, budget, repack=repack, curves=curves)
    multiple = programs.multiple
    restored = checkpoints.restore(pop, programs.mesh) if checkpoints is not None else None
    if restored is not None:  # rebuild the population the uninterrupted run would hold now
        loop.full, state = restored
        loop.load(state)
        for hook in hooks:
            hook.restore(state.get("hooks", {}).get(hook.name, {}))
        running = loop.running
        if loop.saved_layout is not None and running.size and loop.finished is None:
            loop.place_layout(*loop.saved_layout)
        elif running.size and loop.finished is None:  # a checkpoint from before layouts were saved
            members = running if repack else np.arange(loop.k)
            size = placement.bucket_size(running.size, loop.k, multiple) if repack else placement.round_up(loop.k, multiple)
            loop.place(members, size, spread=repack)
    elif loop.k % multiple:  # pad to a multiple of the device count
        loop.full = programs.replicate(pop)
        loop.place(np.arange(loop.k), placement.round_up(loop.k, multiple), spread=False)
    else:
        loop.sub = programs.shard(pop)
    if not loop.sizes and loop.sub is not None:
        loop.sizes = [loop.sub.size]
    data = programs.replicate(data)
    order = segment_lib.batch_order(programs.cfg, pop, data_key, data.num_train, programs.replicate)
    target = programs.cfg.task.target
    goal = jnp.float32(target.goal if freeze_at_target else target.unreachable)
    max_steps = jnp.int32(budget.max_steps)

    saved_at = [None]

    def save() -> None:  # numbered by the step: a stop between evaluations saves as well
        if saved_at[0] != loop.step:
            state = {**loop.state(), "hooks": {hook.name: hook.state() for hook in hooks}}
            checkpoints.save(loop.step, loop.merged(), state)
            saved_at[0] = loop.step

    bar = tqdm.tqdm(total=budget.max_steps, initial=loop.step, desc=desc, unit="step", disable=not progress,
                    leave=True, dynamic_ncols=True)
    with bar:
        while loop.active:
            metrics = loop.segment(data, order, goal, max_steps)
            if metrics is not None:
                for hook in hooks:
                    hook.after_segment(loop, metrics)
                postfix = status_counts(loop.status)
                for hook in hooks:
                    postfix.update(hook.postfix(loop))
                bar.set_postfix(postfix, refresh=False)
                loop.repack_running()
            bar.update(loop.step - bar.n)
            requested = stop is not None and stop.requested
            if checkpoints is not None and (requested or metrics is not None and (
                    checkpoints.due(loop.segments) or not loop.active)):
                save()
            if checkpoints is not None and requested and loop.active:
                raise Interrupted(stop.requested, loop.step, checkpoints.directory)
    full = loop.merged()
    return RunOutput(
        final=segment_lib.restore_best(devices.to_host(full)),
        curves=loop.curves,
        seconds_to_target=loop.seconds_to_target,
        seconds_trained=loop.seconds_trained,
        compile_seconds=programs.compile_seconds,
        train_seconds=loop.train_seconds,
        segments=loop.segments,
        population_sizes=loop.sizes,
        compactions=loop.compactions,
        steps_run=loop.step,
        ended_by=loop.ended_by(),
    )


class SegmentCallback(Hook):
    """A hook from a function `fn(sub, entries, positions, step) -> {name: values[len(entries)]} |
    None` (`entries`: the indices of `sub`'s real members, `positions`: theirs in the original
    population): each member that got this segment's curve entry gets curve[name].append(value),
    checkpointed with the curves (optimizer_comparison's test-set curve)."""

    name = "callback"

    def __init__(self, fn: Callable[[Population, np.ndarray, int], dict[str, np.ndarray] | None]):
        self.fn = fn

    def after_segment(self, loop: Loop, metrics: SegmentMetrics) -> None:
        entries = loop.entries
        extra = self.fn(loop.sub, entries, loop.pos[entries], loop.step) or {}
        recorded = set(loop.recorded)
        for name, values in extra.items():
            for j, i in enumerate(entries):
                if i in recorded:
                    loop.curves[loop.pos[i]].setdefault(name, []).append(float(values[j]))


def evaluate_members(cfg: EngineConfig, variables_K: Any, arrays: Any) -> dict[str, np.ndarray]:
    """Each member's metrics on a held-out set (the test set), vectorized over members
    (variables_K: `Population.variables`, the parameters and any model state)."""
    arrays_E, weight_E = population.pad_to_chunks(arrays, cfg.eval_chunk)
    metrics = jax.jit(segment_lib.make_metrics_fn(cfg))(variables_K, arrays_E, weight_E)
    return {k: np.asarray(v) for k, v in metrics.items()}
