"""lr_valley from the command line: a tiny run end to end, and bad input refused in one line."""

import json
import subprocess
import sys

import pytest

from lrlab.store import files

TINY = ["--num_lrs=3", "--lr_min=1e-4", "--lr_max=1e-1", "--max_steps=20", "--eval_every=10",
        "--eval_examples=250", "--batch_size=32", "--noprogress"]


def run_valley(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lrlab.experiments.lr_valley", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_tiny_valley_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = run_valley("--optimizer=adam,sgd", f"--workdir={workdir}", *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "adam: 3 learning rates" in proc.stdout and "sgd: 3 learning rates" in proc.stdout
    assert f"saved results: {workdir / 'results.json'}" in proc.stdout
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["schema_version"] == 2 and summary["steps_to_target_resolution"] == 10
    assert summary["target"] == {"metric": "accuracy", "goal": 0.97, "mode": "max"}
    members = summary["members"]
    assert [m["optimizer"] for m in members] == ["adam"] * 3 + ["sgd"] * 3
    for m in members:
        assert m["status"] in ("reached", "diverged", "exhausted")
        assert (m["steps_to_target"] is None) == (m["status"] != "reached")
        assert set(m["curve"]) == {"step", "train_accuracy", "train_loss", "loss", "seconds"}
        assert 0 <= m["final_test_accuracy"] <= 1
    restored = files.restore_orbax(workdir / "results_orbax")
    assert list(restored["sgd"]["learning_rate"]) == pytest.approx([m["learning_rate"] for m in members[3:]])
    assert (workdir / "valley.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "envelope.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # two optimizers
    assert [row["learning_rate"] for row in summary["envelope"]] == sorted({m["learning_rate"] for m in members})
    assert "rates that trained with at least one optimizer:" in proc.stdout


@pytest.mark.slow  # four processes
def test_rerun_compares_rates_by_value_not_text(tmp_path):
    workdir = tmp_path / "run"
    first = run_valley("--optimizer=sgd", "--lrs=0.001,0.1", f"--workdir={workdir}", *TINY)
    assert first.returncode == 0, first.stderr
    again = run_valley("--optimizer=sgd", "--lrs=1e-3,1e-1", f"--workdir={workdir}", *TINY)
    assert again.returncode == 0, again.stderr
    assert "already holds this run's results" in again.stdout
    seeded = run_valley("--optimizer=sgd", "--lrs=1e-3,1e-1", "--seeds=2", f"--workdir={workdir}", *TINY)
    assert seeded.returncode == 1 and "--seeds=(not set) there, 2 here" in seeded.stderr
    other = run_valley("--optimizer=sgd", "--lrs=1e-3,1e-2", f"--workdir={workdir}", *TINY)
    assert other.returncode == 1 and "holds a run with other flags (--optimizer/--lrs/--hparam (the members)=" in other.stderr


@pytest.mark.slow  # three processes
def test_run_without_retirement_resumes_without_it(tmp_path):
    """A workdir whose run saved no --retire (--noretire, or made before retirement existed) resumes
    from its checkpoint without retirement; asking for retirement there is refused."""
    workdir = tmp_path / "run"
    first = run_valley("--optimizer=sgd", "--lrs=0.1", "--noretire", f"--workdir={workdir}", *TINY)
    assert first.returncode == 0, first.stderr
    assert "retire" not in json.loads((workdir / "identity.json").read_text())["settings"]  # absent: made without
    (workdir / "results.json").unlink()  # resume from the final checkpoint, whose identity has no retirement
    again = run_valley("--optimizer=sgd", "--lrs=0.1", f"--workdir={workdir}", *TINY)
    assert again.returncode == 0, again.stderr
    assert "trains without retirement; resuming it so (--noretire)" in again.stdout
    assert (workdir / "results.json").exists()
    refused = run_valley("--optimizer=sgd", "--lrs=0.1", "--retire", f"--workdir={workdir}", *TINY)
    assert refused.returncode == 1 and "--retire=(not set) there, (set) here" in refused.stderr


def test_refused_rerun_does_not_claim_the_workdir(tmp_path):
    """A refused command never writes identity.json: after a late refusal the corrected one still runs."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    bad = run_valley("--optimizer=sgd", "--model=tutorial_cnn", "--num_lrs=2000", f"--workdir={workdir}", *TINY[1:])
    assert bad.returncode == 1 and "members fit" in bad.stderr
    assert not (workdir / "identity.json").exists() and not (workdir / "checkpoints").exists()
    good = run_valley("--optimizer=sgd", "--lrs=0.1", f"--workdir={workdir}", *TINY)
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("flag,needle", [
    ("--optimizer=adamw", "--optimizer=adamw: unknown optimizer adamw"),
    ("--model=resnet", "--model"),
    ("--dataset=cifar", "--dataset=cifar: must be 'mnist' or 'tfds:NAME'"),
    ("--lr_min=1000", "--lr_min (1000.0) must be below --lr_max (0.1)"),
    ("--lr_min=-1", "--lr_min=-1.0: must be positive"),
    ("--lrs=0.1,-2", "learning rates must be positive"),
    ("--lrs=0.1,abc", "learning rates must be numbers"),
    ("--target_accuracy=1.5", "--target_accuracy=1.5: must be in (0, 1]"),
    ("--target_accuracy=0", "--target_accuracy=0.0: must be in (0, 1]"),
    ("--max_steps=0", "--max_steps=0: must be between 1 and 1,073,741,823"),
    ("--width=0", "--width=0.0: must be positive"),
    ("--checkpoint_every=-1", "--checkpoint_every=-1: must be 0 or positive"),
    ("--cpu_devices=-2", "--cpu_devices=-2: must be 'auto' (default) or a number of devices"),
    ("--eval_every=0", "--eval_every=0: must be between 1 and 1,073,741,823"),
    ("--retire_evaluations=0", "--retire_evaluations=0: must be at least 1"),
    ("--retire_margin=1", "--retire_margin=1.0: must be in [0, 1)"),
    ("--batch_size=-5", "--batch_size=-5: must be between 1 and 1,073,741,823"),
    ("--decay_factor=2", "--decay_factor=2.0: must be in (0, 1]"),
    ("--sgdr_mult=0.5", "--sgdr_mult=0.5: must be at least 1"),
    ("--schedule=linear", "--schedule"),
    ("--workdir=gs://bucket/run", "--workdir=gs://bucket/run: object-store workdirs (gs://...) are not supported"),
    ("--dtype=float8", "--dtype"),
    ("--model=mlp --batch_norm", "--batch_norm needs a CNN: the mlp has no conv blocks"),
    ("--prune=sha --sequential", "--prune ranks members against each other: not with --sequential"),
    ("--early_stopping --validation_examples=60000",
     "--validation_examples=60000: mnist has only 60,000 training examples"),
    # Values that used to fail only after compiling, or to train nonsense.
    ("--batch_size=70000", "--batch_size=70000: more than the 60,000 examples mnist trains on"),
    ("--eval_examples=70000", "--eval_examples=70000: the target is measured on a subset of the 60,000"),
    ("--seed=-1", "--seed=-1: must be between 0 and 2,147,483,647"),
    ("--seed=99999999999999999999", "must be between 0 and 2,147,483,647"),
    ("--max_steps=99999999999999999999", "--max_steps=99999999999999999999: must be between 1 and 1,073,741,823"),
    ("--max_steps=2147483648", "--max_steps=2147483648: must be between 1 and 1,073,741,823"),
    ("--num_lrs=100000000", "--num_lrs=100000000: must be between 1 and 1,000,000"),
    ("--cpu_devices=100000", "--cpu_devices=100000: more than 8 per core"),
    ("--target_goal=-1", "--target_goal=-1: an accuracy's goal must lie in (0, 1]"),
    ("--target_goal=5", "--target_goal=5: an accuracy's goal must lie in (0, 1]"),
    ("--optuna_storage=sqlite:////tmp", "it is a folder, not a database file"),
    ("--eval_every=50", "--eval_every=50 is above --max_steps=20"),
    ("--adam_b1=1.5", "--adam_b1=1.5: b1 must be finite and in [0, 1)"),
    ("--optimizer=adam --adam_b2=1.5", "--adam_b2=1.5: b2 must be finite and in [0, 1)"),
    ("--optimizer=rmsprop --rmsprop_decay=2", "--rmsprop_decay=2.0: decay must be finite and in [0, 1)"),
    ("--lrs=", "--lrs=[]: is empty"),
    ("--lrs=1e-3,0.001", "learning rate 0.001 listed twice"),
    ("--width=1000", "3 members need at least"),
    ("--model=tutorial_cnn --num_lrs=2000", "members fit"),
    ("--coordinator_address=localhost:1", "--num_processes, --process_id: needed with --coordinator_address"),
])
def test_bad_flags_fail_with_one_clear_line(tmp_path, flag, needle):
    workdir = tmp_path / "run"
    proc = run_valley(*TINY, f"--workdir={workdir}", *flag.split())  # the bad flags last: they win
    assert proc.returncode != 0
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not workdir.exists()  # nothing written


def test_unwritable_workdir_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_valley(f"--workdir={blocker / 'run'}", *TINY)
    assert proc.returncode == 1
    assert f"lrlab: error: --workdir={blocker / 'run'}: cannot write there" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_tfds_dataset_fails_clearly(tmp_path):
    proc = run_valley("--dataset=tfds:nothing_here", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}",
                      *TINY)
    assert proc.returncode == 1
    assert "lrlab: error: --dataset=tfds:nothing_here:" in proc.stderr
    assert "Traceback" not in proc.stderr
