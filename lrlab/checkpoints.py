"""Resumable runs: the population and the runner's host state in an Orbax CheckpointManager.

A checkpoint is taken at a segment boundary: every member's parameters, optimizer state and status
(`population`), and the runner's JSON state (step, curves, seconds, statuses: `runner`). Orbax
writes each step to a temporary folder and renames it when complete, so a kill mid-save leaves the
previous checkpoint intact. `StopSignal` turns SIGTERM (what a preempted VM receives) and Ctrl-C
into a request the runner honours at the next segment boundary: save, then raise `Interrupted`.
"""

from __future__ import annotations

import pathlib
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

from lrlab import errors, packing
from lrlab import population as pop_lib


class CheckpointMismatch(ValueError):
    """A checkpoint that belongs to another run (model, optimizer or members differ), or is damaged."""


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerunning resumes it."""

    def __init__(self, signal_name: str, step: int, directory: pathlib.Path):
        super().__init__(f"{signal_name} at step {step}: checkpoint saved in {directory}")
        self.signal_name, self.step, self.directory = signal_name, step, directory


class RunCheckpoints:
    """The checkpoints of one population's training under `directory`.

    `identity` (JSON: optimizer, model, learning rates, ...) is saved with every checkpoint and
    must match on restore, so a checkpoint of another run is refused with a clear message.
    """

    def __init__(self, directory: pathlib.Path, identity: dict[str, Any], every: int = 10):
        self.directory = pathlib.Path(directory).absolute()
        self.identity = identity
        self.every = every
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=False),
        )

    def due(self, segments: int) -> bool:
        """True when `segments` completed segments call for a periodic checkpoint."""
        return self.every > 0 and segments % self.every == 0

    def save(self, segments: int, population: pop_lib.Population, state: dict[str, Any]) -> None:
        """Saves the whole population and the runner's state as checkpoint number `segments`."""
        runner_state = {"identity": self.identity, **state}
        self.manager.save(segments, args=ocp.args.Composite(
            population=ocp.args.StandardSave(population), runner=ocp.args.JsonSave(runner_state)), force=True)
        self.manager.wait_until_finished()

    def restore(self, template: pop_lib.Population, mesh) -> tuple[pop_lib.Population, dict[str, Any]] | None:
        """The latest checkpoint (population replicated over `mesh`, runner state), or None."""
        step = self.manager.latest_step()
        if step is None:
            return None
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(runner=ocp.args.JsonRestore()))["runner"]
            saved = state.get("identity")
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint gets the same clear message
            raise CheckpointMismatch(f"the checkpoint {self.directory / str(step)} is unreadable "
                                     f"({errors.one_line(e)})") from None
        if saved != self.identity:
            diffs = [f"{key}: {saved.get(key)!r} there, {value!r} here" for key, value in self.identity.items()
                     if (saved or {}).get(key) != value]
            raise CheckpointMismatch(f"the checkpoint in {self.directory} belongs to another run "
                                     f"({'; '.join(diffs) or 'no identity saved'})")
        sharding = packing.replicated(mesh)
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                population=ocp.args.StandardRestore(abstract)))["population"]
        except Exception as e:  # noqa: BLE001 - shapes or structure that do not fit, or damaged files
            raise CheckpointMismatch(f"the checkpoint in {self.directory} does not fit this model and "
                                     f"optimizer ({str(e).splitlines()[0][:200]})") from None
        return restored, state

    def close(self) -> None:
        self.manager.close()


class StopSignal:
    """Context manager: SIGTERM or SIGINT sets `requested` instead of killing the process.

    The first signal asks the runner to checkpoint and stop at the next segment boundary; the
    handlers are then reset, so a second Ctrl-C stops at once.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
