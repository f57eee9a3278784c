"""Stopping on a signal: SIGTERM (a preempted VM) or Ctrl-C becomes a request the loop honours at its
next stop check (checkpoint, then `Interrupted`); a second signal ends the process at once.
"""

from __future__ import annotations

import os
import pathlib
import signal
import threading
from typing import Any

from absl import logging


class Interrupted(Exception):
    """Training stopped on a signal after saving a checkpoint; rerunning resumes it."""

    def __init__(self, signal_name: str, step: int, directory: pathlib.Path):
        super().__init__(f"{signal_name} at step {step}: checkpoint saved in {directory}")
        self.signal_name, self.step, self.directory = signal_name, step, directory


class StopSignal:
    """Context manager: SIGTERM or SIGINT sets `requested` instead of killing the process.

    The first signal asks the loop to checkpoint and stop at its next stop check; a second one ends
    the process at once (exit 128 + signal), even while the main thread waits in a compilation or
    on the device: a watcher thread reads the signals from `signal.set_wakeup_fd`, which the
    interpreter's C handler writes at delivery, where a Python handler would wait for the main
    thread to return to Python.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        """Keeps the default action away; the watcher thread acts on the signal."""

    def _watch(self) -> None:
        while data := os.read(self._read_fd, 64):
            for signum in (n for n in data if n in self.SIGNALS):
                if self.requested is None:
                    self.requested = signal.Signals(signum).name
                    logging.warning("%s: saving a checkpoint at the next stop check (a second signal ends the "
                                    "run at once)", self.requested)
                else:
                    logging.warning("%s after %s: exiting now, without a checkpoint", signal.Signals(signum).name,
                                    self.requested)
                    os._exit(128 + signum)

    def __enter__(self) -> StopSignal:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._watcher = threading.Thread(target=self._watch, name="lrlab-stop-signal", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # ends the watcher's read
        self._watcher.join(timeout=5)
        os.close(self._read_fd)
