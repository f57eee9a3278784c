"""The techniques experiment end to end: a tiny run of four techniques (one population each, the
results tagged by technique), a rerun that prints the saved results, and bad flags refused in one
line before any work (the subprocesses start together: their start-ups overlap)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_together

TINY = ["--model=small_cnn", "--lrs=0.001,0.01", "--techniques=baseline,bfloat16,batch_norm,early_stopping",
        "--max_steps=20", "--eval_every=10", "--eval_examples=250", "--validation_examples=500", "--patience=1",
        "--batch_size=32", "--target_accuracy=0.9", "--noprogress"]
BAD = {
    "all": (["--optimizer=all"], "flag --optimizer=all: techniques trains one optimizer"),
    "dtype": (["--dtype=bfloat16"], "flag --dtype=bfloat16: set by --techniques in this experiment"),
    "mlp_bn": (["--model=mlp", "--techniques=baseline,batch_norm"], "--techniques=batch_norm needs a CNN"),
    "unknown": (["--techniques=baseline,fp8"], "unknown technique 'fp8'"),
}


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.techniques", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("techniques")
    commands = {"tiny": command(f"--workdir={root / 'tiny'}", *TINY)}
    commands.update({name: command(f"--workdir={root / name}", *args) for name, (args, _) in BAD.items()})
    return root, run_together(commands)


def test_tiny_run_trains_each_technique(runs):
    root, procs = runs
    proc, workdir = procs["tiny"], root / "tiny"
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((workdir / "results.json").read_text())
    names = ["baseline", "bfloat16", "batch_norm", "early_stopping"]
    assert summary["experiment"] == "techniques" and list(summary["techniques"]) == names
    members = {(m["technique"], m["learning_rate"]): m for m in summary["members"]}
    assert len(members) == 8 and set(summary["timing"]) == set(names)
    lrs = sorted({lr for _, lr in members})
    np.testing.assert_allclose(lrs, [0.001, 0.01], rtol=1e-6)
    for lr in lrs:
        base, bf16 = members[("baseline", lr)]["curve"]["loss"], members[("bfloat16", lr)]["curve"]["loss"]
        np.testing.assert_allclose(bf16[0], base[0], rtol=0.05)  # 16-bit compute tracks float32
        assert bf16 != base  # but is not the float32 program
        assert members[("batch_norm", lr)]["curve"]["loss"] != base
        assert members[("early_stopping", lr)]["status"] in ("reached", "exhausted", "stopped")
    assert (workdir / "techniques.png").stat().st_size > 10_000
    assert "steps to target per learning rate and technique" in proc.stdout
    rerun = subprocess.run(command(f"--workdir={workdir}", *TINY), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "already holds this run's results" in rerun.stdout
    assert "batch_norm" in rerun.stdout


@pytest.mark.parametrize("name", list(BAD))
def test_bad_flags_are_refused_in_one_line(runs, name):
    root, procs = runs
    proc = procs[name]
    assert proc.returncode == 1 and BAD[name][1] in proc.stderr.splitlines()[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (root / name).exists()
