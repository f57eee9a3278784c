"""Run records: one per member, written as results.json (schema in README) and with Orbax.

Files are written atomically (temporary file, then rename), so a crash never leaves a truncated
results file behind.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any, Iterable

import jax
import numpy as np

from lrlab import __version__
from lrlab import population as pop_lib

SCHEMA_VERSION = 1
# Per-member numeric fields saved with Orbax (NaN / -1 mark "none"); everything in results.json.
ORBAX_FIELDS = ("learning_rate", "status", "steps_to_target", "examples_to_target",
                "seconds_to_target", "final_train_accuracy", "final_test_accuracy", "steps_trained")


def cell(value: Any, width: int, spec: str) -> str:
    """A right-aligned table cell of `value` in `spec`, or '-' where there is none."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def member_records(
    optimizer: str,
    hparams_K: dict[str, np.ndarray],
    final: pop_lib.Population,
    curves: list[dict[str, list[float]]],
    seconds_to_target: np.ndarray,
    test_accuracy_K: np.ndarray,
    batch_size: int,
) -> list[dict[str, Any]]:
    """One JSON-ready record per member of a finished population (host arrays)."""
    records = []
    for i in range(len(hparams_K["learning_rate"])):
        steps = int(final.steps_to_target[i])
        reached = steps != pop_lib.NO_STEP
        records.append({
            "optimizer": optimizer,
            "learning_rate": float(hparams_K["learning_rate"][i]),
            "hyperparameters": {k: float(v[i]) for k, v in hparams_K.items()},
            "status": pop_lib.STATUS_NAMES[int(final.status[i])],
            "steps_to_target": steps if reached else None,
            "examples_to_target": steps * batch_size if reached else None,
            "seconds_to_target": float(seconds_to_target[i]) if reached else None,
            "steps_trained": int(final.steps_trained[i]),
            "final_train_accuracy": float(final.train_accuracy[i]),
            "final_test_accuracy": float(test_accuracy_K[i]),
            "curve": curves[i],
        })
    return records


def best_and_band(records: Iterable[dict[str, Any]]) -> tuple[dict[str, Any] | None, tuple[float, float] | None]:
    """The member with the fewest steps to target (ties: lower seconds, then lower rate), and the
    (lowest, highest) learning rate that reached the target; None where no member reached it."""
    reached = [r for r in records if r["status"] == "reached"]
    if not reached:
        return None, None
    best = min(reached, key=lambda r: (r["steps_to_target"], r["seconds_to_target"] or 0.0, r["learning_rate"]))
    lrs = [r["learning_rate"] for r in reached]
    return best, (min(lrs), max(lrs))


