"""How a population program is lowered, chosen by measuring it on the machine at hand.

Three choices decide how fast one program trains K members, and the best of each depends on the
backend, the model and K, not on a rule: how many members one vmap takes in each device's member
loop (`member_map`: chunks of 1 are a loop over members, a chunk of K one vmap), the loop order
(each step over every chunk, or each chunk over all the segment's steps: `segment.make_training`),
and how the model's convolutions are formulated (`conv.FORMULATIONS`: as written, or as im2col
matmuls, which the adapters put in place of `nn.Conv` / `nnx.Conv` / lrlab's conv blocks). `choose`
times a few training steps of each candidate on a slice of the population (two chunks per device
where the run has them, so the member loop is timed too): the formulations at the prior chunk size,
the other loop order, then chunk sizes up and down from it while they get faster, then the other
formulations and loop order at the winner. A run too small to pay for it keeps the prior; the
measurement stops once it has cost `MAX_SHARE` of the run's estimated training time. Every
candidate computes the same function (within float rounding), so the choice changes speed, never
results beyond that; a resumed run reuses the choice it saved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lrlab.engine import member_map, placement, segment
from lrlab.engine.config import LOOP_ORDERS, MEMBERS_OUTER, STEPS_OUTER, EngineConfig
from lrlab.engine.member_map import member_chunk_size
from lrlab.engine.population import Population, TrainData
from lrlab.task import adapters, sampling
from lrlab.task import conv as conv_lib

AUTO = "auto"
CHOICES = (AUTO,) + conv_lib.FORMULATIONS  # what a run may ask for its convolutions
LOOP_CHOICES = (AUTO,) + LOOP_ORDERS  # what a run may ask for its loop order
MEASURE_ABOVE = 1e13  # a run of fewer training FLOPs (3 forward passes per example-step) keeps the prior
PRIOR_LOOP_ORDER = MEMBERS_OUTER  # the loop order tried first (and kept by a run too small to measure)
MAX_SHARE = 0.05  # measuring stops once it has cost this share of the run's estimated training time
PROBE_STEPS = 4  # training steps per timed call of a candidate
PROBE_CHUNKS = 2  # member chunks per device a candidate is timed on (where the run has them)
TIMED_CALLS = 2  # timed calls per candidate (the fastest counts), after one untimed call
SLOW_FACTOR = 3.0  # a candidate whose untimed call is this much slower than the best so far is not timed further


@dataclasses.dataclass(frozen=True)
class Lowering:
    """One way to lower the program: the convolutions' formulation, the members per vmap, and the
    loop order (each step over every member chunk, or each chunk over the segment's steps)."""

    conv: str
    member_chunk: int
    loop_order: str = STEPS_OUTER

    def describe(self) -> str:
        return (f"{self.conv} convolutions, {self.member_chunk} member{'s' if self.member_chunk > 1 else ''} per vmap, "
                f"{self.loop_order.replace('_', ' ')}")

    def applied_to(self, cfg: EngineConfig) -> EngineConfig:
        """`cfg` lowered this way (its fields of the same names)."""
        return dataclasses.replace(cfg, **dataclasses.asdict(self))


@dataclasses.dataclass
class Choice:
    """The lowering a population trains with, how it was chosen, and what choosing cost.

    how: "measured", "given" (the settings fixed both), "reused" (saved by the run being resumed) or
    "prior" (the run is too small to measure). candidates: the measured ones, in the order timed
    ({conv, member_chunk, compile_seconds, member_step_ms}). layers: each conv layer of the model ->
    lowered or as written (and why).
    """

    lowering: Lowering
    how: str
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0  # spent measuring (compilation included)
    estimate_seconds: float | None = None  # the run's training time at the chosen lowering, estimated
    layers: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"conv": self.lowering.conv, "member_chunk": self.lowering.member_chunk,
                "loop_order": self.lowering.loop_order, "how": self.how,
                "candidates": self.candidates, "seconds": self.seconds, "estimate_seconds": self.estimate_seconds,
                "layers": self.layers}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Choice:
        lowering = Lowering(saved["conv"], int(saved["member_chunk"]), saved.get("loop_order", STEPS_OUTER))
        return cls(lowering, saved["how"], saved.get("candidates", []),
                   saved.get("seconds", 0.0), saved.get("estimate_seconds"), saved.get("layers", {}))

    def summary(self) -> str:
        """One line: the lowering, how it was chosen, which layers were lowered, the cost."""
        lowered = [p for p, s in self.layers.items() if s == adapters.LOWERED]
        others = {p: s for p, s in self.layers.items() if s != adapters.LOWERED}
        layers = ("no convolution" if not self.layers else
                  f"{len(lowered)} of {len(self.layers)} conv layers lowerable"
                  + (f" ({'; '.join(f'{p}: {s}' for p, s in others.items())})" if others else ""))
        cost = ""
        if self.how == "measured":
            share = f", {self.seconds / self.estimate_seconds:.1%} of the run's estimate" if self.estimate_seconds else ""
            cost = f"; {len(self.candidates)} candidates measured in {self.seconds:.1f} s{share}"
        return f"lowering: {self.lowering.describe()} ({self.how}); {layers}{cost}"

    def table(self) -> str:
        """The measured candidates, fastest marked."""
        rows = [f"{'conv':>9}  {'per vmap':>8}  {'loop order':>13}  {'compile s':>9}  {'ms per member-step':>18}"]
        for c in self.candidates:
            order = c.get("loop_order", STEPS_OUTER)
            mark = " *" if Lowering(c["conv"], c["member_chunk"], order) == self.lowering else ""
            rows.append(f"{c['conv']:>9}  {c['member_chunk']:>8}  {order:>13}  {c['compile_seconds']:>9.1f}  "
                        f"{c['member_step_ms']:>18.3f}{mark}")
        return "\n".join(rows)


