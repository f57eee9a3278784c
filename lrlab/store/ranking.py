"""The one rule by which lrlab ranks outcomes, wherever it picks a "best": a valley's best rate, the
best rate across seeds, a search's best trial, search_compare's reference, PBT's best member.

    reached the target first, by the fewest steps to it; then those that missed, by how close the
    best value of the target metric came to the goal; diverged last. Ties: the lower learning rate,
    then the earlier outcome.

`objective` writes the rule as one number (lower is better) where the outcomes that missed are
compared too (searches tell Optuna this number); `best_member` is the rule among those that reached
the target, None when none did. An outcome is a record with `status`, `steps_to_target`,
`learning_rate` and, for a miss, its curve or final value of the target metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

RULE = ("reached first, by fewest steps to target; then missed, by how close the best value of the target metric came "
        "to the goal; diverged last; ties: the lower learning rate, then the earlier")
DIVERGED_FACTOR = 4.0  # a diverged outcome's objective, in budgets: above every miss (< 2 budgets)
OBJECTIVE = ("reached: steps_to_target; missed: max_steps * (1 + shortfall of the best target value, in [0, 1]: "
             "an accuracy's is target - best); diverged: 4 * max_steps; lower is better")


def best_value(record: Mapping[str, Any], target: Any, target_key: str) -> float | None:
    """The best finite value of the target metric along an outcome's curve (its final one without a
    curve; None if it has neither)."""
    curve = [v for v in (record.get("curve") or {}).get(target_key, []) if v is not None and math.isfinite(v)]
    if curve:
        return float(max(curve, key=target.score))
    final = record.get(f"final_{target_key}")
    return float(final) if final is not None and math.isfinite(final) else None


def objective(record: Mapping[str, Any], max_steps: int, target: Any, target_key: str) -> float:
    """An outcome's place under the rule as one number, lower is better (`target`: a task.Target).

    reached:  steps_to_target (at most max_steps).
    missed:   max_steps * (1 + target.shortfall(best)), best its best value of the target metric:
              above every reached value, and closer to the goal scores lower.
    diverged: DIVERGED_FACTOR * max_steps, worse than every other outcome.
    """
    if record["status"] == "reached":
        return float(record["steps_to_target"])
    if record["status"] == "diverged":
        return DIVERGED_FACTOR * max_steps
    return max_steps * (1.0 + target.shortfall(best_value(record, target, target_key)))


def ranked(records: Iterable[Mapping[str, Any]], max_steps: int, target: Any, target_key: str) -> list[Any]:
    """The outcomes best first, by the rule."""
    indexed = list(enumerate(records))
    key = lambda item: (objective(item[1], max_steps, target, target_key), item[1]["learning_rate"], item[0])  # noqa: E731
    return [r for _, r in sorted(indexed, key=key)]


def best(records: Iterable[Mapping[str, Any]], max_steps: int, target: Any, target_key: str) -> Any:
    """The first outcome by the rule, reached or not (None without outcomes)."""
    order = ranked(records, max_steps, target, target_key)
    return order[0] if order else None


def best_member(records: Iterable[Mapping[str, Any]]) -> Any:
    """The first outcome by the rule among those that reached the target (fewest steps, then the
    lower learning rate, then the earlier); None if none reached it."""
    reached = [(i, r) for i, r in enumerate(records) if r["status"] == "reached"]
    return min(reached, key=lambda item: (item[1]["steps_to_target"], item[1]["learning_rate"], item[0]))[1] \
        if reached else None


def reached_band(records: Iterable[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The (lowest, highest) learning rate that reached the target, or None."""
    lrs = [r["learning_rate"] for r in records if r["status"] == "reached"]
    return (min(lrs), max(lrs)) if lrs else None


def unbroken_band(records: Iterable[Mapping[str, Any]]) -> tuple[float, float] | None:
    """The (lowest, highest) rate of the run of consecutive rates, in rate order, that all reached
    the target around the best member (`best_member`), or None. Unlike `reached_band`, a rate that
    missed between two that reached ends the band, so its width is the range one can pick from."""
    records = list(records)
    best = best_member(records)
    if best is None:
        return None
    by_rate = sorted(records, key=lambda r: r["learning_rate"])
    at = next(i for i, r in enumerate(by_rate) if r is best)
    lo = hi = at
    while lo > 0 and by_rate[lo - 1]["status"] == "reached":
        lo -= 1
    while hi < len(by_rate) - 1 and by_rate[hi + 1]["status"] == "reached":
        hi += 1
    return by_rate[lo]["learning_rate"], by_rate[hi]["learning_rate"]


def best_and_band(records: Iterable[Mapping[str, Any]]) -> tuple[Any, tuple[float, float] | None]:
    """`best_member` and `reached_band` of the same outcomes."""
    records = list(records)
    return best_member(records), reached_band(records)


def best_rates(members: Iterable[Mapping[str, Any]], optimizers: Iterable[str]) -> dict[str, Any]:
    """Per optimizer, its best member (`best_member`); None where none of its members reached the target."""
    members = list(members)
    return {name: best_member(m for m in members if m["optimizer"] == name) for name in optimizers}
