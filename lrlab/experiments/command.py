"""A command's life around the library call: start (stray arguments, logging, devices), the workdir,
the stop signal and one-line failures, and the closing lines.

Each experiment module defines its flags at import (`common_flags.define_flags()`), then in main():
`command.start(argv)`, `command.workdir(experiment)`, the task, populations and settings
(`from_flags`), the library call inside `command.resumable(...)`, and prints its report.
"""

from __future__ import annotations

import contextlib
import json
import logging as python_logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from lrlab import digests
from lrlab.engine import devices as devices_lib
from lrlab.engine import protocols
from lrlab.engine import stop as stop_lib
from lrlab.experiments import common_flags
from lrlab.experiments.common_flags import FLAGS, OPERATIONAL_FLAGS, PACE_OFF, RETIRE_FLAGS
from lrlab.store import checkpoints
from lrlab.store import workdir as workdir_lib
from lrlab.task import dataset as dataset_lib
from lrlab.task import task as task_lib


def fail(message: str, code: int = 1) -> None:
    """Stops with one clear line on stderr (no traceback) and a non-zero exit code."""
    print(f"lrlab: error: {message}", file=sys.stderr)
    sys.exit(code)


def _from_lrlab(record: python_logging.LogRecord) -> bool:
    return "/lrlab/" in record.pathname.replace("\\", "/")


class _OthersQuiet(python_logging.Filter):
    """Other libraries' absl log lines from ERROR up only, Orbax's and asyncio's not at all: Orbax logs
    every checkpoint, and a failed write with tracebacks from its threads, which lrlab reports itself
    in one line."""

    def filter(self, record: python_logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        return (not _from_lrlab(record) and record.levelno >= python_logging.ERROR and "/orbax/" not in path
                and "/asyncio/" not in path)


def configure_logging() -> None:
    """A command's logging: lrlab's own log lines (INFO and up) on stdout as `lrlab: message`, beside
    the results it prints; stderr keeps the one-line errors (and other libraries' errors)."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_OthersQuiet())
    lines = python_logging.StreamHandler(sys.stdout)
    lines.setFormatter(python_logging.Formatter("lrlab: %(message)s"))
    lines.addFilter(_from_lrlab)
    python_logging.getLogger("absl").addHandler(lines)
    for name in ("orbax", "asyncio"):
        python_logging.getLogger(name).addFilter(_OthersQuiet())


def start(argv: list[str]) -> float:
    """What every experiment's main() does first: refuse stray arguments, show lrlab's log lines
    (`configure_logging`), and apply --cpu_devices / --distributed (before any JAX computation).
    Returns the start time."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])} (flags take the form --name=value)")
    configure_logging()
    explicit = {"coordinator_address": FLAGS.coordinator_address, "num_processes": FLAGS.num_processes,
                "process_id": FLAGS.process_id}
    given = [k for k, v in explicit.items() if v is not None]
    if given and len(given) < len(explicit):
        fail(f"--{', --'.join(sorted(set(explicit) - set(given)))}: needed with --{', --'.join(given)}")
    if given and not explicit["process_id"] < explicit["num_processes"]:
        fail(f"--process_id={FLAGS.process_id}: must be below --num_processes={FLAGS.num_processes}")
    distributed = FLAGS.distributed
    if distributed is None:  # a Cloud TPU VM pod names its workers in the environment
        distributed = bool(given) or len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
    try:
        devices_lib.use_cpu_devices(FLAGS.cpu_devices, distributed)
    except ValueError as e:
        fail(f"--cpu_devices={FLAGS.cpu_devices}: {e}")
    if distributed:
        try:
            jax.distributed.initialize(**{k: v for k, v in explicit.items() if v is not None})
        except Exception as e:  # noqa: BLE001 - any failure here is the cluster set-up's
            fail(f"--distributed: jax.distributed.initialize() failed: {str(e).splitlines()[0]}")
        if differ := flags_that_differ_between_processes():
            fail(f"--{', --'.join(differ)} differ between the {jax.process_count()} processes: give every process "
                 "the same flags (only --process_id differs)")
    return time.perf_counter()