def prior_of(layers: dict[str, str | None], requested_chunk: int, k: int, weights: int) -> tuple[list[str], int]:
    """The formulations in the order tried (the prior first) and the prior members per vmap, for a
    model whose lowerable conv layers say which formulation they were written for (`layers`,
    `adapters.conv_preferences`; empty: no convolution).

    A model's own convolutions (nn.Conv, nnx.Conv) keep their formulation with canonical gradient
    layouts (`conv.CANONICAL`: never far from the model as written, where im2col's copies of large
    activations cost more than they save) and one member per vmap (a vmapped convolution is a grouped
    one, slow on every backend measured). Layers written for im2col (lrlab's conv blocks) and models
    without convolutions keep the im2col formulation and a few members per vmap
    (`member_chunk_size`; without convolutions, a larger weight budget per vmap). Measured:
    benchmarks/own_model.py, benchmarks/member_chunking.py."""
    budget = member_map.PRIOR_CHUNK_WEIGHTS if layers else member_map.PRIOR_CHUNK_WEIGHTS_NO_CONV
    chunk = member_chunk_size(requested_chunk, k, weights, budget)
    order = [conv_lib.MATMUL, conv_lib.CANONICAL, conv_lib.XLA]
    if layers and not all(p == conv_lib.MATMUL for p in layers.values()):
        order = [conv_lib.CANONICAL, conv_lib.MATMUL, conv_lib.XLA]
        chunk = chunk if requested_chunk else 1
    return order, chunk


def chunk_candidates(k: int) -> list[int]:
    """Members per vmap worth trying in a member loop of k: the powers of two that divide k, and k."""
    return sorted({c for c in (2 ** i for i in range(int(math.log2(k)) + 1)) if k % c == 0} | {k})


def training_flops(cfg: EngineConfig, members: int, max_steps: int) -> float:
    """The size of a run in FLOPs (a training step taken as three forward passes): what decides
    whether measuring can pay. Counted by XLA on the model as written, so convolutions weigh in."""
    per_example = adapters.forward_flops(cfg.task.model, cfg.task.example_input())
    return 3.0 * per_example * cfg.batch_size * members * max_steps


