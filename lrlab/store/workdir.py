"""The run handle: one object owns a run's folder. It prepares and claims it (the identity saved in
flags.json must match a resume's), holds it for the run's life (a second run on it is refused),
opens its checkpoints (and closes them), and writes its results (results.json, Orbax, figures,
views) atomically, each listed in the folder's manifest. Nothing else names the files in a
workdir, and `overwrite` removes only what the manifest lists.

A run's checkpoints live under checkpoints/, in folders named by the parts of the run they hold
(`Scope`: checkpoints/adam/, checkpoints/round-2/adam/, checkpoints/width-4/adam/).
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging

from lrlab import errors
from lrlab.store import checkpoints as checkpoints_lib
from lrlab.store import files, records
from lrlab.store import views as views_lib
from lrlab.store.checkpoints import RunCheckpoints

RESULTS = records.RESULTS_FILE
ORBAX = "results_orbax"
CHECKPOINTS = "checkpoints"
IDENTITY_FILE = "identity.json"  # what decides the run's results: a resume must match it
FLAGS_FILE = "flags.json"  # a command-line run's flags, as runs made before identity.json saved them
LOWERING = "lowering.json"  # beside a population's checkpoints: the lowering chosen for it (engine/lowering.py)
CONTENT_KEYS = ("content", "optimizer_code")  # identity parts by content (digests of data and code)
MANIFEST = ".lrlab-outputs.json"  # every path lrlab wrote in the folder: what `overwrite` removes
LOCK = ".lrlab-lock"  # held (flock) by the run using the folder; says who holds it
# The views of a run's members for other tools (views.py writes them, Workdir.save_views names them).
OPTUNA_DB = "optuna.db"
TENSORBOARD = "tb"
MEMBERS_CSV = "members.csv"
# What a folder written before the manifest existed holds of lrlab's (its figures are left, and named).
UNLISTED_OUTPUTS = (RESULTS, ORBAX, FLAGS_FILE, IDENTITY_FILE, OPTUNA_DB, TENSORBOARD, MEMBERS_CSV)
# The outputs a run replaces whole: a path of that name lrlab did not write is refused at the claim.
OUTPUT_NAMES = (RESULTS, ORBAX, IDENTITY_FILE, OPTUNA_DB, TENSORBOARD, MEMBERS_CSV)


class WorkdirError(Exception):
    """A workdir that cannot be used: unwritable, or holding another run (the message says which)."""


def is_writer() -> bool:
    """Only process 0 writes results and figures (every process computes them)."""
    return jax.process_index() == 0


def default_path(experiment: str) -> pathlib.Path:
    return pathlib.Path(f"runs/{experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A JSON tree as {dotted path: leaf} (lists are leaves: a grid of rates compares whole)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _normalised(obj: Any) -> Any:
    """The JSON form of `obj` (tuples become lists, numpy numbers plain ones), as saved."""
    return json.loads(json.dumps(files.finite_or_none(obj), default=files.json_default))


_NUMBER_TOKEN = re.compile(r"[^,:=\s]+")


def same_value(a: Any, b: Any) -> bool:
    """Whether two saved settings are the same, numbers compared by value (`_canonical`)."""
    return _canonical(a) == _canonical(b)


def _canonical(value: Any) -> Any:
    """`value` with every number written in text compared by value: `--lrs=1e-3` is `--lrs=0.001`."""
    if isinstance(value, str):
        def number(match: re.Match) -> str:
            token = match.group()
            try:
                return repr(float(token)) if token[0] in "0123456789.+-" else token
            except ValueError:
                return token
        return _NUMBER_TOKEN.sub(number, value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclasses.dataclass(frozen=True)
class Scope:
    """A part of a run whose checkpoints have their own folder (None: the run keeps none)."""

    run: Workdir | None
    parts: tuple[str, ...] = ()

    def child(self, *parts: str) -> Scope:
        return Scope(self.run, self.parts + tuple(parts))

    @property
    def directory(self) -> pathlib.Path | None:
        return None if self.run is None else self.run.path.joinpath(CHECKPOINTS, *self.parts)

    def checkpoints(self, identity: Mapping[str, Any]) -> RunCheckpoints | None:
        """This part's checkpoints (None without a workdir); `identity` must match on restore."""
        return None if self.run is None else self.run.open_checkpoints(self.directory, identity)

    def saved_lowering(self) -> dict[str, Any] | None:
        """The lowering this part's population saved (None: none, or unreadable: it is chosen again)."""
        path = self.file(LOWERING)
        try:
            return None if path is None else files.read_json(path)
        except (OSError, ValueError):
            return None

    def save_lowering(self, choice: Mapping[str, Any]) -> None:
        """Keeps the lowering chosen for this part's population, so a resumed run trains as this one."""
        if self.run is not None and is_writer():
            self.directory.mkdir(parents=True, exist_ok=True)
            self.run._written(str(self.directory.relative_to(self.run.path)))
            files.write_json(self.file(LOWERING), choice)

    def file(self, name: str) -> pathlib.Path | None:
        """A file of this part beside its checkpoints (a finished search_compare row)."""
        return None if self.run is None else self.directory / name


