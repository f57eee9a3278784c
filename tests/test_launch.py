"""The Cloud TPU launch scripts: exact gcloud command lines of their dry runs, help, and one-line errors.

Each script runs as a subprocess from the repository root, as a user runs it; no gcloud is needed
(a fake one on PATH stands in where the scripts really execute).
"""

import os
import pathlib
import shlex
import subprocess
import sys
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = ["create", "install", "run", "fetch", "delete"]
VM = ["--name=valley-v4", "--zone=us-central2-b"]
SSH = "gcloud compute tpus tpu-vm ssh valley-v4 --zone=us-central2-b --worker=all"


def launch(script, *args, env=None):
    return subprocess.run([sys.executable, f"launch/{script}.py", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def dry_run(script, *args, env=None):
    proc = launch(script, *args, "--dry_run", env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def assert_one_line_error(proc, needle):
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch: error: "), proc.stderr
    assert needle in lines[0]


def fake_gcloud(folder, exit_status=0):
    """A `gcloud` that records its arguments (one line, shell-quoted) and exits with `exit_status`."""
    folder.mkdir(exist_ok=True)
    script = folder / "gcloud"
    script.write_text(f'#!/bin/sh\n{sys.executable} -c "import shlex, sys; print(shlex.join(sys.argv[1:]))" "$@" '
                      f'>> "{folder / "calls.txt"}"\nexit {exit_status}\n')
    script.chmod(0o755)
    return dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_create():
    assert dry_run("create", *VM, "--accelerator_type=v4-8", "--spot") == [
        "gcloud compute tpus tpu-vm create valley-v4 --zone=us-central2-b --accelerator-type=v4-8 "
        "--version=tpu-ubuntu2204-base --spot"]
    assert dry_run("create", *VM, "--accelerator_type=v5litepod-8", "--runtime_version=v2-alpha-tpuv5-lite",
                   "--preemptible", "--project=my-project") == [
        "gcloud compute tpus tpu-vm create valley-v4 --zone=us-central2-b --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite --preemptible --project=my-project"]
    assert dry_run("create", "--name=pod", "--zone=us-central2-b", "--accelerator_type=v4-32") == [
        "gcloud compute tpus tpu-vm create pod --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base"]


def test_install(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    assert dry_run("install", *VM, env=env) == [
        f"git -C {REPO} archive --format=tar.gz --output={tmp_path}/lrlab-valley-v4.tar.gz HEAD",
        f"gcloud compute tpus tpu-vm scp --worker=all --zone=us-central2-b {tmp_path}/lrlab-valley-v4.tar.gz "
        "'valley-v4:~/lrlab.tar.gz'",
        f"{SSH} '--command=mkdir -p ~/lrlab && tar -xzf ~/lrlab.tar.gz -C ~/lrlab && cd ~/lrlab "
        "&& python3 -m pip install -q -e \".[tpu]\"'",
    ]


def test_install_runs_git_archive_then_gcloud(tmp_path):
    env = dict(fake_gcloud(tmp_path / "bin"), TMPDIR=str(tmp_path))
    proc = launch("install", *VM, "--project=my-project", env=env)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "lrlab-valley-v4.tar.gz") as tar:
        names = tar.getnames()
    assert "pyproject.toml" in names and "lrlab/experiments/lr_valley.py" in names
    calls = (tmp_path / "bin" / "calls.txt").read_text().splitlines()
    assert calls == [line.removeprefix("gcloud ") + " --project=my-project"
                     for line in dry_run("install", *VM, env=env)[1:]]


def test_install_source_must_be_a_git_checkout(tmp_path):
    assert_one_line_error(launch("install", *VM, f"--source={tmp_path}", "--dry_run"), "not a git checkout")


def test_run_worked_example():
    assert dry_run("run", *VM, "--experiment=lr_valley", "--workdir=runs/valley",
                   "--flags=--flagfile=experiments/mack2018/lr_valley.flags") == [
        f"{SSH} '--command=cd ~/lrlab && python3 -u -m lrlab.experiments.lr_valley "
        "--workdir=runs/valley --flagfile=experiments/mack2018/lr_valley.flags'"]


def test_run_flags_log_and_project():
    assert dry_run("run", *VM, "--experiment=lr_valley", "--workdir=runs/valley", "--flags=--optimizer=all",
                   "--flags=--max_steps=100", "--log=valley.log", "--project=my-project") == [
        f"{SSH} '--command=set -o pipefail && cd ~/lrlab && python3 -u -m lrlab.experiments.lr_valley "
        "--workdir=runs/valley --optimizer=all --max_steps=100 2>&1 | tee -a valley.log' --project=my-project"]


def test_run_remote_command_survives_the_shell(tmp_path):
    """Odd characters reach the experiment intact, ~/ is the worker's home, and --log tees the output."""
    (home := tmp_path / "home" / "lrlab").mkdir(parents=True)
    home = home.parent
    (bin_dir := tmp_path / "bin").mkdir()
    (bin_dir / "python3").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    (bin_dir / "python3").chmod(0o755)
    [line] = dry_run("run", *VM, "--experiment=lr_valley", "--workdir=~/runs/my valley",
                     "--flags=--model=it's $(boom)", "--flags=--lrs=0.1,1", "--log=~/valley.log")
    [remote] = [a.removeprefix("--command=") for a in shlex.split(line) if a.startswith("--command=")]
    proc = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, timeout=30, check=False,
                          env={"HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"})
    assert proc.returncode == 0, proc.stderr
    expected = ["-u", "-m", "lrlab.experiments.lr_valley", f"--workdir={home}/runs/my valley",
                "--model=it's $(boom)", "--lrs=0.1,1"]
    assert proc.stdout.splitlines() == expected
    assert (home / "valley.log").read_text().splitlines() == expected


def test_fetch():
    assert dry_run("fetch", "--workdir=gs://my-bucket/lrlab/valley/") == [
        "gcloud storage cp --recursive gs://my-bucket/lrlab/valley runs"]
    assert dry_run("fetch", *VM, "--workdir=runs/valley", "--local=results", "--project=my-project") == [
        "gcloud compute tpus tpu-vm scp --recurse --worker=0 --zone=us-central2-b valley-v4:lrlab/runs/valley "
        "results --project=my-project"]
    assert dry_run("fetch", *VM, "--workdir=/data/valley") == [
        "gcloud compute tpus tpu-vm scp --recurse --worker=0 --zone=us-central2-b valley-v4:/data/valley runs"]


def test_delete():
    assert dry_run("delete", *VM) == ["gcloud compute tpus tpu-vm delete valley-v4 --zone=us-central2-b --quiet"]
    assert dry_run("delete", *VM, "--project=my-project") == [
        "gcloud compute tpus tpu-vm delete valley-v4 --zone=us-central2-b --quiet --project=my-project"]


@pytest.mark.parametrize("script, own_flags", [
    ("create", ["--accelerator_type", "--runtime_version", "--spot", "--preemptible"]),
    ("install", ["--source"]),
    ("run", ["--experiment", "--workdir", "--flags", "--log"]),
    ("fetch", ["--workdir", "--local"]),
    ("delete", []),
])
def test_help(script, own_flags):
    proc = launch(script, "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ["--name", "--zone", "--project", "--dry_run"] + own_flags:
        assert flag in proc.stdout.replace("--[no]", "--"), (script, flag)


@pytest.mark.parametrize("script, args, needle", [
    ("create", ["--zone=us-central2-b", "--accelerator_type=v4-8"], "--name is required"),
    ("create", [*VM, "--accelerator_type=v4-8", "--spot", "--preemptible"],
     "--spot and --preemptible are mutually exclusive"),
    ("create", ["--name=valley-v4", "--zone=us-central2", "--accelerator_type=v4-8"],
     "flag --zone=us-central2: must be a zone such as us-central2-b"),
    ("create", [*VM, "--accelerator_type=v4"], "flag --accelerator_type=v4: must be a TPU type"),
    ("create", ["--name=Valley_V4", "--zone=us-central2-b", "--accelerator_type=v4-8"], "flag --name=Valley_V4"),
    ("delete", [*VM, "valley-v5"], "unexpected arguments: valley-v5"),
    ("delete", [*VM, "--nme=x"], "Unknown command line flag 'nme'"),
    ("run", [*VM, "--experiment=no_such", "--workdir=w"], "no experiment lrlab/experiments/no_such.py"),
    ("run", [*VM, "--experiment=lr_valley"], "--workdir is required"),
    ("run", [*VM, "--experiment=lr_valley", "--workdir=w", "--flags=optimizer=all"], "is not a flag"),
    ("run", [*VM, "--experiment=lr_valley", "--workdir=w", "--flags=--workdir=v"], "pass the workdir with --workdir"),
    ("fetch", ["--workdir=runs/valley"], "give --name and --zone"),
])
def test_bad_input_fails_with_one_line(script, args, needle):
    assert_one_line_error(launch(script, *args, "--dry_run"), needle)


def test_no_gcloud_on_path(tmp_path):
    proc = launch("delete", *VM, env=dict(os.environ, PATH=str(tmp_path)))
    assert_one_line_error(proc, "")
    assert proc.stderr == ("launch: error: gcloud not found on PATH (install the Google Cloud SDK, "
                           "or use --dry_run)\n")


def test_executes_exactly_what_the_dry_run_prints(tmp_path):
    args = [*VM, "--experiment=lr_valley", "--workdir=~/runs/it's", "--flags=--optimizer=all"]
    proc = launch("run", *args, env=fake_gcloud(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert (tmp_path / "calls.txt").read_text().splitlines() == [
        line.removeprefix("gcloud ") for line in dry_run("run", *args)]


def test_failing_gcloud_names_the_command_and_status(tmp_path):
    proc = launch("delete", *VM, env=fake_gcloud(tmp_path, exit_status=3))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == ("launch: error: command failed with exit status 3: gcloud compute "
                                            "tpus tpu-vm delete valley-v4 --zone=us-central2-b --quiet")


def test_run_refuses_an_object_store_workdir():
    """lrlab writes its workdir with file APIs: a gs:// workdir is refused here, not on the VM."""
    assert_one_line_error(launch("run", *VM, "--experiment=lr_valley", "--workdir=gs://b/run", "--dry_run"),
                          "does not write to object stores")
