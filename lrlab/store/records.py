"""Run records: one per member, written as results.json (schema in README) and with Orbax.

Files are written atomically (temporary file, then rename), so a crash never leaves a truncated
results file behind.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lrlab.engine import population
from lrlab.store.files import read_json
from lrlab.version import __version__

SCHEMA_VERSION = 2  # 2: records name their metrics <set>_<metric> (final_train_accuracy, ...) and their group
READABLE_SCHEMAS = (1, 2)  # what the readers of results.json (optimizer_comparison --from_valley, ...) accept
# Per-member numeric fields saved with Orbax (NaN / -1 mark "none"), besides each final_* metric;
# everything is in results.json.
ORBAX_FIELDS = ("learning_rate", "status", "steps_to_target", "examples_to_target", "seconds_to_target",
                "steps_trained")
INTEGER_FIELDS = ("steps_to_target", "examples_to_target", "steps_trained")
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
    final: population.Population,
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
        reached = steps != population.NO_STEP
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
            "status": population.STATUS_NAMES[int(final.status[i])],
            "steps_to_target": steps if reached else None,
            "examples_to_target": steps * batch_size if reached else None,
            "seconds_to_target": float(seconds_to_target[i]) if reached else None,
            "steps_trained": int(final.steps_trained[i]),
            **finals, **tests,
            "curve": curves[i],
        })
    return records


def group_of(record: dict[str, Any]) -> str:
    """A record's valley (records of schema 1 have none: their optimizer's)."""
    return record.get("group") or record["optimizer"]


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
                fields[name] = np.array([population.STATUS_NAMES.index(v) for v in values], np.int32)
            elif name in INTEGER_FIELDS:
                fields[name] = np.array([-1 if v is None else v for v in values], np.int64)
            else:
                fields[name] = np.array([np.nan if v is None else v for v in values], np.float64)
        fields["hyperparameters"] = {h: np.array([r["hyperparameters"][h] for r in rows], np.float64)
                                     for h in rows[0]["hyperparameters"]}
        tree[opt] = fields
    return tree


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


def status_text(record: Mapping[str, Any]) -> str:
    """A member's status as tables print it: with the rule that retired it ("retired (pace)")."""
    return f"{record['status']} ({record['retired_by']})" if record.get("retired_by") else record["status"]
