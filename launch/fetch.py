"""Fetches an experiment's results (its --workdir) to this machine, into LOCAL/<last part of workdir>.

  python launch/fetch.py --workdir=gs://my-bucket/lrlab/valley --local=runs
  python launch/fetch.py --name=valley-v4 --zone=us-central2-b --workdir=runs/valley --local=runs

A gs:// workdir is copied from Cloud Storage (no VM needed, so it works after the VM is gone);
a path on the VM is copied from worker 0 (process 0 writes the results), relative paths being
relative to ~/lrlab there, as in run.py.
"""

from __future__ import annotations

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _gcloud
from absl import flags

flags.adopt_module_key_flags(_gcloud)
WORKDIR = flags.DEFINE_string("workdir", None, "The experiment's --workdir: gs://BUCKET/PATH or a path on the VM.")
LOCAL = flags.DEFINE_string("local", "runs", "Local folder to copy into (created if missing).")
flags.mark_flags_as_required(["workdir"])
flags.register_validator("workdir", lambda v: v is None or (bool(v.strip("/ ")) and "\n" not in v),
                         "must be gs://BUCKET/PATH or a path on the VM")
flags.register_validator("local", lambda v: bool(v.strip()), "must be a folder path")


def vm_path(workdir: str) -> str:
    """The workdir as scp reads it on the VM: relative to ~/lrlab as run.py ran it, ~/ the home."""
    if workdir.startswith(("/", "~/")):
        return workdir
    return f"lrlab/{workdir}"


def commands() -> list[list[str]]:
    """One copy: from Cloud Storage, or from worker 0 of the VM."""
    workdir = WORKDIR.value.rstrip("/")
    if workdir.startswith("gs://"):
        return [_gcloud.storage_cp(workdir, LOCAL.value, project=_gcloud.PROJECT.value)]
    if not (_gcloud.NAME.value and _gcloud.ZONE.value):
        _gcloud.fail(f"--workdir={workdir} is on the VM: give --name and --zone too")
    return [_gcloud.tpu_vm_scp(f"{_gcloud.NAME.value}:{vm_path(workdir)}", LOCAL.value, _gcloud.ZONE.value,
                               worker="0", recurse=True, project=_gcloud.PROJECT.value)]


def main() -> None:
    command_lines = commands()
    if not _gcloud.DRY_RUN.value:
        os.makedirs(LOCAL.value, exist_ok=True)
    _gcloud.execute(command_lines, _gcloud.DRY_RUN.value)


if __name__ == "__main__":
    _gcloud.run_app(main)
