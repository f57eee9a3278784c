"""A finished run's member records where researchers already look: an Optuna study (one trial per
member), TensorBoard scalars (one run per member) and a table (members.csv, one row per member).

Generic over the records (`optimizer`, `hyperparameters`, `status`, `steps_to_target`, `curve`,
and whatever scalar fields an experiment adds): written once at the end of a run, never in the
training loop, each replaced whole, so a resumed or repeated run never duplicates a trial. The run
handle (`workdir.Workdir.save_views`) names the files; Optuna, tensorboardX and SQLAlchemy are
imported only when these are written or a storage URL is checked.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.util
import io
import math
import os
import pathlib
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.store import files, ranking
from lrlab.task.target import Target

STORAGE_IN_WORKDIR = "workdir"  # --optuna_storage default: sqlite:///<workdir>/optuna.db
NO_STORAGE = "none"
# Each member status -> the state of its Optuna trial: the one table (README, "Optuna, TensorBoard, a table").
# A member with a steps_to_target (it reached the target) is COMPLETE whatever its later status.
TRIAL_STATES = {
    "reached": "COMPLETE",   # value: steps to target
    "exhausted": "COMPLETE",  # budget spent: a miss, valued above the budget (MISS_VALUE), so it sorts last
    "stopped": "COMPLETE",   # early stopping without reaching the target: a miss
    "running": "COMPLETE",   # ended by a wall-clock budget or a whole-population stop (PBT): a miss
    "pruned": "PRUNED",      # successive halving stopped it; valued as a miss
    "retired": "PRUNED",     # retired: at chance or out of pace; valued as a miss
    "diverged": "FAIL",      # non-finite loss or weights: no value
}
MISS_VALUE = ("steps_to_target when reached; a miss: max_steps * (1 + the shortfall of its best target value, in "
              "[0, 1]), above every reached value; diverged: FAIL, no value (lrlab.store.ranking.objective)")
# Record fields the engine produces (results, not settings): the others that are scalars (schedule,
# technique, width, seed...) name a member together with its hyperparameters.
RESULT_FIELDS = frozenset({"optimizer", "group", "learning_rate", "status", "steps_to_target", "examples_to_target",
                           "seconds_to_target", "steps_trained", "objective", "index", "round", "best_target_value",
                           "optuna_trial", "parameters", "retired_by", "retired_at"})


@dataclasses.dataclass(frozen=True)
class Views:
    """Where a run's records go besides results.json: `optuna_storage` "workdir" (sqlite:///<workdir>/
    optuna.db), "none", or any RDB URL Optuna accepts (checked here: one line, before any work);
    `tensorboard` writes <workdir>/tb/ (opt-in, needs tensorboardX). members.csv is always written."""

    optuna_storage: str = STORAGE_IN_WORKDIR
    tensorboard: bool = False

    def __post_init__(self):
        check_storage(self.optuna_storage)
        if self.tensorboard:
            check_tensorboard()


def optuna_available() -> bool:
    return importlib.util.find_spec("optuna") is not None


def check_tensorboard() -> None:
    """ValueError in one line when the TensorBoard writer is not installed."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise ValueError("needs tensorboardX: pip install 'lrlab[tensorboard]' (or tensorboardX)")