PER_PROCESS_FLAGS = ("process_id",)  # the flags that differ between the processes of one run by design


def flags_that_differ_between_processes() -> list[str]:
    """lrlab's flags whose values are not the same in every process (each process compares digests
    of its values with all the others', at start, so processes that disagree refuse instead of hanging)."""
    values = {k: v for k, v in sorted(flag_values().items()) if k not in PER_PROCESS_FLAGS}
    digests_FB = np.stack([np.frombuffer(bytes.fromhex(digests.text_digest(repr(v))), np.uint8)
                           for v in values.values()])
    everyone = np.asarray(multihost_utils.process_allgather(digests_FB))  # [processes, flags, bytes]
    return [name for i, name in enumerate(values) if not (everyone[:, i] == everyone[0, i]).all()]


def _lrlab_flags() -> list[flags.Flag]:
    """lrlab's own flags (not absl's)."""
    return [f for name, fl in FLAGS.flags_by_module_dict().items() if "lrlab" in name for f in fl]


def flag_values() -> dict[str, object]:
    """The values of lrlab's own flags, saved with the run for reproducibility."""
    return {f.name: f.value for f in _lrlab_flags()}


def legacy_flags() -> dict[str, object]:
    """The flags that decided what a run computed, as a run made before identity.json existed saved
    them in flags.json (without retirement its flags are left out, as runs made before it did)."""
    left_out = OPERATIONAL_FLAGS | (set() if FLAGS.retire else set(RETIRE_FLAGS))
    return {k: v for k, v in flag_values().items() if k not in left_out}


def resume_as_made(run: workdir_lib.Workdir) -> None:
    """A workdir whose run trained without retirement (made before retirement existed, or with
    --noretire), or retired without the pace rule, resumes as it was made, unless the flag is given.
    Before any setting is built from the flags."""
    identity, legacy = run.saved_identity(), run.saved_flags()
    if identity is not None:
        saved = identity.get("settings", {})
        retire = saved.get("retire")
        made_without, pace_absent = retire is None, bool(retire) and "pace" not in retire
    elif legacy is not None and "task" not in legacy:
        made_without = "retire" not in legacy
        pace_absent = bool(legacy.get("retire")) and "retire_pace" not in legacy
    else:
        return
    if made_without and FLAGS.retire and not FLAGS["retire"].present:
        FLAGS.retire = False
        logging.info("--workdir=%s: its run trains without retirement; resuming it so (--noretire)", run.path)
    elif pace_absent and FLAGS.retire and not FLAGS["retire_pace"].present:
        FLAGS.retire_pace = 0.0
        logging.info("--workdir=%s: its run retires without the pace rule; resuming it so (--retire_pace=0)",
                     run.path)


def legacy_flag_defaults() -> dict[str, object]:
    """The defaults of the flags in `legacy_flags`: a flags.json written before a flag existed
    resumes when this run leaves that flag at its default (retirement's flags excepted: absent, they
    mean off; see `resume_as_made`)."""
    current = legacy_flags()  # not retirement's: a run saved without them trained without it
    return {**{f.name: f.default for f in _lrlab_flags() if f.name in current and f.name not in RETIRE_FLAGS},
            **(PACE_OFF if FLAGS.retire else {})}


def match_legacy_flags(run: workdir_lib.Workdir, experiment: str) -> None:
    """A workdir of a command-line run made before identity.json existed: its flags.json against
    this command's flags (one line naming each difference), as that lrlab checked it."""
    saved = run.saved_flags()
    if run.saved_identity() is not None or saved is None or "task" in saved or "widths" in saved:
        return
    current = json.loads(json.dumps({"experiment": experiment, **legacy_flags()}))
    saved = {**json.loads(json.dumps(legacy_flag_defaults())), **saved}
    diffs = [f"--{k}={saved.get(k)!r} there, {current.get(k)!r} here" for k in sorted(set(saved) | set(current))
             if not workdir_lib.same_value(saved.get(k), current.get(k))]
    if diffs:
        fail(f"--workdir={run.path} holds a run with other flags ({'; '.join(diffs)}): use another workdir, the same "
             "flags to resume it, or overwrite to discard it")
    run.flags_matched = True


