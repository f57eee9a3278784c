"""Seeds: every member trained as N replicates that differ in initialisation, dropout and batch
order (`SweepSettings.seeds`, --seeds=N), all members of one program; and what is read off them.

Replicate r of a run with seed s is the shared-seed run of seed s + r: within a replicate every
rate starts from the same weights and sees the same batches (the study's "same seed for every
run"), and replicate r equals the one-seed run of `--seed=s+r` (the evaluation subset, drawn from
s, is the run's). The study ran one seed per rate, so the spread across seeds (its claim 7) was
never measured.

Per valley and rate, steps to target are aggregated with a miss counted as infinite (AlgoPerf's
convention): the median is infinite (no median: null) when half or more of the replicates missed,
and a quartile is infinite where it falls on misses. Quartiles interpolate linearly between order
statistics (numpy's default), with an infinite neighbour giving an infinite quartile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from lrlab.optim.members import Members
from lrlab.store import ranking
from lrlab.store.records import group_of


def expand(members: Members, seeds: int, seed: int) -> tuple[Members, np.ndarray]:
    """Each member repeated `seeds` times in a row (rate-major), and each replicate's seed."""
    k = members.size
    return members.subset(np.repeat(np.arange(k), seeds)), np.tile(np.arange(seeds) + seed, k).astype(np.int64)


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of `values` (may hold inf), linear between order statistics."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi or v[lo] == v[hi]:
        return v[lo]
    return math.inf if math.isinf(v[hi]) else v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else x


def aggregate(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per valley (in order of appearance) and learning rate (ascending): the replicates' steps to
    target (null: missed), how many reached, the median and quartiles (null where infinite)."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in records:
        cells.setdefault((group_of(r), r["learning_rate"]), []).append(r)
    order = list(dict.fromkeys(g for g, _ in cells))
    rows = []
    for group, lr in sorted(cells, key=lambda c: (order.index(c[0]), c[1])):
        members = sorted(cells[group, lr], key=lambda r: r.get("seed", 0))
        steps = [r["steps_to_target"] if r["status"] == "reached" else math.inf for r in members]
        q1, median, q3 = (quantile(steps, q) for q in (0.25, 0.5, 0.75))
        rows.append({
            "group": group, "optimizer": members[0]["optimizer"], "learning_rate": lr,
            "seeds": [r.get("seed") for r in members], "reached": sum(math.isfinite(s) for s in steps),
            "steps_to_target": [_finite(s) for s in steps],
            "median_steps": _finite(median), "q1_steps": _finite(q1), "q3_steps": _finite(q3),
            "iqr_steps": _finite(q3 - q1) if math.isfinite(q3) else None,
        })
    return rows


def best(rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The aggregate row ranked first among `rows` (one valley) by lrlab's one rule
    (`ranking.best_member`), its median steps as its steps to target (a rate whose median is a miss
    did not reach it); None if no median is finite."""
    rows = list(rows)
    winner = ranking.best_member(median_records(rows))
    return None if winner is None else rows[[r["learning_rate"] for r in rows].index(winner["learning_rate"])]


def median_records(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per valley and rate with the median as its steps to target (reached where the
    median is finite): what the envelope reads when there are several seeds."""
    return [{"optimizer": r["optimizer"], "group": r["group"], "learning_rate": r["learning_rate"],
             "status": "reached" if r["median_steps"] is not None else "missed",
             "steps_to_target": r["median_steps"]} for r in rows]