def atomic_write(path: pathlib.Path, write) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _finite_or_none(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically; NaN becomes null."""
    text = json.dumps(_finite_or_none(obj), indent=1, default=_json_default, allow_nan=False)
    atomic_write(pathlib.Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def orbax_tree(records: list[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """Per optimizer, per field: a member-indexed numpy array (status as its code; None -> -1/NaN)."""
    tree: dict[str, dict[str, Any]] = {}
    for opt in dict.fromkeys(r["optimizer"] for r in records):
        rows = [r for r in records if r["optimizer"] == opt]
        fields = {}
        for name in ORBAX_FIELDS:
            values = [r[name] for r in rows]
            if name == "status":
                fields[name] = np.array([pop_lib.STATUS_NAMES.index(v) for v in values], np.int32)
            elif name in ("steps_to_target", "examples_to_target", "steps_trained"):
                fields[name] = np.array([-1 if v is None else v for v in values], np.int64)
            else:
                fields[name] = np.array([np.nan if v is None else v for v in values], np.float64)
        tree[opt] = fields
    return tree


def save_orbax(directory: str | os.PathLike, tree: Any) -> None:
    """Saves a pytree of arrays with Orbax (its own atomic commit: a temporary dir, then rename)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(pathlib.Path(directory).absolute(), tree, force=True)
        ckptr.wait_until_finished()


def restore_orbax(directory: str | os.PathLike) -> Any:
    """Restores what `save_orbax` wrote, as numpy arrays."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(pathlib.Path(directory).absolute())
    return jax.tree_util.tree_map(np.asarray, tree)


def format_table(records: list[dict[str, Any]], eval_every: int) -> str:
    """A plain-text table of the members, then the best rate and the band that reached the target."""
    lines = []
    for opt in dict.fromkeys(r["optimizer"] for r in records):
        rows = sorted((r for r in records if r["optimizer"] == opt), key=lambda r: r["learning_rate"])
        lines.append(f"\n{opt}: {len(rows)} learning rates (steps to target resolved to {eval_every} steps)")
        lines.append(f"{'learning_rate':>13}  {'status':<9}  {'steps':>6}  {'examples':>9}  {'seconds':>8}  "
                     f"{'train_acc':>9}  {'test_acc':>8}")
        for r in rows:
            lines.append(f"{r['learning_rate']:>13.4g}  {r['status']:<9}  {cell(r['steps_to_target'], 6, 'd')}  "
                         f"{cell(r['examples_to_target'], 9, 'd')}  {cell(r['seconds_to_target'], 8, '.1f')}  "
                         f"{r['final_train_accuracy']:>9.4f}  {r['final_test_accuracy']:>8.4f}")
        best, band = best_and_band(rows)
        if best is None:
            lines.append(f"{opt}: no learning rate reached the target")
        else:
            n = sum(r["status"] == "reached" for r in rows)
            lines.append(f"{opt}: best learning rate {best['learning_rate']:.4g} "
                         f"({best['steps_to_target']} steps, {best['examples_to_target']} examples, "
                         f"{best['seconds_to_target']:.1f} s); band that reached the target: "
                         f"{band[0]:.4g} to {band[1]:.4g} ({n} of {len(rows)} rates)")
    return "\n".join(lines)


def envelope(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per learning rate (ascending): the fastest and slowest optimizer to the target, and how many
    reached it. The article's second figure; rates no optimizer trained have None for both."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in records:
        by_lr.setdefault(r["learning_rate"], []).append(r)
    rows = []
    for lr in sorted(by_lr):
        reached = sorted((r for r in by_lr[lr] if r["status"] == "reached"),
                         key=lambda r: (r["steps_to_target"], r["optimizer"]))
        fastest, slowest = (reached[0], reached[-1]) if reached else (None, None)
        rows.append({
            "learning_rate": lr, "optimizers": len(by_lr[lr]), "reached": len(reached),
            "fastest": fastest and fastest["optimizer"], "fastest_steps": fastest and fastest["steps_to_target"],
            "slowest": slowest and slowest["optimizer"], "slowest_steps": slowest and slowest["steps_to_target"],
        })
    return rows


def trained_band(envelope_rows: list[dict[str, Any]]) -> tuple[float, float] | None:
    """The (lowest, highest) learning rate that trained with at least one optimizer, or None."""
    lrs = [row["learning_rate"] for row in envelope_rows if row["reached"]]
    return (min(lrs), max(lrs)) if lrs else None


# optimizer_comparison: each optimizer at its best learning rate, its test-set curve and instability.

def read_valley(path: str | os.PathLike) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    """The member records of an lr_valley results.json (`path`, or the one in the workdir `path`).

    Raises ValueError with a one-line reason for a missing or unreadable file or another schema.
    """
    path = pathlib.Path(path)
    folder = path.is_dir()
    if folder:
        path = path / "results.json"
    try:
        summary = read_json(path)
    except FileNotFoundError:
        raise ValueError("no results.json in that folder (run lr_valley there first)" if folder else
                         "no such file (give an lr_valley results.json or its --workdir)") from None
    except (OSError, ValueError) as e:  # JSON and Unicode decoding errors are ValueErrors
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(f"{path.name} is unreadable ({type(e).__name__}: {reason})") from None
    if not (isinstance(summary, dict) and summary.get("experiment") == "lr_valley"
            and summary.get("schema_version") == SCHEMA_VERSION):
        found = (f"experiment {summary.get('experiment')!r}, schema version {summary.get('schema_version')!r}"
                 if isinstance(summary, dict) else f"a JSON {type(summary).__name__}")
        raise ValueError(f"{path.name} is not lr_valley's results of schema version {SCHEMA_VERSION} ({found})")
    members = summary.get("members")
    needed = {"optimizer", "learning_rate", "status", "steps_to_target", "seconds_to_target"}
    if not isinstance(members, list) or not all(isinstance(m, dict) and needed <= m.keys() for m in members):
        raise ValueError(f"{path.name}: its members lack some of {', '.join(sorted(needed))}")
    return path, members


def best_rates(members: Iterable[dict[str, Any]], optimizers: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Per optimizer, its reached member with the fewest steps to target (ties: the lower rate);
    None where none of its members reached the target."""
    members = list(members)
    best = {}
    for name in optimizers:
        reached = [m for m in members if m["optimizer"] == name and m["status"] == "reached"]
        best[name] = min(reached, key=lambda m: (m["steps_to_target"], m["learning_rate"])) if reached else None
    return best


def first_at_target(train_accuracy: list[float], target: float) -> int | None:
    """Index of the first evaluation at or above the target (lr_valley's rule), or None."""
    return next((i for i, acc in enumerate(train_accuracy) if acc >= target), None)


def accuracy_drops(accuracy: Iterable[float], threshold: float) -> tuple[int, float]:
    """Instability of a curve: how many evaluations fell more than `threshold` (absolute) below the
    best seen before them, and the largest such drop (0.0 when none)."""
    best, count, largest = -math.inf, 0, 0.0
    for acc in accuracy:
        drop = best - acc
        if drop > threshold:
            count, largest = count + 1, max(largest, drop)
        best = max(best, acc)
    return count, largest


def comparison_entry(record: dict[str, Any], lr_source: dict[str, Any], target: float, drop_threshold: float,
                     batch_size: int) -> dict[str, Any]:
    """optimizer_comparison's result for one optimizer, from its member record (whose curve holds
    test_accuracy): steps and seconds to target, the test curve, final accuracies, instability."""
    curve = record["curve"]
    at = first_at_target(curve["train_accuracy"], target)
    test_acc = curve.get("test_accuracy", [])
    drops, largest = accuracy_drops(test_acc, drop_threshold)
    if record["status"] == "diverged":
        status = "diverged"  # even after reaching the target: its steps to target are kept
    else:
        status = "reached" if at is not None else "exhausted"
    return {
        "learning_rate": record["learning_rate"],
        "lr_source": lr_source,
        "hyperparameters": record["hyperparameters"],
        "status": status,
        "steps_to_target": None if at is None else curve["step"][at],
        "examples_to_target": None if at is None else curve["step"][at] * batch_size,
        "seconds_to_target": None if at is None else curve["seconds"][at],
        "steps_trained": record["steps_trained"],
        "final_train_accuracy": record["final_train_accuracy"],
        "final_test_accuracy": record["final_test_accuracy"],
        "final_test_subset_accuracy": test_acc[-1] if test_acc else None,
        "instability": {"drops": drops, "largest_drop": largest, "threshold": drop_threshold},
        "test_curve": {"step": curve["step"][:len(test_acc)], "seconds": curve["seconds"][:len(test_acc)],
                       "test_accuracy": test_acc},
        "train_curve": {k: curve[k] for k in ("step", "train_accuracy", "loss", "seconds")},
    }


def comparison_table(entries: dict[str, dict[str, Any]], target: float) -> str:
    """optimizer_comparison's printed table: one row per optimizer."""
    pct = f"{target * 100:g}%"
    lines = [f"{'optimizer':<9}  {'lr':>9}  {'from':<6}  {'status':<9}  {'steps to ' + pct:>12}  "
             f"{'seconds to ' + pct:>14}  {'final test acc':>14}  {'drops':>5}  {'largest drop':>12}"]
    for name, e in entries.items():
        lines.append(f"{name:<9}  {e['learning_rate']:>9.4g}  {e['lr_source']['from']:<6}  {e['status']:<9}  "
                     f"{cell(e['steps_to_target'], 12, 'd')}  {cell(e['seconds_to_target'], 14, '.1f')}  "
                     f"{e['final_test_accuracy']:>14.4f}  {e['instability']['drops']:>5d}  "
                     f"{e['instability']['largest_drop']:>12.4f}")
    return "\n".join(lines)


def run_header(experiment: str) -> dict[str, Any]:
    """The fields every experiment's results.json starts with: schema, experiment, version, devices."""
    return {"schema_version": SCHEMA_VERSION, "experiment": experiment, "lrlab_version": __version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


# Valleys side by side (the schedules experiment; any experiment that groups one optimizer's members):
# each group's best rate, time to target and band of rates that reached the target.

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
    lines.append(f"other: members pruned or stopped early; steps, examples, seconds: to the target at the best "
                 f"rate (steps resolved to {eval_every}); in band: rates that reached the target / rates tried "
                 "between band low and high")
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
