"""Resumable runs: the population and the loop's host state in an Orbax CheckpointManager.

A checkpoint is taken at a segment boundary: every member's parameters, optimizer state and status
(`population`), and the loop's JSON state (step, curves, seconds, statuses: `runner`). Orbax
writes each step to a temporary folder and renames it when complete, so a kill mid-save leaves the
previous checkpoint intact. After each save lrlab records the size and CRC-32 of every file of the
step in the step's own folder (`files.json`, written atomically). A restore checks that record
first: a damaged checkpoint is passed over, and one without a readable record is "unverified" and
used only when no verified checkpoint is left. Either fallback is said in one line.

`StopSignal` turns SIGTERM (what a preempted VM receives) and Ctrl-C into a request the loop
honours at its next stop check (a few seconds at most): save, then raise `Interrupted`. A second
signal ends the process at once.
"""

from __future__ import annotations

import json
import logging as pylogging
import pathlib
import shutil
import sys
import zlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from lrlab import errors
from lrlab.engine import placement
from lrlab.engine import population as population_lib
from lrlab.store import files

RECORD = "files.json"  # in each step's folder: {file: [size, crc32]} of the step's other files
LEGACY_DIGESTS = "digests.json"  # beside the step folders (older workdirs): step -> {file: [size, crc32]}
BLOCK = 1 << 22  # bytes read at a time while computing a digest


class CheckpointMismatch(ValueError):
    """A checkpoint of another run (model, optimizer or members differ): the message says what differs."""


class CheckpointDamaged(ValueError):
    """No intact checkpoint to resume from: the message names each one's damage."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, permissions); the previous one is intact."""


def digest(folder: pathlib.Path) -> dict[str, list[int]]:
    """{relative path: [size, crc32]} of every file under `folder`."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / RECORD):
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                crc = zlib.crc32(block, crc)
        out[str(path.relative_to(folder))] = [path.stat().st_size, crc]
    return out


def record(folder: pathlib.Path, legacy: dict[str, Any] | None = None) -> dict[str, list[int]] | None:
    """The record of the step in `folder` ({file: [size, crc32]}), or None when it has no readable one."""
    try:
        recorded = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        recorded = (legacy or {}).get(folder.name)
    ok = isinstance(recorded, dict) and all(isinstance(v, list) and len(v) == 2 for v in recorded.values())
    return recorded if ok else None


def damage(folder: pathlib.Path, recorded: dict[str, list[int]]) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted against its record (None: intact)."""
    found = digest(folder)
    missing = sorted(set(recorded) - set(found))
    if missing:
        return f"lacks {missing[0]}" + (f" and {len(missing) - 1} other files" if len(missing) > 1 else "")
    for name, (size, crc) in recorded.items():
        if found[name][0] != size:
            return f"has {name} truncated or grown ({found[name][0]:,} bytes, {size:,} saved)"
        if found[name][1] != crc:
            return f"has {name} changed since it was saved (checksum mismatch)"
    return None


