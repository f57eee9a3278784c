"""Valleys read off member records: the printed table, each valley's headline numbers (best rate,
band), the envelope of several valleys, the rate x variant matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from lrlab.store.ranking import best_and_band
from lrlab.store.records import cell, group_of, status_text


def format_table(records: list[dict[str, Any]], eval_every: int, target_key: str = "train_accuracy") -> str:
    """A plain-text table of the members of each valley, then its best rate and the band of rates
    that reached the target. `target_key` names the target metric's records ("train_accuracy")."""
    lines = []
    metric = target_key.split("_", 1)[1]
    test_key = f"final_test_{metric}"
    width, test_width = max(9, len(target_key)), max(8, len(metric) + 5)
    with_test = any(r.get(test_key) is not None for r in records)  # a task without a test set: no column
    for opt in dict.fromkeys(group_of(r) for r in records):
        rows = sorted((r for r in records if group_of(r) == opt), key=lambda r: r["learning_rate"])
        seeds = len({r.get("seed") for r in rows})
        lines.append(f"\n{opt}: {len(rows) // seeds} learning rates" + (f" x {seeds} seeds" if seeds > 1 else "")
                     + f" (steps to target resolved to {eval_every} steps)")
        lines.append(f"{'learning_rate':>13}  {'status':<16}  {'steps':>6}  {'examples':>9}  {'seconds':>8}  "
                     f"{target_key:>{width}}" + (f"  {'test_' + metric:>{test_width}}" if with_test else ""))
        for r in rows:
            lines.append(f"{r['learning_rate']:>13.4g}  {status_text(r):<16}  {cell(r['steps_to_target'], 6, 'd')}  "
                         f"{cell(r['examples_to_target'], 9, 'd')}  {cell(r['seconds_to_target'], 8, '.1f')}  "
                         f"{cell(r.get('final_' + target_key), width, '.4f')}"
                         + (f"  {cell(r.get(test_key), test_width, '.4f')}" if with_test else ""))
        best, band = best_and_band(rows)
        if best is None:
            lines.append(f"{opt}: no learning rate reached the target")
        else:
            n = sum(r["status"] == "reached" for r in rows)
            lines.append(f"{opt}: best learning rate {best['learning_rate']:.4g} "
                         f"({best['steps_to_target']} steps, {best['examples_to_target']} examples, "
                         f"{best['seconds_to_target']:.1f} s); band that reached the target: "
                         f"{band[0]:.4g} to {band[1]:.4g} ({n} of {len(rows)} {'members' if seeds > 1 else 'rates'})")
    return "\n".join(lines)


