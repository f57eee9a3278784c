"""Creates a Cloud TPU VM (one host, or a multi-host slice such as v4-32) to run lrlab on.

  python launch/create.py --name=valley-v4 --zone=us-central2-b --accelerator_type=v4-8 --spot
  python launch/create.py --name=valley-v4 --zone=us-central2-b --accelerator_type=v4-8 --spot --dry_run

Runtime versions: tpu-ubuntu2204-base suits v4 (and v2/v3); v5e (v5litepod-N) takes
v2-alpha-tpuv5-lite, v5p takes v2-alpha-tpuv5, v6e takes v2-alpha-tpuv6e.
"""

from __future__ import annotations

import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _gcloud
from absl import flags

flags.adopt_module_key_flags(_gcloud)
ACCELERATOR_TYPE = flags.DEFINE_string(
    "accelerator_type", None, "TPU type and size, e.g. v4-8 (one host), v4-32 (4 hosts), v5litepod-8, v5p-8.")
RUNTIME_VERSION = flags.DEFINE_string(
    "runtime_version", "tpu-ubuntu2204-base", "TPU software version (the VM image), e.g. tpu-ubuntu2204-base.")
SPOT = flags.DEFINE_boolean("spot", False, "Create a Spot VM: much cheaper, can be preempted at any time.")
PREEMPTIBLE = flags.DEFINE_boolean("preemptible", False, "Create a preemptible VM (the older kind; 24 h at most).")
flags.mark_flags_as_required(["name", "zone", "accelerator_type"])
flags.register_validator(
    "accelerator_type", lambda v: v is None or re.fullmatch(r"v[0-9]+[a-z]*-[0-9]+", v) is not None,
    "must be a TPU type such as v4-8, v4-32 or v5litepod-8")
flags.register_validator(
    "runtime_version", lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v) is not None,
    "must be a TPU software version such as tpu-ubuntu2204-base")
flags.register_multi_flags_validator(
    ["spot", "preemptible"], lambda v: not (v["spot"] and v["preemptible"]),
    "--spot and --preemptible are mutually exclusive: pick one")


def commands() -> list[list[str]]:
    """The one gcloud command this script runs."""
    return [_gcloud.tpu_vm_create(_gcloud.NAME.value, _gcloud.ZONE.value, ACCELERATOR_TYPE.value,
                                  RUNTIME_VERSION.value, spot=SPOT.value, preemptible=PREEMPTIBLE.value,
                                  project=_gcloud.PROJECT.value)]


def main() -> None:
    _gcloud.execute(commands(), _gcloud.DRY_RUN.value)


if __name__ == "__main__":
    _gcloud.run_app(main)