class RunCheckpoints:
    """The checkpoints of one population's training under `directory`.

    `identity` (JSON: task, optimizer, members, settings) is saved with every checkpoint and must
    match on restore, so a checkpoint of another run is refused with a clear message. `on_save`
    is called after each checkpoint is written (the run handle saves its settings then).
    """

    def __init__(self, directory: pathlib.Path, identity: dict[str, Any], every: int = 10,
                 on_save: Callable[[], None] | None = None, notify: Callable[[str], None] | None = None):
        self.directory = pathlib.Path(directory).absolute()
        self.identity = identity
        self.every = every
        self.on_save = on_save
        self.notify = notify or logging.info
        self._quiet: _QuietWriters | None = None
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def due(self, segments: int) -> bool:
        """True when `segments` completed segments call for a periodic checkpoint."""
        return self.every > 0 and segments % self.every == 0

    def _legacy(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / LEGACY_DIGESTS).read_text())
        except (OSError, ValueError):
            return {}

    def save(self, step: int, population: population_lib.Population, state: dict[str, Any]) -> None:
        """Saves the whole population and the loop's state as checkpoint number `step` (the
        training step: numbers grow with every checkpoint of a run), then its record. A failed
        write raises CheckpointWriteError (one line), removes the partial step, and the previous
        checkpoint stays."""
        runner_state = {"identity": self.identity, **state}
        quiet = _QuietWriters()
        try:
            self.manager.save(step, args=ocp.args.Composite(
                population=ocp.args.StandardSave(population), runner=ocp.args.JsonSave(runner_state)), force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                folder = self.directory / str(step)
                files.write_json(folder / RECORD, digest(folder))
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for one cause: say it in one line
            if jax.process_index() == 0:
                self._remove_partial(step)
            self._quiet = quiet  # Orbax's writers still finish after the failure: kept quiet until close()
            raise CheckpointWriteError(f"cannot write checkpoint {step} in {self.directory}: "
                                       f"{_cause(e)}; the previous checkpoint is intact") from None
        quiet.close()
        if self.on_save is not None:
            self.on_save()

    def _remove_partial(self, step: int) -> None:
        """Removes what a failed save of `step` left: Orbax's temporary folders and an unrecorded step."""
        for leftover in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
        folder = self.directory / str(step)
        if folder.is_dir() and record(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)

    def restore(self, template: population_lib.Population, mesh) -> tuple[population_lib.Population, dict[str, Any]] | None:
        """The latest verified intact checkpoint (population replicated over `mesh`, loop state), or
        None when there is none at all. Damaged ones are passed over; unverified ones (no readable
        record: a kill between the save and its record, or a record lost) come last. Each fallback
        is said in one line."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        legacy = self._legacy()
        records = {s: record(self.directory / str(s), legacy) for s in steps}
        verified = [s for s in steps if records[s] is not None]
        passed: list[str] = []
        for step in verified + [s for s in steps if records[s] is None]:
            folder = self.directory / str(step)
            recorded = records[step]
            why = None if recorded is None else damage(folder, recorded)
            if why is None:
                try:
                    restored = self._restore(step, template, mesh)
                except CheckpointMismatch:
                    raise
                except Exception as e:  # noqa: BLE001 - files intact but unreadable: damaged as well
                    why = f"is unreadable ({errors.one_line(e)})"
                else:
                    if recorded is None:
                        passed.append(f"checkpoint {folder} is unverified (no record of its files): "
                                      f"resuming from it, as no verified checkpoint is intact")
                        self.notify("; ".join(passed))
                    elif passed or any(s > step for s in steps):
                        unverified = [f"checkpoint {self.directory / str(s)} is unverified (no record of its files)"
                                      for s in steps if s > step and records[s] is None]
                        self.notify(f"{'; '.join(passed + unverified)}: resuming from checkpoint {step} "
                                    f"instead (the later one is removed)")
                    for later in (s for s in steps if s > step):  # training writes them again
                        self.manager.delete(later)
                    self.notify(f"resuming from step {restored[1]['step']} (checkpoint {folder})")
                    return restored
            if recorded is not None:
                passed.append(f"checkpoint {folder} {why}")
            else:
                passed.append(f"checkpoint {folder} is unverified and {why}")
        raise CheckpointDamaged(f"no intact checkpoint to resume from: {'; '.join(passed)}")

    def _restore(self, step: int, template: population_lib.Population, mesh) -> tuple[population_lib.Population, dict[str, Any]]:
        state = self.manager.restore(step, args=ocp.args.Composite(runner=ocp.args.JsonRestore()))["runner"]
        saved = state.get("identity")
        if saved != self.identity:
            diffs = [f"{key}: {_short(saved.get(key))} there, {_short(value)} here"
                     for key, value in self.identity.items() if (saved or {}).get(key) != value]
            raise CheckpointMismatch(f"the checkpoint in {self.directory} belongs to another run "
                                     f"({'; '.join(diffs) or 'no identity saved'})")
        sharding = placement.replicated(mesh)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template)
        population = self.manager.restore(step, args=ocp.args.Composite(
            population=ocp.args.StandardRestore(abstract)))["population"]
        return population, state

    def close(self) -> None:
        self.manager.close()
        if self._quiet is not None:
            self._quiet.close()
            self._quiet = None


class _QuietWriters(pylogging.Filter):
    """While a save runs, drops the echoes of one failed write that Orbax's writer threads print
    (each thread's logged traceback, and the "Event loop is closed" of writes finishing after the
    save gave up): the failure is reported once, as CheckpointWriteError."""

    ECHO = "_SignalingThread.run() raised an exception"

    def __init__(self):
        super().__init__()
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        pylogging.getLogger("absl").addFilter(self)

    def filter(self, record: pylogging.LogRecord) -> bool:
        return self.ECHO not in record.getMessage()

    def _unraisable(self, unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            self._hook(unraisable)

    def close(self) -> None:
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = self._hook
        pylogging.getLogger("absl").removeFilter(self)


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _cause(e: BaseException) -> str:
    """The root cause of an Orbax failure in one line (its OSError, e.g. "No space left on device")."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = errors.one_line(e)
    return "no space left on the device" if "RESOURCE_EXHAUSTED" in text or "No space" in text else text