def check_storage(url: str) -> None:
    """ValueError in one line for a storage that cannot be written: malformed, an unknown driver, an
    SQLite file in a folder that is missing or read-only, a database that refuses the connection.
    Writes nothing."""
    if url in (STORAGE_IN_WORKDIR, NO_STORAGE):
        return
    if not optuna_available():
        raise ValueError("optuna is not installed (pip install optuna), or give 'none'")
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise ValueError(f"not a database URL ({e}); give 'workdir', 'none' or e.g. sqlite:///runs/all.db") from None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("an in-memory SQLite database is lost when the run ends: name a file")
        path = pathlib.Path(parsed.database)
        folder = path.parent if str(path.parent) else pathlib.Path(".")
        if not folder.is_dir():
            raise ValueError(f"cannot write {path}: no folder {folder}")
        if path.is_dir():
            raise ValueError(f"cannot use {path}: it is a folder, not a database file")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise ValueError(f"cannot write {path}: permission denied")
        return
    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:  # noqa: BLE001 - a missing driver, a refused connection: the storage's
        raise ValueError(f"cannot use {parsed.render_as_string(hide_password=True)}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def displayed_url(url: str) -> str:
    """The URL as results.json and the report show it (any password hidden)."""
    if not url.startswith("sqlite") and "@" in url:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    return url


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def columns(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """members.csv's columns, in first-seen order: every scalar field of the records, each
    hyperparameter beside them (the learning rate once), curves and other nested fields left out."""
    names: dict[str, None] = {}
    for r in records:
        for key, value in r.items():
            if key == "hyperparameters":
                names.update(dict.fromkeys(value))
            elif _scalar(value):
                names[key] = None
    return list(names)


def row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One member as members.csv's row: its scalar fields and hyperparameters."""
    return {**dict(record.get("hyperparameters", {})), **{k: v for k, v in record.items() if _scalar(v)}}


def setting_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scalar fields besides the hyperparameters that tell members apart (a schedule, a width, a
    seed): scalar, not a result (RESULT_FIELDS, final_*), and varying across the records."""
    out = []
    for key in columns(records):
        if key in RESULT_FIELDS or key.startswith(("final_", "initial_")) or any(key in r.get("hyperparameters", {})
                                                                   for r in records):
            continue
        if len({repr(r.get(key)) for r in records}) > 1:
            out.append(key)
    return out


def varying_hparams(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyperparameters whose values differ across the records (the learning rate always)."""
    names = list(dict.fromkeys(h for r in records for h in r.get("hyperparameters", {})))
    return [h for h in names if h == "learning_rate"
            or len({r["hyperparameters"].get(h) for r in records}) > 1]


def member_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each member's name from what sets it apart: "adam/learning_rate=0.001", "adamw/learning_rate=
    0.01,weight_decay=0.0001", "adam/schedule=cosine,learning_rate=0.1"; ",member=<i>" where that
    leaves two alike. TensorBoard's run of the member, and the trial's `name` attribute."""
    settings, hparams = setting_fields(records), varying_hparams(records)
    names = []
    for r in records:
        parts = [f"{k}={r[k]:.4g}" if isinstance(r.get(k), float) else f"{k}={r.get(k)}" for k in settings]
        parts += [f"{h}={r['hyperparameters'][h]:.4g}" for h in hparams if h in r.get("hyperparameters", {})]
        names.append(f"{r.get('optimizer', 'member')}/{','.join(parts)}")
    return [f"{n},member={i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _log_spaced(values: Sequence[float]) -> bool:
    """A grid is log-spaced when its values are positive and more evenly spaced in log than in linear
    terms (two values: a ratio of 10 or more)."""
    v = np.unique(np.asarray(values, np.float64))
    if len(v) < 2 or v[0] <= 0:
        return False
    if len(v) == 2:
        return bool(v[1] / v[0] >= 10)
    unevenness = lambda x: np.std(np.diff(x)) / np.mean(np.diff(x))
    return bool(unevenness(np.log(v)) <= unevenness(v))


def trial_value(record: Mapping[str, Any], summary: Mapping[str, Any]) -> float | None:
    """The trial's value (minimised): steps to target; a miss above the budget (MISS_VALUE); None
    for a diverged member."""
    if record.get("steps_to_target") is not None:
        return float(record["steps_to_target"])
    if TRIAL_STATES[record["status"]] == "FAIL":
        return None
    return ranking.objective({**record, "status": "missed"}, summary["max_steps"], Target(**summary["target"]),
                             summary["target_key"])


def trial_state(record: Mapping[str, Any]) -> str:
    """The trial state (TRIAL_STATES) of a member: COMPLETE once it reached the target."""
    return "COMPLETE" if record.get("steps_to_target") is not None else TRIAL_STATES[record["status"]]


def intermediate_values(record: Mapping[str, Any], target_key: str) -> dict[int, float]:
    """The member's evaluation curve of the target metric: {step: value} (missing values left out)."""
    curve = record.get("curve") or {}
    return {int(s): float(v) for s, v in zip(curve.get("step", []), curve.get(target_key, []))
            if v is not None and math.isfinite(v)}


def user_attrs(record: Mapping[str, Any], name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What the dashboard shows beside the params: the member's name and every scalar field and
    fixed hyperparameter (members.csv's row), less what the params hold."""
    return {"name": name, **{k: v for k, v in row(record).items() if k not in params}}


def distributions(records: Sequence[Mapping[str, Any]], ranges: Mapping[str, tuple[float, float, bool]] | None = None
                  ) -> dict[str, Any]:
    """The study's params and their distributions: the optimizer (categorical) and each varying
    hyperparameter, log-scaled where its grid is log-spaced; a search's `ranges` {name: (low, high,
    log)} where given, widened to the values trained (float32)."""
    import optuna.distributions as od

    out: dict[str, Any] = {"optimizer": od.CategoricalDistribution(list(dict.fromkeys(r["optimizer"]
                                                                                     for r in records)))}
    for h in varying_hparams(records):
        values = [r["hyperparameters"][h] for r in records if h in r["hyperparameters"]]
        if ranges and h in ranges:
            low, high, log = ranges[h]
            out[h] = od.FloatDistribution(min(low, *values), max(high, *values), log=log)
        else:
            out[h] = od.FloatDistribution(min(values), max(values), log=_log_spaced(values))
    return out


def make_trials(summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                ranges: Mapping[str, tuple[float, float, bool]] | None = None) -> list[Any]:
    """One finished Optuna trial per member record (in order): params, value, state, intermediate
    values and user attributes."""
    import optuna
    from optuna.trial import TrialState

    dists = distributions(records, ranges)
    names = member_names(records)
    trials = []
    for r, name in zip(records, names):
        params = {"optimizer": r["optimizer"], **{h: r["hyperparameters"][h] for h in dists
                                                   if h in r.get("hyperparameters", {})}}
        state = trial_state(r)
        trials.append(optuna.trial.create_trial(
            state=TrialState[state], value=trial_value(r, summary), params=params,
            distributions={k: dists[k] for k in params},
            intermediate_values=intermediate_values(r, summary["target_key"]), user_attrs=user_attrs(r, name, params)))
    return trials


def annotate(trial: Any, record: Mapping[str, Any], name: str, target_key: str) -> None:
    """Gives an asked trial (bayes_search's) what `make_trials` gives each trial: the curve as
    intermediate values and the record's fields as user attributes (TPE does not read them)."""
    for step, value in intermediate_values(record, target_key).items():
        trial.report(value, step)
    for key, value in user_attrs(record, name, trial.params).items():
        trial.set_user_attr(key, value)


def study_attrs(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The study's user attributes: what ran, its target and what the values mean."""
    return {"experiment": summary.get("experiment"), "lrlab_version": summary.get("lrlab_version"),
            "target": summary.get("target"), "target_key": summary.get("target_key"),
            "max_steps": summary.get("max_steps"), "value": MISS_VALUE,
            "intermediate_values": f"{summary.get('target_key')} at each evaluation"}


@contextlib.contextmanager
def _database_errors(name: str) -> Iterator[None]:
    """A database error (a full disk, a lost connection) as an OSError: one line on the command line."""
    import sqlalchemy

    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise OSError(f"the Optuna study {name}: {getattr(e, 'orig', None) or e}") from None


def _fill(storage: Any, name: str, summary: Mapping[str, Any], trials: Sequence[Any]) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    for key, value in study_attrs(summary).items():
        study.set_user_attr(key, value)
    study.add_trials(trials)


def write_study_file(path: pathlib.Path, name: str, summary: Mapping[str, Any], trials: Sequence[Any]) -> str:
    """The study in a new SQLite file at `path`, built beside it and renamed over it (a rerun
    replaces it whole). Returns its URL."""
    import optuna

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with _database_errors(name):
            storage = optuna.storages.RDBStorage(f"sqlite:///{tmp}")
            _fill(storage, name, summary, trials)
            storage.engine.dispose()
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return f"sqlite:///{path}"


def write_study(url: str, name: str, summary: Mapping[str, Any], trials: Sequence[Any]) -> str:
    """The study in an existing database: a study of the same name (this run's, written before) is
    deleted first, so a rerun leaves one copy of each trial."""
    import optuna

    with _database_errors(name):
        storage = optuna.storages.RDBStorage(url)
        if name in {s.study_name for s in storage.get_all_studies()}:
            optuna.delete_study(study_name=name, storage=storage)
        _fill(storage, name, summary, trials)
        storage.engine.dispose()
    return url


def schedule_factor(summary: Mapping[str, Any], record: Mapping[str, Any]):
    """The member's learning-rate multiplier per step (None: constant): its variant's schedule
    (the schedules experiment), else the run's settings'."""
    from lrlab.optim import schedules

    spec = (summary.get("settings") or {}).get("schedule")
    field = summary.get("field")
    variant = (summary.get(summary.get("experiment"), {}) or {}).get(record.get(field)) if field else None
    if isinstance(variant, dict) and "spec" in variant:
        spec = variant["spec"]
    if not isinstance(spec, dict):
        return None
    return schedules.factor_schedule(schedules.ScheduleSpec(**spec))


def write_tensorboard(directory: pathlib.Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
                      ) -> pathlib.Path:
    """One TensorBoard run per member under `directory` (named by `member_names`): each numeric
    curve of its record as a scalar at its steps (the training loss `loss`, the evaluation's
    `<set>_<metric>`), and `learning_rate`, the rate after the schedule. Written beside the folder
    and renamed over it."""
    from tensorboardX import SummaryWriter

    tmp, old = directory.with_name(f".{directory.name}.tmp"), directory.with_name(f".{directory.name}.old")
    for stale in (tmp, old):  # a previous write's, cut short
        shutil.rmtree(stale, ignore_errors=True)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file: lrlab writes the TensorBoard runs as a folder there")
    for r, name in zip(records, member_names(records)):
        curve = r.get("curve") or {}
        steps = [int(s) for s in curve.get("step", [])]
        if not steps:
            continue
        factor = schedule_factor(summary, r)
        lr = r["hyperparameters"]["learning_rate"]
        with SummaryWriter(str(tmp / name), flush_secs=3600, max_queue=100_000) as writer:
            for key, values in curve.items():
                if key in ("step", "seconds") or not isinstance(values, list):
                    continue
                for step, value in zip(steps, values):
                    if value is not None and math.isfinite(value):  # as results.json: no NaN
                        writer.add_scalar(key, value, step)
            for step in steps if "learning_rate" not in curve else ():  # PBT's curves carry their own
                writer.add_scalar("learning_rate", lr * (1.0 if factor is None else float(factor(step))), step)
    tmp.mkdir(parents=True, exist_ok=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def write_table(path: pathlib.Path, records: Sequence[Mapping[str, Any]]) -> pathlib.Path:
    """members.csv: one row per member, a column per scalar field and hyperparameter (empty: none),
    numbers in full precision, so `pandas.read_csv(path)` reads it as it is."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns(records), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if v is None else v) for k, v in row(r).items()})
    files.atomic_write(path, lambda f: f.write(out.getvalue().encode()))
    return path
