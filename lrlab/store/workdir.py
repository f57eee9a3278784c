"""The run handle: one object owns a run's folder. It prepares and claims it (the settings saved in
flags.json must match a resume's), opens its checkpoints (and closes them), and writes its results
(results.json, Orbax, figures) atomically. Nothing else names the files in a workdir.

A run's checkpoints live under checkpoints/, in folders named by the parts of the run they hold
(`Scope`: checkpoints/adam/, checkpoints/round-2/adam/, checkpoints/width-4/adam/).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import time
from typing import Any, Callable, Mapping

import jax

from lrlab import errors
from lrlab.store import files, records
from lrlab.store import views as views_lib
from lrlab.store.checkpoints import RunCheckpoints

RESULTS = records.RESULTS_FILE
ORBAX = "results_orbax"
CHECKPOINTS = "checkpoints"
FLAGS_FILE = "flags.json"
LOWERING = "lowering.json"  # beside a population's checkpoints: the lowering chosen for it (engine/lowering.py)
# Each experiment's figures (what --overwrite removes, with the files above; nothing else is touched).
FIGURES = ("valley.png", "envelope.png", "curves.png", "scaling.png", "schedules.png", "techniques.png",
           "search.png", "pbt.png", "lr_finder.png", "search_compare.png")
# The views of a run's members for other tools (views.py writes them, Workdir.save_views names them).
OPTUNA_DB = "optuna.db"
TENSORBOARD = "tb"
MEMBERS_CSV = "members.csv"
VIEWS = (OPTUNA_DB, TENSORBOARD, MEMBERS_CSV)
OUTPUTS = (RESULTS, ORBAX, CHECKPOINTS, FLAGS_FILE) + FIGURES + VIEWS


class WorkdirError(Exception):
    """A workdir that cannot be used: unwritable, or holding another run (the message says which)."""


def is_writer() -> bool:
    """Only process 0 writes results and figures (every process computes them)."""
    return jax.process_index() == 0


def default_path(experiment: str) -> pathlib.Path:
    return pathlib.Path(f"runs/{experiment}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def _normalised(obj: Any) -> Any:
    """The JSON form of `obj` (tuples become lists, numpy numbers plain ones), as saved."""
    return json.loads(json.dumps(files.finite_or_none(obj), default=files.json_default))


_NUMBER_TOKEN = re.compile(r"[^,:=\s]+")


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

    run: "Workdir | None"
    parts: tuple[str, ...] = ()

    def child(self, *parts: str) -> "Scope":
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
            files.write_json(self.file(LOWERING), choice)

    def file(self, name: str) -> pathlib.Path | None:
        """A file of this part beside its checkpoints (a finished search_compare row)."""
        return None if self.run is None else self.directory / name


NO_SCOPE = Scope(None)


class Workdir:
    """A run's folder. `claim(settings)` before any training: True when it already holds this
    run's results (then read them with `read_results`); otherwise its settings are saved so a
    rerun with the same ones resumes from the checkpoints."""

    def __init__(self, path: str | os.PathLike | None, experiment: str, *, checkpoint_every: int = 10,
                 overwrite: bool = False):
        self.path = pathlib.Path(path) if path is not None else default_path(experiment)
        self.experiment = experiment
        self.checkpoint_every = checkpoint_every
        self.overwrite = overwrite
        self.claimed = False
        self.finished = False  # after claim: the folder already holds this run's results
        self._pending: dict[str, Any] | None = None  # settings to save with the run's first output
        self._managers: list[RunCheckpoints] = []

    @property
    def results_path(self) -> pathlib.Path:
        return self.path / RESULTS

    def figure_path(self, name: str) -> pathlib.Path:
        if name not in FIGURES:
            raise ValueError(f"unknown figure {name!r}: add it to workdir.FIGURES")
        return self.path / name

    def prepare(self) -> "Workdir":
        """Creates the folder and proves it writable, or raises WorkdirError."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-test-{jax.process_index()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"{self.path}: cannot write there ({e.strerror or e})") from None
        return self

    def saved_settings(self) -> dict[str, Any] | None:
        """The settings a run saved here (flags.json), or None: none saved, or unreadable (`claim` says so)."""
        try:
            return json.loads((self.path / FLAGS_FILE).read_text())
        except (OSError, ValueError):
            return None

    def claim(self, settings: Mapping[str, Any], label: Callable[[str], str] = str, noun: str = "settings",
              defaults: Mapping[str, Any] | None = None) -> bool:
        """Checks the folder against this run's `settings` (JSON); True when its results exist.

        With `overwrite`, lrlab's outputs are removed first. Settings saved by another run are
        refused with the differences named (`label(key)` names a setting: "--max_steps"). This run's
        settings are saved (flags.json) with its first checkpoint or its results, not before: a run
        that never started leaves nothing that would refuse the corrected command. A setting the
        saved file lacks (one added to lrlab since that run) counts as its value in `defaults`.
        """
        self.prepare()
        if self.overwrite and is_writer():
            for name in OUTPUTS:
                target = self.path / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        current = _normalised({"experiment": self.experiment, **settings})
        saved_path = self.path / FLAGS_FILE
        self.claimed = True
        if saved_path.exists():
            try:
                saved = {**_normalised(dict(defaults or {})), **json.loads(saved_path.read_text())}
            except (OSError, ValueError) as e:
                raise WorkdirError(f"{self.path}: unreadable {FLAGS_FILE} ({e}); use --overwrite to start "
                                   "again") from None
            diffs = [f"{label(k)}={saved.get(k)!r} there, {current.get(k)!r} here"
                     for k in sorted(set(saved) | set(current))
                     if _canonical(saved.get(k)) != _canonical(current.get(k))]
            if diffs:
                raise WorkdirError(f"{self.path} holds a run with other {noun} ({'; '.join(diffs)}): use another "
                                   f"workdir, the same {noun} to resume it, or overwrite to discard it")
            self.finished = self.results_path.exists()
            if self.finished:
                try:
                    self.read_results()
                except (OSError, ValueError) as e:  # JSON and Unicode decoding errors are ValueErrors
                    print(f"lrlab: {self.results_path} is unreadable ({errors.one_line(e)}); recomputing it "
                          "from the checkpoints", flush=True)
                    self.finished = False
            return self.finished
        self._pending = current
        return False

    def commit_settings(self) -> None:
        """Saves the claimed settings (flags.json) once the run has written something of its own."""
        if self._pending is not None and is_writer():
            files.write_json(self.path / FLAGS_FILE, self._pending)
        self._pending = None

    def read_results(self) -> dict[str, Any]:
        return files.read_json(self.results_path)

    def open_checkpoints(self, directory: pathlib.Path, identity: Mapping[str, Any]) -> RunCheckpoints:
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

    def __enter__(self) -> "Workdir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Results, written by process 0 (Orbax: by every process, it synchronises them).
    def save_results(self, summary: dict[str, Any]) -> pathlib.Path:
        if is_writer():
            files.write_json(self.results_path, summary)
        return self.results_path

    def save_orbax(self, tree: Any) -> pathlib.Path:
        files.save_orbax(self.path / ORBAX, tree)
        return self.path / ORBAX

    def save_figure(self, name: str, draw: Callable[[pathlib.Path], None]) -> pathlib.Path:
        path = self.figure_path(name)
        if is_writer():
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
        if members is not None:
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
        paths = {"table": views_lib.write_table(self.path / MEMBERS_CSV, members)}
        seconds["members_csv"] = time.perf_counter() - start
        where: dict[str, Any] = {"members_csv": MEMBERS_CSV}
        storage = views.optuna_storage
        if storage != views_lib.NO_STORAGE and not views_lib.optuna_available():
            print("lrlab: optuna is not installed: no Optuna study written (pip install optuna)", flush=True)
        elif storage != views_lib.NO_STORAGE:
            start = time.perf_counter()
            trials = (study.get_trials(deepcopy=False) if study is not None
                      else views_lib.make_trials(summary, members, ranges))
            if storage == views_lib.STORAGE_IN_WORKDIR:
                url = views_lib.write_study_file(self.path / OPTUNA_DB, self.study_name(), summary, trials)
                paths["optuna"] = self.path / OPTUNA_DB
            else:
                url = views_lib.write_study(storage, self.study_name(), summary, trials)
            seconds["optuna"] = time.perf_counter() - start
            where["optuna"] = {"storage": views_lib.displayed_url(url), "study_name": self.study_name()}
        if views.tensorboard:
            start = time.perf_counter()
            paths["tensorboard"] = views_lib.write_tensorboard(self.path / TENSORBOARD, summary, members)
            seconds["tensorboard"] = time.perf_counter() - start
            where["tensorboard"] = TENSORBOARD
        summary["views"] = where
        return paths


def resolve(workdir: "str | os.PathLike | Workdir | None", experiment: str, settings: Mapping[str, Any],
            overwrite: bool = False) -> Workdir | None:
    """What the library functions accept as `workdir`: None (no files), a path (claimed here with
    the API's settings), or a Workdir (claimed already by the command line, or claimed here)."""
    if workdir is None:
        return None
    run = workdir if isinstance(workdir, Workdir) else Workdir(workdir, experiment, overwrite=overwrite)
    if not run.claimed:
        run.claim(settings)
    return run