NO_SCOPE = Scope(None)


class Workdir:
    """A run's folder. `claim(identity)` before any training: True when it already holds this
    run's results (then read them with `read_results`); otherwise the identity is saved so a rerun
    with the same one resumes from the checkpoints. The folder is held from the claim to `release`."""

    def __init__(self, path: str | os.PathLike | None, experiment: str, *, checkpoint_every: int = 10,
                 overwrite: bool = False):
        if path is not None and not str(path).strip():
            raise WorkdirError("the workdir is empty: give a folder (an unset shell variable?)")
        self.path = pathlib.Path(path) if path is not None else default_path(experiment)
        self.experiment = experiment
        self.checkpoint_every = checkpoint_every
        self.overwrite = overwrite
        self.claimed = False
        self.finished = False  # after claim: the folder already holds this run's results
        self._pending: dict[str, Any] | None = None  # the identity to save with the run's first output
        self._managers: list[RunCheckpoints] = []
        self._lock: Any = None  # the open lock file while the run holds the folder
        self.label: Callable[[str], str] = lambda path: path  # names an identity path in a refusal
        self.noun = "settings"
        self.where = str(self.path)  # the folder as messages name it (the command line: "--workdir=PATH")
        self.overwrite_name = "overwrite"  # the setting that discards a folder's run (the command line: "--overwrite")
        self.flags_matched = False  # the command line matched a flags.json made before identity.json existed

    @property
    def results_path(self) -> pathlib.Path:
        return self.path / RESULTS

    def prepare(self) -> Workdir:
        """Creates the folder, proves it writable and holds it (process 0), or raises WorkdirError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{jax.process_index()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"{self.where}: cannot write there ({e.strerror or e})") from None
        if is_writer() and self._lock is None:
            self._hold()
        return self

    def _hold(self) -> None:
        """Takes the folder's lock for this run's life, or refuses naming the run that holds it."""
        lock = open(self.path / LOCK, "a+")  # noqa: SIM115 - held open until release()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise WorkdirError(f"{self.where} is in use by another run ({holder}): wait for it to end, or use "
                               "another workdir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{self.experiment}, process {os.getpid()} on {socket.gethostname()}, since "
                   f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n")
        lock.flush()
        self._lock = lock
        self._written(LOCK)

    def release(self) -> None:
        """Closes the checkpoints and lets another run use the folder (idempotent)."""
        self.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _manifest(self) -> list[str] | None:
        try:
            return list(json.loads((self.path / MANIFEST).read_text())["paths"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _written(self, *names: str) -> None:
        """Lists paths (relative to the folder) as lrlab's in the manifest (process 0)."""
        if not is_writer():
            return
        listed = self._manifest() or []
        new = [n for n in names if n not in listed]
        if new:
            files.write_json(self.path / MANIFEST, {"paths": listed + new})

    def _remove_outputs(self) -> None:
        """What `overwrite` does: removes every path the manifest lists (a folder written before the
        manifest existed: lrlab's fixed outputs and its checkpoint folders), then the folders left
        empty; anything else stays, and is named."""
        listed = self._manifest()
        if listed is None:
            listed = [n for n in UNLISTED_OUTPUTS if (self.path / n).exists()]
            checkpoints = self.path / CHECKPOINTS
            if checkpoints.is_dir():
                listed += [str(p.relative_to(self.path)) for p in checkpoints.rglob("*")
                           if p.is_dir() and _holds_checkpoints(p)]
        parents = set()
        for name in sorted(set(listed) - {LOCK}, key=lambda n: -n.count("/")):
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            parents.update(p for p in target.parents if self.path in p.parents)
        for folder in sorted(parents, key=lambda p: -len(p.parts)):  # checkpoints/ once its runs are gone
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        (self.path / MANIFEST).unlink(missing_ok=True)
        self._written(LOCK)
        left = sorted(str(p.relative_to(self.path)) for p in self.path.iterdir() if p.name not in (LOCK, MANIFEST))
        if left:
            logging.warning("%s: left what lrlab did not write there: %s", self.path, ", ".join(left))

    def saved_identity(self) -> dict[str, Any] | None:
        """The identity a run saved here (identity.json), or None: none saved, or unreadable (`claim`
        says so)."""
        try:
            return json.loads((self.path / IDENTITY_FILE).read_text())
        except (OSError, ValueError):
            return None

    def saved_flags(self) -> dict[str, Any] | None:
        """The command-line flags a run made before identity.json existed saved here (flags.json), or None."""
        try:
            return json.loads((self.path / FLAGS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def claim(self, identity: Mapping[str, Any]) -> bool:
        """Checks the folder against this run's `identity` (JSON: what decides the results); True
        when its results exist.

        With `overwrite`, lrlab's outputs are removed first. An identity saved by another run is
        refused with the differences named (`label(path)` names a setting, "--max_steps" for
        "settings.budget.max_steps" from the command line). The identity is saved (identity.json)
        with the run's first checkpoint or its results, not before: a run that never started leaves
        nothing that would refuse the corrected command. A folder of a command-line run made before
        identity.json existed (its flags.json) resumes once the command line has matched its flags
        (`flags_matched`).
        """
        if self.path.is_dir():
            self._refuse_foreign_outputs()
        self.prepare()
        if self.overwrite and is_writer():
            self._remove_outputs()
        current = _normalised({"experiment": self.experiment, **identity})
        self.claimed = True
        saved_path = self.path / IDENTITY_FILE
        if saved_path.exists():
            try:
                saved = json.loads(saved_path.read_text())
            except (OSError, ValueError) as e:
                raise WorkdirError(f"{self.where}: unreadable {IDENTITY_FILE} ({errors.one_line(e)}); "
                                   f"{self.hint}") from None
            self._refuse_other(saved, current)
        elif (self.path / FLAGS_FILE).exists():  # made before identity.json: by the command line, or from Python
            legacy = self.saved_flags()
            if legacy is None:
                raise WorkdirError(f"{self.where}: unreadable {FLAGS_FILE}; {self.hint}")
            if "task" in legacy or "widths" in legacy:  # the library's own identity, as it saved it then
                self._refuse_other(legacy, current)
            elif not self.flags_matched:
                raise WorkdirError(f"{self.where} holds a run started from the command line by an earlier lrlab: "
                                   f"resume it with the same command, or {self.hint}")
            self._pending = current  # its identity from now on
        else:
            self._pending = current
            return False
        self.finished = self.results_path.exists()
        if self.finished:
            try:
                saved_results = self.read_results()
                if not (isinstance(saved_results, dict) and saved_results.get("experiment") == self.experiment
                        and saved_results.get("schema_version") in records.READABLE_SCHEMAS):
                    raise ValueError(f"not {self.experiment}'s results of schema version {records.SCHEMA_VERSION}")
            except (OSError, ValueError) as e:  # JSON and Unicode decoding errors are ValueErrors
                logging.warning("%s is unreadable (%s); recomputing it from the checkpoints", self.results_path,
                                errors.one_line(e))
                self.finished = False
        if self.finished:
            logging.info("%s already holds this run's results (use %s to recompute)", self.path, self.overwrite_name)
        return self.finished

    def _refuse_foreign_outputs(self) -> None:
        """Refuses a folder where one of lrlab's output names is taken by something lrlab did not
        write (a user's file where tb/ or members.csv goes): lrlab never replaces it."""
        listed = self._manifest()
        if listed is None and ((self.path / IDENTITY_FILE).exists() or (self.path / FLAGS_FILE).exists()):
            return  # written by an lrlab older than the manifest: its outputs are lrlab's
        foreign = [n for n in OUTPUT_NAMES if (self.path / n).exists() or (self.path / n).is_symlink()]
        foreign = [n for n in foreign if n not in (listed or [])]
        if foreign:
            raise WorkdirError(f"{self.where}: {', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} there and "
                               f"lrlab did not write {'it' if len(foreign) == 1 else 'them'}: move "
                               f"{'it' if len(foreign) == 1 else 'them'} away, or use another workdir")

    @property
    def hint(self) -> str:
        return f"use another workdir, or {self.overwrite_name} to discard it"

    def _refuse_other(self, saved: Mapping[str, Any], current: Mapping[str, Any]) -> None:
        """WorkdirError naming each setting where the saved identity and this run's differ."""
        before, now = _flat(saved), _flat(current)
        diffs, named = [], set()
        for key in CONTENT_KEYS:  # an identity saved before lrlab compared contents: its settings decide
            if key not in saved:
                now = {p: v for p, v in now.items() if p != key and not p.startswith(key + ".")}
        for path in sorted(set(before) | set(now)):
            if _canonical(before.get(path)) != _canonical(now.get(path)):
                side = before if path not in before else now if path not in now else None
                if side is not None:  # absent on one side: name the outermost setting absent there
                    parts = path.split(".")
                    path = next(p for p in (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                                if not any(k == p or k.startswith(p + ".") for k in side))
                name = self.label(path)
                if name not in named:
                    named.add(name)
                    there, here = (_short(before[path]) if path in before else "(not set)" if side is before else "(set)",
                                   _short(now[path]) if path in now else "(not set)" if side is now else "(set)")
                    diffs.append(f"{name}={there} there, {here} here")
        if diffs:
            raise WorkdirError(f"{self.where} holds a run with other {self.noun} ({'; '.join(diffs)}): use another "
                               f"workdir, the same {self.noun} to resume it, or {self.overwrite_name} to discard it")

    def commit_settings(self) -> None:
        """Saves the claimed identity (identity.json) once the run has written something of its own."""
        if self._pending is not None and is_writer():
            self._written(IDENTITY_FILE)  # listed first, as every output: a kill between leaves no foreign file
            files.write_json(self.path / IDENTITY_FILE, self._pending)
        self._pending = None

    def read_results(self) -> dict[str, Any]:
        return files.read_json(self.results_path)

    def open_checkpoints(self, directory: pathlib.Path, identity: Mapping[str, Any]) -> RunCheckpoints:
        self._written(str(directory.relative_to(self.path)))
        manager = RunCheckpoints(directory, _normalised(dict(identity)), self.checkpoint_every,
                                 on_save=self.commit_settings)
        self._managers.append(manager)
        return manager

    def scope(self, *parts: str) -> Scope:
        return Scope(self, tuple(parts))

    def close(self) -> None:
        """Closes every checkpoint manager opened so far (idempotent)."""
        while self._managers:
            self._managers.pop().close()

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # Results, written by process 0 (Orbax: by every process, it synchronises them).
    def save_results(self, summary: dict[str, Any]) -> pathlib.Path:
        self.commit_settings()  # results without the identity they belong to would be reloaded by any run
        if is_writer():
            self._written(RESULTS)
            files.write_json(self.results_path, summary)
        return self.results_path

    def save_orbax(self, tree: Any) -> pathlib.Path:
        self._written(ORBAX)
        files.save_orbax(self.path / ORBAX, tree)
        return self.path / ORBAX

    def save_figure(self, name: str, draw: Callable[[pathlib.Path], None]) -> pathlib.Path:
        """Draws a figure to `name` in the folder (a plain file name: it is listed as lrlab's)."""
        if pathlib.Path(name).name != name:
            raise ValueError(f"a figure is a file of the workdir itself, not {name!r}")
        path = self.path / name
        if is_writer():
            self._written(name)
            draw(path)
        return path

    def save(self, summary: dict[str, Any], figures: Mapping[str, Callable[[pathlib.Path], None]],
             orbax_tree: Any = None, started: float | None = None, *, members: list[dict[str, Any]] | None = None,
             views: views_lib.Views | None = None, study: Any = None,
             ranges: Mapping[str, tuple[float, float, bool]] | None = None) -> dict[str, pathlib.Path]:
        """A finished run's outputs: the Orbax results (if any), the figures, the views of its
        `members` (`save_views`), then results.json with the seconds spent saving
        (`stage_seconds.save`) and since `started` (`wall_seconds`). Returns what was saved where."""
        start = time.perf_counter()
        paths = {"results": self.results_path}
        if orbax_tree is not None:
            paths["orbax"] = self.save_orbax(orbax_tree)
        for i, (name, draw) in enumerate(figures.items()):  # "saved figure: ...", then any other by name
            paths["figure" if i == 0 else name.removesuffix(".png")] = self.save_figure(name, draw)
        if members:  # views of no members (a range test without confirmation) would be empty files
            paths.update(self.save_views(summary, members, views or views_lib.Views(), study=study, ranges=ranges))
        summary.setdefault("stage_seconds", {})["save"] = time.perf_counter() - start
        if started is not None:
            summary["wall_seconds"] = time.perf_counter() - started
        self.save_results(summary)
        self.commit_settings()
        return paths

    def study_name(self) -> str:
        """The run's Optuna study: its experiment and folder (one name per run, in any storage)."""
        return f"{self.experiment}:{self.path.resolve()}"

    def save_views(self, summary: dict[str, Any], members: list[dict[str, Any]], views: views_lib.Views, *,
                   study: Any = None, ranges: Mapping[str, tuple[float, float, bool]] | None = None
                   ) -> dict[str, pathlib.Path]:
        """members.csv, the Optuna study (`views.optuna_storage`; `study`: the run's own, bayes_search's,
        else one trial per member, a search's `ranges` {name: (low, high, log)} as distributions) and, with
        `views.tensorboard`, tb/: each replaced whole, so a rerun never duplicates a trial. Their
        seconds join `stage_seconds` and where they are `summary["views"]`."""
        if not is_writer():
            return {}
        seconds = summary.setdefault("stage_seconds", {})
        start = time.perf_counter()
        self._written(MEMBERS_CSV)
        paths = {"table": views_lib.write_table(self.path / MEMBERS_CSV, members)}
        seconds["members_csv"] = time.perf_counter() - start
        where: dict[str, Any] = {"members_csv": MEMBERS_CSV}
        storage = views.optuna_storage
        if storage != views_lib.NO_STORAGE and not views_lib.optuna_available():
            logging.warning("optuna is not installed: no Optuna study written (pip install optuna)")
        elif storage != views_lib.NO_STORAGE:
            start = time.perf_counter()
            trials = (study.get_trials(deepcopy=False) if study is not None
                      else views_lib.make_trials(summary, members, ranges))
            if storage == views_lib.STORAGE_IN_WORKDIR:
                self._written(OPTUNA_DB)
                url = views_lib.write_study_file(self.path / OPTUNA_DB, self.study_name(), summary, trials)
                paths["optuna"] = self.path / OPTUNA_DB
            else:
                url = views_lib.write_study(storage, self.study_name(), summary, trials)
            seconds["optuna"] = time.perf_counter() - start
            where["optuna"] = {"storage": views_lib.displayed_url(url), "study_name": self.study_name()}
        if views.tensorboard:
            start = time.perf_counter()
            self._written(TENSORBOARD)
            paths["tensorboard"] = views_lib.write_tensorboard(self.path / TENSORBOARD, summary, members)
            seconds["tensorboard"] = time.perf_counter() - start
            where["tensorboard"] = TENSORBOARD
        summary["views"] = where
        return paths


def resolve(workdir: str | os.PathLike | Workdir | None, experiment: str, identity: Mapping[str, Any],
            overwrite: bool = False) -> Workdir | None:
    """What the library functions accept as `workdir`: None (no files), a path, or a Workdir (the
    command line's, which names settings by their flags), claimed here with the study's identity."""
    if workdir is None:
        return None
    run = workdir if isinstance(workdir, Workdir) else Workdir(workdir, experiment, overwrite=overwrite)
    if not run.claimed:
        run.claim(identity)
    return run


def _holds_checkpoints(folder: pathlib.Path) -> bool:
    """True for a folder of lrlab's checkpoint steps (their records, or the older index beside them)."""
    return (folder / checkpoints_lib.LEGACY_DIGESTS).exists() or any(
        (step / checkpoints_lib.RECORD).exists() for step in folder.iterdir() if step.name.isdigit())