def envelope(records: Iterable[dict[str, Any]], cap: int | None = None) -> list[dict[str, Any]]:
    """Per learning rate (ascending): the fastest and slowest valley (optimizer) to the target, and
    how many reached it. The article's second figure; rates no optimizer trained have None for both.
    With `cap` (the step budget), `article_slowest_steps` is the article's reading of the slowest:
    the cap wherever any optimizer missed ("the max time is 120 s across the whole graph")."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in records:
        by_lr.setdefault(r["learning_rate"], []).append(r)
    rows = []
    for lr in sorted(by_lr):
        reached = sorted((r for r in by_lr[lr] if r["status"] == "reached"),
                         key=lambda r: (r["steps_to_target"], group_of(r)))
        fastest, slowest = (reached[0], reached[-1]) if reached else (None, None)
        rows.append({
            "learning_rate": lr, "optimizers": len(by_lr[lr]), "reached": len(reached),
            "fastest": fastest and group_of(fastest), "fastest_steps": fastest and fastest["steps_to_target"],
            "slowest": slowest and group_of(slowest), "slowest_steps": slowest and slowest["steps_to_target"],
        })
        if cap is not None:
            rows[-1]["article_slowest_steps"] = slowest["steps_to_target"] if len(reached) == len(by_lr[lr]) else cap
    return rows


def trained_band(envelope_rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """The (lowest, highest) learning rate that trained with at least one optimizer, or None."""
    lrs = [row["learning_rate"] for row in envelope_rows if row["reached"]]
    return (min(lrs), max(lrs)) if lrs else None


def valley_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """One valley's headline numbers: members per status, the best member (fewest steps to target)
    and the band of rates that reached the target: lowest..highest, how many reached it, how many
    of the tried rates lie in the band (more than reached: gaps), its width in decades."""
    rows = list(records)
    best, band = best_and_band(rows)
    statuses = {name: sum(r["status"] == name for r in rows) for name in dict.fromkeys(r["status"] for r in rows)}
    summary: dict[str, Any] = {"members": len(rows), "statuses": statuses, "best": None, "band": None}
    if best is not None:
        summary["best"] = {k: best[k] for k in ("learning_rate", "steps_to_target", "examples_to_target",
                                                "seconds_to_target")}
        summary["band"] = {"low": band[0], "high": band[1], "reached": statuses["reached"],
                           "rates_in_band": sum(band[0] <= r["learning_rate"] <= band[1] for r in rows),
                           "decades": math.log10(band[1] / band[0])}
    return summary


def valley_summaries(records: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    """`valley_summary` of each value of `field` (for example "schedule"), in first-seen order."""
    return {group: valley_summary(r for r in records if r[field] == group)
            for group in dict.fromkeys(r[field] for r in records)}


def summaries_table(summaries: dict[str, dict[str, Any]], label: str, eval_every: int) -> str:
    """Printed table of `valley_summaries`: one row per group with its best rate, time to target
    there, and the band of rates that reached the target."""
    width = max([len(label)] + [len(str(g)) for g in summaries])
    lines = [f"{label:<{width}}  {'reached':>7}  {'diverged':>8}  {'exhausted':>9}  {'other':>5}  {'best lr':>9}  "
             f"{'steps':>6}  {'examples':>9}  {'seconds':>8}  {'band low':>9}  {'band high':>9}  {'decades':>7}  "
             f"{'in band':>7}"]
    for group, s in summaries.items():
        best, band = s["best"] or {}, s["band"] or {}
        other = sum(n for name, n in s["statuses"].items() if name not in ("reached", "diverged", "exhausted"))
        lines.append(
            f"{str(group):<{width}}  {s['statuses'].get('reached', 0):>7d}  {s['statuses'].get('diverged', 0):>8d}  "
            f"{s['statuses'].get('exhausted', 0):>9d}  {other:>5d}  {cell(best.get('learning_rate'), 9, '.4g')}  "
            f"{cell(best.get('steps_to_target'), 6, 'd')}  {cell(best.get('examples_to_target'), 9, 'd')}  "
            f"{cell(best.get('seconds_to_target'), 8, '.1f')}  {cell(band.get('low'), 9, '.4g')}  "
            f"{cell(band.get('high'), 9, '.4g')}  {cell(band.get('decades'), 7, '.2f')}  "
            f"{(str(band['reached']) + '/' + str(band['rates_in_band'])) if band else '-':>7}")
    lines.append(f"other: members pruned, stopped early or retired; steps, examples, seconds: to the "
                 f"target at the best rate (steps resolved to {eval_every}); in band: rates that reached the target "
                 "/ rates tried between band low and high")
    return "\n".join(lines)


def valley_matrix(records: list[dict[str, Any]], field: str) -> str:
    """Steps to target per learning rate (rows) and value of `field` (columns); a member that missed
    the target shows its status."""
    groups = list(dict.fromkeys(r[field] for r in records))
    by_key = {(r["learning_rate"], r[field]): r for r in records}
    width = max([9] + [len(str(g)) for g in groups])
    lines = [f"{'lr':>11}  " + "  ".join(f"{str(g):>{width}}" for g in groups)]
    for lr in sorted({r["learning_rate"] for r in records}):
        cells = []
        for g in groups:
            r = by_key.get((lr, g))
            text = "" if r is None else str(r["steps_to_target"]) if r["status"] == "reached" else r["status"]
            cells.append(f"{text:>{width}}")
        lines.append(f"{lr:>11.4g}  " + "  ".join(cells))
    return "\n".join(lines)
