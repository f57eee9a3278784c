"""Runs survive: kill -9 or SIGTERM mid-run, rerun, and get the uninterrupted run's results.

Also: a finished workdir is reported, not recomputed; other flags are refused; --overwrite starts
again; a checkpoint of another model is refused; a sharded run (4 CPU devices, K=3 padded to 4)
gives the single-device results.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lrlab.store import checkpoints

FLAGS = ["--optimizer=adam,sgd", "--num_lrs=3", "--lr_min=1e-3", "--lr_max=1e-1", "--max_steps=150",
         "--eval_every=10", "--eval_examples=250", "--batch_size=32", "--noprogress"]
COMPARED = ("optimizer", "learning_rate", "status", "steps_to_target", "steps_trained",
            "final_train_accuracy", "final_test_accuracy")


def command(workdir, *extra):
    return [sys.executable, "-m", "lrlab.experiments.lr_valley", *FLAGS, f"--workdir={workdir}", *extra]


def run(workdir, *extra):
    return subprocess.run(command(workdir, *extra), capture_output=True, text=True, timeout=600)


def members(workdir):
    """What a resumed run must reproduce: everything but wall-clock seconds."""
    out = []
    for m in json.loads((workdir / "results.json").read_text())["members"]:
        out.append({**{k: m[k] for k in COMPARED},
                    "curve": {k: m["curve"][k] for k in ("step", "train_accuracy", "loss")}})
    return out


def checkpoint_steps(workdir, optimizer, recorded=False):
    """The checkpoint folders of `optimizer` (`recorded`: only those whose digest is written)."""
    folder = workdir / "checkpoints" / optimizer
    steps = [p for p in folder.iterdir() if p.name.isdigit()] if folder.exists() else []
    if recorded:
        steps = [p for p in steps if (p / checkpoints.RECORD).exists()]
    return steps


def start_and_signal(workdir, optimizer, sig, checkpoints=1, recorded=False):
    """Starts a run checkpointing every segment; sends `sig` once `optimizer` has `checkpoints`."""
    proc = subprocess.Popen(command(workdir, "--checkpoint_every=1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(checkpoint_steps(workdir, optimizer, recorded)) < checkpoints:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr
    return workdir


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "run"
    code, _, _ = start_and_signal(workdir, "adam", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (workdir / "results.json").exists()
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr
    assert members(workdir) == members(reference)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_equals_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "run"
    code, _, err = start_and_signal(workdir, "sgd", signal.SIGTERM)  # adam finished, sgd under way
    assert code == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "Traceback" not in err
    assert not (workdir / "results.json").exists()
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr
    assert members(workdir) == members(reference)


def test_finished_workdir_is_reported_not_recomputed(reference):
    before = (reference / "results.json").stat().st_mtime_ns
    proc = run(reference)
    assert proc.returncode == 0, proc.stderr
    assert "already holds this run's results (use --overwrite to recompute)" in proc.stdout
    assert (reference / "results.json").stat().st_mtime_ns == before


def test_workdir_with_other_flags_is_refused(reference):
    before = (reference / "results.json").read_bytes()
    proc = run(reference, "--max_steps=300", "--seed=3")
    assert proc.returncode == 1
    assert (f"lrlab: error: --workdir={reference} holds a run with other flags "
            "(--max_steps=150 there, 300 here; --seed=0 there, 3 here)") in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (reference / "results.json").read_bytes() == before


@pytest.mark.slow
def test_overwrite_recomputes(reference, tmp_path):
    workdir = tmp_path / "run"
    assert run(workdir, "--max_steps=20").returncode == 0
    proc = run(workdir, "--overwrite")  # other flags, but --overwrite discards the old run
    assert proc.returncode == 0, proc.stderr
    assert members(workdir) == members(reference)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    workdir = tmp_path / "run"
    code, _, _ = start_and_signal(workdir, "adam", signal.SIGKILL)
    assert code == -signal.SIGKILL
    (workdir / "identity.json").unlink(missing_ok=True)  # so that only the checkpoint can tell (a kill may precede it)
    proc = run(workdir, "--model=mlp")
    assert proc.returncode == 1
    assert "belongs to another run (model:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_sharded_over_4_devices_equals_one_device(reference, tmp_path):
    """K=3 members on 4 CPU devices: padded to 4, the padding member excluded from every result."""
    workdir = tmp_path / "run"
    proc = run(workdir, "--cpu_devices=4")
    assert proc.returncode == 0, proc.stderr
    sharded, single = members(workdir), members(reference)
    assert len(sharded) == len(single) == 6
    for a, b in zip(sharded, single):
        assert {k: a[k] for k in COMPARED[:5]} == {k: b[k] for k in COMPARED[:5]}
        # within one of the 250 evaluation examples: the reference runs on --cpu_devices=auto (one device per
        # core), and another split of the members is another program (float sums in another order)
        assert a["final_train_accuracy"] == pytest.approx(b["final_train_accuracy"], abs=1 / 250 + 1e-6)
        assert a["final_test_accuracy"] == pytest.approx(b["final_test_accuracy"], abs=1 / 250 + 1e-6)


def largest_file(folder):
    return max((f for f in folder.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def flip_bytes(path, count=64):
    """XORs `count` bytes in the middle of `path` (same size, other content)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    """bytes flipped in the latest checkpoint's arrays: resumed from the one before, said
    in one line, and the results are the uninterrupted run's (they were silently wrong before)."""
    workdir = tmp_path / "run"
    code, _, _ = start_and_signal(workdir, "adam", signal.SIGKILL, checkpoints=2, recorded=True)
    assert code == -signal.SIGKILL
    steps = sorted(checkpoint_steps(workdir, "adam", recorded=True), key=lambda p: int(p.name))
    latest, previous = steps[-1], steps[-2]
    flip_bytes(largest_file(latest / "population"))
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr
    assert f"checkpoint {latest} has" in proc.stdout and "changed since it was saved" in proc.stdout
    assert f"resuming from checkpoint {previous.name} instead" in proc.stdout
    assert f"lrlab: resuming from step {previous.name} (checkpoint {previous})" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert members(workdir) == members(reference)


def test_no_intact_checkpoint_is_refused_with_one_line_naming_the_cause(tmp_path):
    """Every checkpoint garbled (runner state overwritten): the cause is named, not "another run"."""
    workdir = tmp_path / "run"
    code, _, _ = start_and_signal(workdir, "adam", signal.SIGKILL, recorded=True)  # its digest written too
    assert code == -signal.SIGKILL
    for step in checkpoint_steps(workdir, "adam"):
        for f in (step / "runner").rglob("*"):
            if f.is_file():
                f.write_text("{ truncated")
    proc = run(workdir)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "no intact checkpoint to resume from" in line and "use another --workdir or --overwrite" in line
    assert "truncated or grown" in line or "changed since it was saved" in line
    assert "another run" not in line


def test_truncated_results_of_a_finished_run_are_recomputed(reference, tmp_path):
    """A results.json cut short in a finished workdir: one line, recomputed from the final checkpoint."""
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    text = (workdir / "results.json").read_text()
    (workdir / "results.json").write_text(text[: len(text) // 2])
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr
    assert "results.json is unreadable (JSONDecodeError" in proc.stdout and "recomputing it" in proc.stdout
    assert members(workdir) == members(reference)


def test_outputs_take_the_umask_mode(reference):
    for name in ("results.json", "identity.json", "valley.png"):
        assert (reference / name).stat().st_mode & 0o777 == 0o666 & ~current_umask(), name


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
