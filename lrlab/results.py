"""Run records: one per member, written as results.json (schema in README) and with Orbax.

Files are written atomically (temporary file, then rename), so a crash never leaves a truncated
results file behind.
"""

from __future__ import annotations

import dataclasses
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

SCHEMA_VERSION = 2  # 2: records name their metrics <set>_<metric> (final_train_accuracy, ...) and their group
READABLE_SCHEMAS = (1, 2)  # what the readers of results.json (optimizer_comparison --from_valley, ...) accept
# Per-member numeric fields saved with Orbax (NaN / -1 mark "none"), besides each final_* metric;
# everything is in results.json.
ORBAX_FIELDS = ("learning_rate", "status", "steps_to_target", "examples_to_target", "seconds_to_target",
                "steps_trained")
INTEGER_FIELDS = ("steps_to_target", "examples_to_target", "steps_trained")
BEST_RULE = "fewest steps to target; ties: the lower learning rate"
RESULTS_FILE = "results.json"  # a run's results in its workdir (the run handle, workdir.py, writes it)


def cell(value: Any, width: int, spec: str) -> str:
    """A right-aligned table cell of `value` in `spec`, or '-' where there is none."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


def group_labels(name: str, hparams_K: dict[str, np.ndarray]) -> list[str]:
    """Each member's valley: the population's name and, where they vary, its hyperparameters other
    than the learning rate ("adamw weight_decay=0.0001"); one valley per label."""
    k = len(hparams_K["learning_rate"])
    varying = [h for h, v in hparams_K.items() if h != "learning_rate" and len(np.unique(np.asarray(v))) > 1]
    return [" ".join([name] + [f"{h}={float(hparams_K[h][i]):.4g}" for h in varying]) for i in range(k)]


def member_records(
    name: str,
    hparams_K: dict[str, np.ndarray],
    final: pop_lib.Population,
    curves: list[dict[str, list[float]]],
    seconds_to_target: np.ndarray,
    test_metrics: dict[str, np.ndarray] | None,
    batch_size: int,
    target_key: str,
    metric_keys: list[str],
) -> list[dict[str, Any]]:
    """One JSON-ready record per member of a finished population (host arrays): its population
    (`optimizer`: the population's name) and valley (`group`), hyperparameters, outcome, the last
    evaluation of each metric (`final_<set>_<metric>`, from its curve), each
    metric on the test set (`final_test_<metric>`, None without one), and its curve."""
    records = []
    groups = group_labels(name, hparams_K)
    for i in range(len(hparams_K["learning_rate"])):
        steps = int(final.steps_to_target[i])
        reached = steps != pop_lib.NO_STEP
        finals = {f"final_{key}": (curves[i][key][-1] if curves[i].get(key) else None) for key in metric_keys}
        if finals.get(f"final_{target_key}") is None:  # no curve kept: the population's latest evaluation
            finals[f"final_{target_key}"] = float(final.target_value[i])
        tests = {f"final_test_{m}": (None if test_metrics is None else float(v[i]))
                 for m, v in (test_metrics or {}).items()}
        records.append({
            "optimizer": name,
            "group": groups[i],
            "learning_rate": float(hparams_K["learning_rate"][i]),
            "hyperparameters": {k: float(v[i]) for k, v in hparams_K.items()},
            "status": pop_lib.STATUS_NAMES[int(final.status[i])],
            "steps_to_target": steps if reached else None,
            "examples_to_target": steps * batch_size if reached else None,
            "seconds_to_target": float(seconds_to_target[i]) if reached else None,
            "steps_trained": int(final.steps_trained[i]),
            **finals, **tests,
            "curve": curves[i],
        })
    return records


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


def group_of(record: dict[str, Any]) -> str:
    """A record's valley (records of schema 1 have none: their optimizer's)."""
    return record.get("group") or record["optimizer"]


def atomic_write(path: pathlib.Path, write) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what any other tool's output gets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def finite_or_none(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically; NaN becomes null."""
    text = json.dumps(finite_or_none(obj), indent=1, default=json_default, allow_nan=False)
    atomic_write(pathlib.Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def orbax_tree(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per population (`optimizer`), per field: a member-indexed numpy array (status as its code;
    None -> -1 / NaN): ORBAX_FIELDS, every final_* metric, and `hyperparameters` {name: array}."""
    tree: dict[str, dict[str, Any]] = {}
    for opt in dict.fromkeys(r["optimizer"] for r in records):
        rows = [r for r in records if r["optimizer"] == opt]
        names = list(ORBAX_FIELDS) + [k for k in rows[0] if k.startswith("final_")]
        fields: dict[str, Any] = {}
        for name in names:
            values = [r[name] for r in rows]
            if name == "status":
                fields[name] = np.array([pop_lib.STATUS_NAMES.index(v) for v in values], np.int32)
            elif name in INTEGER_FIELDS:
                fields[name] = np.array([-1 if v is None else v for v in values], np.int64)
            else:
                fields[name] = np.array([np.nan if v is None else v for v in values], np.float64)
        fields["hyperparameters"] = {h: np.array([r["hyperparameters"][h] for r in rows], np.float64)
                                     for h in rows[0]["hyperparameters"]}
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
        lines.append(f"{'learning_rate':>13}  {'status':<9}  {'steps':>6}  {'examples':>9}  {'seconds':>8}  "
                     f"{target_key:>{width}}" + (f"  {'test_' + metric:>{test_width}}" if with_test else ""))
        for r in rows:
            lines.append(f"{r['learning_rate']:>13.4g}  {r['status']:<9}  {cell(r['steps_to_target'], 6, 'd')}  "
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


# Reading an lr_valley run's results (optimizer_comparison --from_valley, lr_finder --valley).

def read_valley(path: str | os.PathLike) -> tuple[pathlib.Path, list[dict[str, Any]]]:
    """The member records of an lr_valley results.json (`path`, or the one in the workdir `path`).

    Raises ValueError with a one-line reason for a missing or unreadable file or another schema.
    """
    path = pathlib.Path(path)
    folder = path.is_dir()
    if folder:
        path = path / RESULTS_FILE
    try:
        summary = read_json(path)
    except FileNotFoundError:
        raise ValueError("no results.json in that folder (run lr_valley there first)" if folder else
                         "no such file (give an lr_valley results.json or its --workdir)") from None
    except (OSError, ValueError) as e:  # JSON and Unicode decoding errors are ValueErrors
        reason = str(e).splitlines()[0][:200] if str(e) else ""
        raise ValueError(f"{path.name} is unreadable ({type(e).__name__}: {reason})") from None
    if not (isinstance(summary, dict) and summary.get("experiment") == "lr_valley"
            and summary.get("schema_version") in READABLE_SCHEMAS):
        found = (f"experiment {summary.get('experiment')!r}, schema version {summary.get('schema_version')!r}"
                 if isinstance(summary, dict) else f"a JSON {type(summary).__name__}")
        raise ValueError(f"{path.name} is not lr_valley's results of schema version "
                         f"{' or '.join(map(str, READABLE_SCHEMAS))} ({found})")
    members = summary.get("members")
    needed = {"optimizer", "learning_rate", "status", "steps_to_target", "seconds_to_target"}
    if not isinstance(members, list) or not all(isinstance(m, dict) and needed <= m.keys() for m in members):
        raise ValueError(f"{path.name}: its members lack some of {', '.join(sorted(needed))}")
    return path, members


def best_rates(members: Iterable[dict[str, Any]], optimizers: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """Per optimizer, its best member (`best_member`); None where none of its members reached the target."""
    members = list(members)
    return {name: best_member(m for m in members if m["optimizer"] == name) for name in optimizers}


def run_header(experiment: str) -> dict[str, Any]:
    """The fields every experiment's results.json starts with: schema, experiment, version, devices."""
    return {"schema_version": SCHEMA_VERSION, "experiment": experiment, "lrlab_version": __version__,
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}


def target_text(summary: dict[str, Any]) -> str:
    """A results.json's target in words: "train_accuracy >= 0.97" (version 1: "0.97")."""
    target = summary.get("target")
    if target is None:
        return f"{summary.get('target_accuracy', '?'):g}"
    return f"{summary['target_key']} {'>=' if target['mode'] == 'max' else '<='} {target['goal']:g}"


def task_header(task: Any, settings: Any = None) -> dict[str, Any]:
    """What every experiment's results.json says of its task and settings: the task, the model
    (name, weights, and width for lrlab's built-in models), the dataset, the target and where it
    is measured, the resolution of steps to target, the budget, the settings."""
    described = task.describe()
    model = {"name": described.get("model_name", task.model.name), "parameters": described["parameters"]}
    if "width" in described:
        model["width"] = described["width"]
    header = {"task": described, "model": model, "dataset": described.get("dataset", task.name),
              "target": dataclasses.asdict(task.target), "target_key": task.target_key}
    if settings is not None:
        header.update({"steps_to_target_resolution": settings.budget.eval_every,
                       "max_steps": settings.budget.max_steps, "settings": settings.to_json()})
    return header


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