def info(load_seconds: float | None = None) -> dict[str, Any]:
    """What the command adds to results.json: its flags (and the seconds spent loading the data)."""
    out: dict[str, Any] = {"flags": flag_values()}
    if load_seconds is not None:
        out["stage_seconds"] = {"load_data": load_seconds}
    return out


def workdir(experiment: str) -> workdir_lib.Workdir:
    """--workdir, for the library to claim with the run's identity (its refusals name the flags, and
    it says when the folder already holds this run's results). First, before any setting is built
    from the flags: a run made without retirement resumes so (`resume_as_made`), and one of an
    earlier lrlab's command line is checked against its flags (`match_legacy_flags`)."""
    try:
        run = workdir_lib.Workdir(FLAGS.workdir, experiment, checkpoint_every=FLAGS.checkpoint_every,
                                  overwrite=FLAGS.overwrite)
    except workdir_lib.WorkdirError as e:
        fail(f"--workdir: {e}")
    run.label, run.noun = common_flags.flag_label, "flags"
    run.where, run.overwrite_name = f"--workdir={run.path}", "--overwrite"
    if not FLAGS.overwrite:
        resume_as_made(run)
        match_legacy_flags(run, experiment)
    return run


@contextlib.contextmanager
def resumable(experiment: str, run: workdir_lib.Workdir) -> Iterator[stop_lib.StopSignal]:
    """Runs the training inside with a StopSignal (yielded). SIGTERM or Ctrl-C: the runner has saved
    a checkpoint; say how to resume and exit 128 + signal. A checkpoint of another run, a failed
    write or a run the library refuses: one clear line."""
    try:
        with stop_lib.StopSignal() as stop, writing(f"to {run.path}"):
            yield stop
    except stop_lib.Interrupted as e:
        print(f"{experiment}: stopped by {e.signal_name} at step {e.step}; checkpoint saved in {e.directory}. "
              f"Rerun the same command with --workdir={run.path} to resume.", file=sys.stderr)
        sys.exit(128 + signal.Signals[e.signal_name].value)
    except (checkpoints.CheckpointMismatch, checkpoints.CheckpointDamaged) as e:
        fail(f"--workdir={run.path}: {e}; use another --workdir or --overwrite")
    except (workdir_lib.WorkdirError, dataset_lib.DatasetError) as e:
        fail(str(e))


@contextlib.contextmanager
def writing(what: str):
    """Turns a failed write (disk full, permissions) into one clear line; files are atomic."""
    try:
        yield
    except checkpoints.CheckpointWriteError as e:  # says itself what was not written
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {what}: {e.strerror or e} (nothing half-written is left behind)")


def print_saved(paths: dict[str, pathlib.Path], start: float) -> None:
    """The closing lines of every experiment: total wall time since `start`, and what was saved where."""
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    if not workdir_lib.is_writer():
        print(f"process {jax.process_index()}: process 0 wrote the results")
        return
    for what, path in paths.items():
        print(f"saved {what}: {path}")


def describe_task(task: task_lib.Task) -> str:
    """The header's description of the task: model, weights, data."""
    width = f"width {task.info['width']:g}, " if "width" in task.info else ""
    return (f"{task.info.get('model_name', task.model.name)} ({width}{task.count_parameters():,} weights) on "
            f"{task.name} ({task.num_train:,} training examples)")


def describe_budget(task: task_lib.Task) -> str:
    where = (f"{min(FLAGS.eval_examples, task.num_train)} training examples" if task.eval is None
             else f"the {task.eval_name} set ({task_lib.num_examples(task.eval):,} examples)")
    if FLAGS.protocol != protocols.SUBSET:
        where = (f"the running mean of the training batches ({protocols.describe(FLAGS.protocol, FLAGS.eval_every)}), "
                 "strictly,")
    return (f"target {task.target.describe()} on {where} every {FLAGS.eval_every} steps, budget "
            f"{FLAGS.max_steps} steps" + (f" / {FLAGS.max_seconds:g} s" if FLAGS.max_seconds else ""))
