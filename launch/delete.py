"""Deletes a TPU VM (all of its workers, and anything stored on them), without a confirmation prompt.

  python launch/delete.py --name=valley-v4 --zone=us-central2-b
  python launch/delete.py --name=valley-v4 --zone=us-central2-b --dry_run
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _gcloud
from absl import flags

flags.adopt_module_key_flags(_gcloud)
flags.mark_flags_as_required(["name", "zone"])


def commands() -> list[list[str]]:
    """The one gcloud command this script runs."""
    return [_gcloud.tpu_vm_delete(_gcloud.NAME.value, _gcloud.ZONE.value, project=_gcloud.PROJECT.value)]


def main() -> None:
    _gcloud.execute(commands(), _gcloud.DRY_RUN.value)


if __name__ == "__main__":
    _gcloud.run_app(main)
