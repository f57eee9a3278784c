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

from lrlab import population as pop_lib

SCHEMA_VERSION = 1
# Per-member numeric fields saved with Orbax (NaN / -1 mark "none"); everything in results.json.
ORBAX_FIELDS = ("learning_rate", "status", "steps_to_target", "examples_to_target",
                "seconds_to_target", "final_train_accuracy", "final_test_accuracy", "steps_trained")


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
        cell = lambda v, width, spec: f"{'-' if v is None else format(v, spec):>{width}}"
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
