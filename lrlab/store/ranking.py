"""The one rule that picks a best member, and the band of rates that reached the target."""

from __future__ import annotations

from typing import Any, Iterable

BEST_RULE = "fewest steps to target; ties: the lower learning rate"


def best_member(records: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The one best-rate rule of lrlab (BEST_RULE): among the members that reached the target, the
    fewest steps to target, ties to the lower learning rate (then the earlier member); None if none
    reached it."""
    reached = [r for r in records if r["status"] == "reached"]
    if not reached:
        return None
    return min(reached, key=lambda r: (r["steps_to_target"], r["learning_rate"]))


def reached_band(records: Iterable[dict[str, Any]]) -> tuple[float, float] | None:
    """The (lowest, highest) learning rate that reached the target, or None."""
    lrs = [r["learning_rate"] for r in records if r["status"] == "reached"]
    return (min(lrs), max(lrs)) if lrs else None


def best_and_band(records: Iterable[dict[str, Any]]) -> tuple[dict[str, Any] | None, tuple[float, float] | None]:
    """`best_member` and `reached_band` of the same members."""
    records = list(records)
    return best_member(records), reached_band(records)


def best_rates(members: Iterable[dict[str, Any]], optimizers: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Per optimizer, its best member (`best_member`); None where none of its members reached the target."""
    members = list(members)
    return {name: best_member(m for m in members if m["optimizer"] == name) for name in optimizers}
