"""Installs lrlab on every worker of a TPU VM: the committed checkout, with JAX for TPU.

  python launch/install.py --name=valley-v4 --zone=us-central2-b
  python launch/install.py --name=valley-v4 --zone=us-central2-b --dry_run

Three commands: `git archive` of HEAD into a local .tar.gz (the committed tracked files, so each
worker gets exactly one known commit; uncommitted changes are not copied), `scp` of it to every
worker's ~/lrlab.tar.gz, and `ssh` to every worker to unpack it into ~/lrlab and
`pip install -e ".[tpu]"` there. Rerunning updates the copy in place.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import _gcloud
from absl import flags

flags.adopt_module_key_flags(_gcloud)
SOURCE = flags.DEFINE_string("source", str(_gcloud.REPO_ROOT), "The lrlab git checkout to install (its HEAD).")
flags.mark_flags_as_required(["name", "zone"])

REMOTE_TARBALL = "lrlab.tar.gz"  # in the home directory of each worker
REMOTE_INSTALL = ("mkdir -p ~/lrlab && tar -xzf ~/lrlab.tar.gz -C ~/lrlab && cd ~/lrlab"
                  " && python3 -m pip install -q -e \".[tpu]\"")


def checkout_root(source: str) -> str:
    """The top folder of the git checkout holding `source`, or one clear error."""
    try:
        proc = subprocess.run(["git", "-C", source, "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, check=False)
    except FileNotFoundError:
        _gcloud.fail("git not found on PATH (install needs it to archive the checkout)")
    if proc.returncode != 0:
        _gcloud.fail(f"--source={source}: not a git checkout")
    root = proc.stdout.strip()
    if not (pathlib.Path(root) / "pyproject.toml").is_file():
        _gcloud.fail(f"--source={source}: {root} has no pyproject.toml (not an lrlab checkout)")
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, check=False)
    if status.stdout.strip():
        _gcloud.note(f"{root} has uncommitted changes; they are not copied (commit them first to install them)")
    return root


def local_tarball(name: str) -> str:
    """Where the archive is built locally: the temp folder, one file per TPU VM name."""
    return str(pathlib.Path(tempfile.gettempdir()) / f"lrlab-{name}.tar.gz")


def commands(source: str) -> list[list[str]]:
    """git archive, scp to all workers, ssh to all workers to unpack and pip install."""
    name, zone, project = _gcloud.NAME.value, _gcloud.ZONE.value, _gcloud.PROJECT.value
    tarball = local_tarball(name)
    return [
        _gcloud.git_archive(source, tarball),
        _gcloud.tpu_vm_scp(tarball, f"{name}:~/{REMOTE_TARBALL}", zone, worker="all", project=project),
        _gcloud.tpu_vm_ssh(name, zone, REMOTE_INSTALL, worker="all", project=project),
    ]


def main() -> None:
    _gcloud.execute(commands(checkout_root(SOURCE.value)), _gcloud.DRY_RUN.value)


if __name__ == "__main__":
    _gcloud.run_app(main)
