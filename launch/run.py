"""Runs an lrlab experiment on every worker of a TPU VM at once (the same program on every host).

  python launch/run.py --name=valley-v4 --zone=us-central2-b --experiment=lr_valley \\
      --workdir=runs/valley --flags=--flagfile=experiments/mack2018/lr_valley.flags
  python launch/run.py ... --flags=--optimizer=all --flags=--max_steps=100 --log=valley.log --dry_run

On each worker: cd ~/lrlab && python3 -u -m lrlab.experiments.EXPERIMENT --workdir=WORKDIR FLAGS...
(unbuffered, so output streams back through ssh). Relative paths (--workdir, --log, a flagfile)
are relative to ~/lrlab on the workers; ~/ means the worker's home. The run lasts as long as the
ssh connection: keep this terminal open (or run it inside tmux/screen).
"""

from __future__ import annotations

import pathlib
import re
import shlex
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _gcloud
from absl import flags

EXPERIMENTS_DIR = _gcloud.REPO_ROOT / "lrlab" / "experiments"

flags.adopt_module_key_flags(_gcloud)
EXPERIMENT = flags.DEFINE_string("experiment", None, "Experiment module in lrlab/experiments, e.g. lr_valley.")
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where the experiment writes results and checkpoints: a path on the workers (relative "
    "paths are relative to ~/lrlab there; on a multi-host slice, a shared filesystem mounted on every "
    "worker). Reuse it to resume a run.")
EXTRA_FLAGS = flags.DEFINE_multi_string(
    "flags", [], "A flag passed through to the experiment, one per --flags, e.g. --flags=--optimizer=all "
    "--flags=--max_steps=100.")
LOG = flags.DEFINE_string("log", None, "Also append the output to this file on each worker (via tee).")
flags.mark_flags_as_required(["name", "zone", "experiment", "workdir"])


def experiments() -> list[str]:
    """The experiment modules of the local checkout."""
    return sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))


def _valid_experiment(value: str | None) -> bool:
    if value is not None and not (re.fullmatch(r"[a-z][a-z0-9_]*", value) and value in experiments()):
        raise flags.ValidationError(f"no experiment lrlab/experiments/{value}.py "
                                    f"(there are: {', '.join(experiments()) or 'none'})")
    return True


def _valid_workdir(value: str | None) -> bool:
    if value is None:
        return True
    if not value.strip() or "\n" in value:
        raise flags.ValidationError("must be a path on the workers")
    if "://" in value:
        raise flags.ValidationError("lrlab does not write to object stores (gs://) yet: use a path on the VM, "
                                    "or on a shared filesystem mounted at the same path on every worker")
    return True


def _valid_extra_flags(values: list[str]) -> bool:
    for value in values:
        if not value.startswith("-"):
            raise flags.ValidationError(f"{value!r} is not a flag: pass each as --flags=--NAME=VALUE")
        if re.match(r"--?workdir(=|$)", value):
            raise flags.ValidationError("pass the workdir with --workdir, not in --flags")
    return True


flags.register_validator("experiment", _valid_experiment)
flags.register_validator("workdir", _valid_workdir)
flags.register_validator("flags", _valid_extra_flags)
flags.register_validator("log", lambda v: v is None or (bool(v.strip()) and "\n" not in v), "must be a file path")


def remote_command(experiment: str, workdir: str, extra_flags: list[str], log: str | None) -> str:
    """The shell command each worker runs, every user-given value quoted."""
    program = " ".join(["python3", "-u", "-m", f"lrlab.experiments.{experiment}",
                        "--workdir=" + _gcloud.remote_path(workdir)] + [shlex.quote(f) for f in extra_flags])
    if log is None:
        return f"cd ~/lrlab && {program}"
    return f"set -o pipefail && cd ~/lrlab && {program} 2>&1 | tee -a {_gcloud.remote_path(log)}"


def commands() -> list[list[str]]:
    """One ssh to all workers."""
    return [_gcloud.tpu_vm_ssh(_gcloud.NAME.value, _gcloud.ZONE.value,
                               remote_command(EXPERIMENT.value, WORKDIR.value, EXTRA_FLAGS.value, LOG.value),
                               worker="all", project=_gcloud.PROJECT.value)]


def main() -> None:
    _gcloud.execute(commands(), _gcloud.DRY_RUN.value)


if __name__ == "__main__":
    _gcloud.run_app(main)