class _Probe:
    """Times training steps of `cfg` under candidate lowerings, on a slice of the population."""

    def __init__(self, cfg: EngineConfig, pop: Population, data: TrainData, data_key: jax.Array,
                 mesh: jax.sharding.Mesh, k: int):
        self.cfg, self.pop, self.data, self.data_key, self.mesh, self.k = cfg, pop, data, data_key, mesh, k
        self._order: Any = None
        self.timed: dict[Lowering, dict[str, Any]] = {}
        self.seconds = 0.0

    def order(self) -> Any:
        """The batch order the probe's steps read (the loop's: epochs drawn once, not inside the timing)."""
        if self._order is None:
            self._order = segment.batch_order(self.cfg, self.pop, self.data_key, self.data.num_train,
                                              lambda x: placement.place(x, placement.replicated(self.mesh)))
            if isinstance(self._order, sampling.EpochOrders):
                self._order = self._order.for_segment(0, PROBE_STEPS)
        return self._order

    def members(self, chunk: int) -> int:
        """The members per device a candidate at `chunk` is timed on: PROBE_CHUNKS chunks where the
        run has them, so that the member loop (and the loop order) is part of what is timed."""
        return chunk * max(1, min(PROBE_CHUNKS, self.k // chunk))

    def member_step_seconds(self, lowering: Lowering) -> float:
        """Seconds per member-step of one device's member loop under `lowering`: `members(chunk)`
        members per device train PROBE_STEPS steps, the fastest of TIMED_CALLS calls."""
        if lowering not in self.timed:
            start = time.perf_counter()
            members = self.members(lowering.member_chunk)
            devices = self.mesh.size
            sub = placement.place(placement.gather_members(self.pop, np.arange(members * devices) % self.pop.size),
                                  placement.member_sharding(self.mesh))
            cfg = lowering.applied_to(self.cfg)
            args = (sub, self.data, np.int32(0), self.order())
            compile_start = time.perf_counter()
            program = placement.make_training_fn(cfg, PROBE_STEPS, self.mesh).lower(*args).compile()
            compile_seconds = time.perf_counter() - compile_start
            call_start = time.perf_counter()
            jax.block_until_ready(program(*args))
            calls = [_agreed(time.perf_counter() - call_start)]  # the first call tells a hopeless candidate
            best = min((t["member_step_ms"] for t in self.timed.values()), default=None)
            if best is None or calls[0] < SLOW_FACTOR * best / 1000 * PROBE_STEPS * members:
                calls = []
                for _ in range(TIMED_CALLS):
                    call_start = time.perf_counter()
                    jax.block_until_ready(program(*args))
                    calls.append(time.perf_counter() - call_start)
            seconds = _agreed(min(calls)) / (PROBE_STEPS * members)
            self.timed[lowering] = {**dataclasses.asdict(lowering), "compile_seconds": compile_seconds,
                                    "member_step_ms": 1000 * seconds, "cost_seconds": time.perf_counter() - start}
            self.seconds += self.timed[lowering]["cost_seconds"]
        return self.timed[lowering]["member_step_ms"] / 1000

    def cost_of(self, chunk: int) -> float:
        """What timing a candidate at `chunk` is expected to cost: the longest compilation seen so
        far, and its calls (the first and TIMED_CALLS more) at the best speed seen so far."""
        best = min(t["member_step_ms"] for t in self.timed.values()) / 1000
        compile_seconds = max(t["compile_seconds"] for t in self.timed.values())
        return compile_seconds + (1 + TIMED_CALLS) * PROBE_STEPS * self.members(chunk) * best


def _agreed(value: float) -> float:
    """Process 0's measurement on every process (each process follows the same path of candidates)."""
    if jax.process_count() == 1:
        return value
    return float(multihost_utils.broadcast_one_to_all(np.float64(value)))


def choose(cfg: EngineConfig, pop: Population, data: TrainData, data_key: jax.Array, max_steps: int,
           mesh: jax.sharding.Mesh, *, conv: str = AUTO, member_chunk: int = 0, loop_order: str = AUTO,
           saved: dict[str, Any] | None = None) -> Choice:
    """The lowering for training `pop` (K members, on `mesh`) for up to `max_steps` steps.

    `conv` (a formulation, or auto), `member_chunk` (0: measured) and `loop_order` (one of
    LOOP_ORDERS, or auto) fix what the settings give; `saved` is the choice a resumed run saved
    (reused when it fits this population). Logs the measured candidates and a summary line.
    """
    if conv not in CHOICES:
        raise ValueError(f"conv must be one of {', '.join(CHOICES)}, got {conv!r}")
    if loop_order not in LOOP_CHOICES:
        raise ValueError(f"loop_order must be one of {', '.join(LOOP_CHOICES)}, got {loop_order!r}")
    k = placement.round_up(pop.size, mesh.size) // mesh.size  # each device's member loop (padding included)
    weights = sum(x.size for x in jax.tree_util.tree_leaves(pop.params)) // pop.size
    layers = adapters.conv_layers(cfg.task.model, cfg.task.example_input())
    lowerable = any(s == adapters.LOWERED for s in layers.values())
    preferences = adapters.conv_preferences(cfg.task.model, cfg.task.example_input()) if lowerable else {}
    order, prior_chunk = prior_of(preferences, member_chunk, k, weights)
    convs = [conv] if conv != AUTO else order if lowerable else [conv_lib.XLA]
    chunks = [prior_chunk] if member_chunk else chunk_candidates(k)
    orders = [loop_order] if loop_order != AUTO else sorted(LOOP_ORDERS, key=lambda o: o != PRIOR_LOOP_ORDER)

    def loop_orders(chunk: int) -> list[str]:
        """The loop orders that differ at `chunk` (one chunk per device: a single vmap, no member loop)."""
        return orders if chunk < k else orders[:1]

    prior = Lowering(convs[0], prior_chunk, orders[0])
    if saved is not None:
        reused = Choice.from_json(saved)
        if reused.lowering.conv in convs and reused.lowering.member_chunk in chunks and (
                reused.lowering.loop_order in orders):
            reused.how = "reused"
            return _logged(reused)
    if len(convs) * len(chunks) * len(loop_orders(prior_chunk)) == 1:
        return _logged(Choice(prior, "given", layers=layers))
    if training_flops(cfg, pop.size, max_steps) < MEASURE_ABOVE:
        return _logged(Choice(prior, "prior", layers=layers))

    probe = _Probe(cfg, pop, data, data_key, mesh, k)
    speed = probe.member_step_seconds  # Lowering -> seconds per member-step

    def affordable(chunk: int) -> bool:
        """Whether timing one more candidate at `chunk` keeps the measurement within MAX_SHARE of
        the run's training time at the best lowering found so far."""
        best_run = min(t["member_step_ms"] for t in probe.timed.values()) / 1000 * k * max_steps
        return probe.seconds + probe.cost_of(chunk) <= MAX_SHARE * best_run

    def try_better(best: Lowering, other: Lowering) -> Lowering:
        """`other` where it is faster than `best` (timed now if not yet, and affordable), else `best`."""
        if other not in probe.timed and not affordable(other.member_chunk):
            return best
        return other if speed(other) < speed(best) else best

    best = prior
    speed(best)
    for other in convs[1:]:  # the formulations at the prior chunk size
        best = try_better(best, dataclasses.replace(best, conv=other))
    for other in loop_orders(best.member_chunk)[1:]:  # the loop orders
        best = try_better(best, dataclasses.replace(best, loop_order=other))
    for step in (1, -1):  # chunk sizes up from the prior while they get faster, then down
        i = chunks.index(prior.member_chunk) + step
        while 0 <= i < len(chunks) and affordable(chunks[i]):
            candidate = dataclasses.replace(best, member_chunk=chunks[i],
                                            loop_order=best.loop_order if chunks[i] < k else orders[0])
            if speed(candidate) >= speed(best):
                break
            best = candidate
            i += step
        if best.member_chunk != prior.member_chunk:
            break
    for other in convs:  # the formulations and loop orders may rank otherwise at another chunk size
        for other_order in loop_orders(best.member_chunk):
            best = try_better(best, Lowering(other, best.member_chunk, other_order))
    candidates = [{name: v for name, v in t.items() if name != "cost_seconds"} for t in probe.timed.values()]
    return _logged(Choice(best, "measured", candidates, probe.seconds, speed(best) * k * max_steps, layers))


def _logged(choice: Choice) -> Choice:
    if choice.candidates:
        logging.info("lowering candidates (ms per member-step, compile seconds):\n%s", choice.table())
    logging.info("%s", choice.summary())
    return choice
