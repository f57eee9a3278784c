"""Shared by the launch scripts: their common flags, pure builders of gcloud command lines, and a runner.

Builders return argv lists (never shell strings), so what a dry run prints (shlex.join) is exactly
what the runner executes.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
GCLOUD_NOT_FOUND = "gcloud not found on PATH (install the Google Cloud SDK, or use --dry_run)"

# Cloud TPU node names are Compute Engine resource names; zones look like us-central2-b.
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_PROJECT_RE = re.compile(r"([a-z0-9.-]+:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")


def _check(pattern: re.Pattern, message: str) -> Callable[[str | None], bool]:
    def validate(value: str | None) -> bool:
        if value is not None and not pattern.fullmatch(value):
            raise flags.ValidationError(message)
        return True
    return validate


NAME = flags.DEFINE_string("name", None, "Name of the TPU VM (lowercase letters, digits and hyphens).")
ZONE = flags.DEFINE_string("zone", None, "Zone of the TPU VM, e.g. us-central2-b (v4) or us-west4-a (v5e).")
PROJECT = flags.DEFINE_string("project", None, "Google Cloud project (default: gcloud's configured project).")
DRY_RUN = flags.DEFINE_boolean("dry_run", False, "Print the commands, one a line, instead of running them.")
flags.register_validator(
    "name", _check(_NAME_RE, "must start with a lowercase letter, then lowercase letters, digits or hyphens "
                            "(at most 63, not ending in a hyphen)"))
flags.register_validator("zone", _check(_ZONE_RE, "must be a zone such as us-central2-b"))
flags.register_validator("project", _check(_PROJECT_RE, "must be a project ID such as my-project-123"))

_REQUIRED_RE = re.compile(r"flag --(\w+)=None: Flag --\1 must have a value other than None\.")
_HELP = {"-h", "-help", "--help", "-helpshort", "--helpshort", "-?"}
_HELPFULL = {"-helpfull", "--helpfull"}


def fail(message: str) -> NoReturn:
    """Stops with one line on stderr, no traceback, exit status 1."""
    print(f"launch: error: {message}", file=sys.stderr)
    sys.exit(1)


def note(message: str) -> None:
    """Progress and explanations go to stderr: stdout carries only the commands of a dry run."""
    print(f"launch: {message}", file=sys.stderr)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with exit status 0 for --help and one-line errors (`launch: error: ...`)."""
    before_terminator = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if _HELP.intersection(before_terminator) or _HELPFULL.intersection(before_terminator):
        app.usage(shorthelp=not _HELPFULL.intersection(before_terminator), writeto_stdout=True)
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        message = " ".join(str(e).split())
        required = _REQUIRED_RE.fullmatch(message)
        fail(f"--{required.group(1)} is required" if required else message)
    if len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])} (flags take the form --name=value)")
    return rest


def run_app(main: Callable[[], None]) -> None:
    """Runs `main` as an absl app with this module's flag parsing."""
    app.run(lambda argv: main(), flags_parser=parse_flags)


def _with_project(command: list[str], project: str | None) -> list[str]:
    return command + ([f"--project={project}"] if project else [])


def tpu_vm_create(name: str, zone: str, accelerator_type: str, version: str, *, spot: bool = False,
                  preemptible: bool = False, project: str | None = None) -> list[str]:
    """`gcloud compute tpus tpu-vm create`: one TPU VM (a slice of one or more hosts)."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", "create", name, f"--zone={zone}",
               f"--accelerator-type={accelerator_type}", f"--version={version}"]
    command += ["--spot"] if spot else []
    command += ["--preemptible"] if preemptible else []
    return _with_project(command, project)


def tpu_vm_delete(name: str, zone: str, *, project: str | None = None) -> list[str]:
    """`gcloud compute tpus tpu-vm delete`, without the confirmation prompt."""
    return _with_project(["gcloud", "compute", "tpus", "tpu-vm", "delete", name, f"--zone={zone}", "--quiet"],
                         project)


def tpu_vm_ssh(name: str, zone: str, remote_command: str, *, worker: str = "all",
               project: str | None = None) -> list[str]:
    """`gcloud compute tpus tpu-vm ssh`: runs one shell command on the given worker(s), in parallel."""
    return _with_project(["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}",
                          f"--worker={worker}", f"--command={remote_command}"], project)


def tpu_vm_scp(source: str, destination: str, zone: str, *, worker: str = "all", recurse: bool = False,
               project: str | None = None) -> list[str]:
    """`gcloud compute tpus tpu-vm scp`: remote paths are written NAME:PATH (relative to the home directory)."""
    command = ["gcloud", "compute", "tpus", "tpu-vm", "scp"] + (["--recurse"] if recurse else [])
    return _with_project(command + [f"--worker={worker}", f"--zone={zone}", source, destination], project)


def storage_cp(source: str, destination: str, *, project: str | None = None) -> list[str]:
    """`gcloud storage cp --recursive`: copies a gs:// folder (into DESTINATION/<its last name>)."""
    return _with_project(["gcloud", "storage", "cp", "--recursive", source, destination], project)


def git_archive(source: str, output: str) -> list[str]:
    """`git archive` of HEAD: the committed tracked files of the checkout, as a .tar.gz."""
    return ["git", "-C", source, "archive", "--format=tar.gz", f"--output={output}", "HEAD"]


def remote_path(path: str) -> str:
    """Shell-quotes a path for a remote command, keeping a leading ~ (home) unquoted so it expands."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"' + shlex.quote(path[1:])
    return shlex.quote(path)


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Prints the commands (dry run: one shell-quoted line each, on stdout) or runs them in order.

    A failing command stops the rest with one line naming it and its exit status.
    """
    if dry_run:
        for command in commands:
            print(shlex.join(command))
        return
    if any(command[0] == "gcloud" for command in commands) and shutil.which("gcloud") is None:
        fail(GCLOUD_NOT_FOUND)
    for command in commands:
        note(f"running: {shlex.join(command)}")
        try:
            subprocess.run(list(command), check=True)
        except FileNotFoundError:
            fail(f"{command[0]} not found on PATH: {shlex.join(command)}")
        except subprocess.CalledProcessError as e:
            fail(f"command failed with exit status {e.returncode}: {shlex.join(command)}")
        except KeyboardInterrupt:
            fail(f"interrupted: {shlex.join(command)}")
