"""Resumable runs: the population and the loop's host state in an Orbax CheckpointManager.

A checkpoint is taken at a segment boundary: every member's parameters, optimizer state and status
(`population`), and the loop's JSON state (step, curves, seconds, statuses: `runner`). Orbax
writes each step to a temporary folder and renames it when complete, so a kill mid-save leaves the
previous checkpoint intact. After each save lrlab records the size and CRC-32 of every file of the
step (`digests.json` beside the steps); a restore checks them first, and a damaged or incomplete
latest checkpoint falls back to the previous intact one, saying so in one line.

`StopSignal` turns SIGTERM (what a preempted VM receives) and Ctrl-C into a request the loop
honours at its next stop check (a few seconds at most): save, then raise `Interrupted`. A second
signal ends the process at once.
"""

from __future__ import annotations

import json
import pathlib
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

DIGESTS = "digests.json"  # beside the step folders: step -> {file: [size, crc32]}
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
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        crc = 0
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                crc = zlib.crc32(block, crc)
        out[str(path.relative_to(folder))] = [path.stat().st_size, crc]
    return out


def damage(folder: pathlib.Path, recorded: dict[str, list[int]] | None) -> str | None:
    """Why the checkpoint in `folder` cannot be trusted (None: intact)."""
    if recorded is None:
        return "has no record of its files (incomplete)"
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
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def due(self, segments: int) -> bool:
        """True when `segments` completed segments call for a periodic checkpoint."""
        return self.every > 0 and segments % self.every == 0

    def _digests(self) -> dict[str, Any]:
        try:
            return json.loads((self.directory / DIGESTS).read_text())
        except (OSError, ValueError):
            return {}

    def save(self, step: int, population: population_lib.Population, state: dict[str, Any]) -> None:
        """Saves the whole population and the loop's state as checkpoint number `step` (the
        training step: numbers grow with every checkpoint of a run), then its
        digest. A failed write raises CheckpointWriteError (one line); the previous one stays."""
        runner_state = {"identity": self.identity, **state}
        try:
            self.manager.save(step, args=ocp.args.Composite(
                population=ocp.args.StandardSave(population), runner=ocp.args.JsonSave(runner_state)), force=True)
            self.manager.wait_until_finished()
            if jax.process_index() == 0:
                steps = {str(s) for s in self.manager.all_steps()}
                digests = {k: v for k, v in self._digests().items() if k in steps}
                digests[str(step)] = digest(self.directory / str(step))
                files.write_json(self.directory / DIGESTS, digests)
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for one cause: say it in one line
            raise CheckpointWriteError(f"cannot write checkpoint {step} in {self.directory}: "
                                       f"{_cause(e)}; the previous checkpoint is intact") from None
        if self.on_save is not None:
            self.on_save()

    def restore(self, template: population_lib.Population, mesh) -> tuple[population_lib.Population, dict[str, Any]] | None:
        """The latest intact checkpoint (population replicated over `mesh`, loop state), or None
        when there is none at all. A damaged later one is passed over, with one line saying so."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        digests = self._digests()
        # A kill between Orbax's commit and the record leaves the newest step complete but unrecorded:
        # an older verified one is preferred, and the unrecorded one is the last resort.
        unrecorded = [s for s in steps[:1] if str(s) not in digests]
        passed: list[str] = []
        for step in [s for s in steps if s not in unrecorded] + unrecorded:
            folder = self.directory / str(step)
            why = None if step in unrecorded else damage(folder, digests.get(str(step)))
            if why is None:
                try:
                    restored = self._restore(step, template, mesh)
                except CheckpointMismatch:
                    raise
                except Exception as e:  # noqa: BLE001 - files intact but unreadable: damaged as well
                    why = f"is unreadable ({errors.one_line(e)})"
                else:
                    if passed or any(s > step for s in steps):  # later ones go: training writes them again
                        for later in (s for s in steps if s > step):
                            self.manager.delete(later)
                        why_not = "; ".join(passed) or f"checkpoint {self.directory / str(steps[0])} was not recorded"
                        self.notify(f"{why_not}: resuming from checkpoint {step} instead (the later one is removed)")
                    self.notify(f"resuming from step {restored[1]['step']} (checkpoint {folder})")
                    return restored
            passed.append(f"checkpoint {folder} {why}")
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
