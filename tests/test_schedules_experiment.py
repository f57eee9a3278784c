"""The schedules experiment: its summaries and figure on toy records (in process), one tiny run end to
end, and bad --schedules refused in one line (the subprocesses start together: their start-ups overlap)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_together

from lrlab.store import plots, valleys

TINY = ["--model=mlp", "--lrs=0.0001,0.001,0.01", "--schedules=constant,step", "--max_steps=40", "--eval_every=10",
        "--decay_steps=20", "--eval_examples=250", "--batch_size=32", "--target_accuracy=0.6", "--noprogress"]


def member(schedule, lr, status, steps=None):
    return {"schedule": schedule, "optimizer": "adam", "learning_rate": lr, "status": status,
            "steps_to_target": steps, "examples_to_target": steps and steps * 100,
            "seconds_to_target": steps and steps / 10}


# constant: a band 0.001..0.1 with a hole at 0.01; step: a wider band 0.0001..0.1, faster best at
# 0.01 (tied in steps with 0.1: the lower rate wins); none: nothing reached.
TOY = [
    member("constant", 1e-4, "exhausted"), member("constant", 1e-3, "reached", 400),
    member("constant", 1e-2, "exhausted"), member("constant", 1e-1, "reached", 300),
    member("constant", 1.0, "diverged"),
    member("step", 1e-4, "reached", 900), member("step", 1e-3, "reached", 300),
    member("step", 1e-2, "reached", 200), member("step", 1e-1, "reached", 200),
    member("step", 1.0, "exhausted"),
    member("none", 1e-4, "exhausted"), member("none", 1.0, "diverged"),
]


def test_summaries_find_best_rate_and_band_with_its_gaps():
    s = valleys.valley_summaries(TOY, "schedule")
    assert list(s) == ["constant", "step", "none"]
    assert s["constant"]["best"] == {"learning_rate": 0.1, "steps_to_target": 300, "examples_to_target": 30000,
                                     "seconds_to_target": 30.0}
    assert s["constant"]["band"]["low"] == 1e-3 and s["constant"]["band"]["high"] == 0.1
    assert s["constant"]["band"]["reached"] == 2 and s["constant"]["band"]["rates_in_band"] == 3  # the hole
    assert s["constant"]["statuses"] == {"exhausted": 2, "reached": 2, "diverged": 1}
    assert s["step"]["best"]["learning_rate"] == 0.01  # tie in steps: the lower rate
    assert s["step"]["band"]["reached"] == 4 == s["step"]["band"]["rates_in_band"]
    np.testing.assert_allclose(s["step"]["band"]["decades"], 3.0)
    assert s["none"]["best"] is None and s["none"]["band"] is None
    table = valleys.summaries_table(s, "schedule", 25).splitlines()
    assert table[1].split()[:6] == ["constant", "2", "1", "2", "0", "0.1"] and table[1].split()[-1] == "2/3"
    assert table[3].split()[:5] == ["none", "0", "1", "1", "0"] and table[3].split()[5:] == ["-"] * 8
    matrix = valleys.valley_matrix(TOY, "schedule").splitlines()
    assert matrix[0].split() == ["lr", "constant", "step", "none"]
    assert matrix[3].split() == ["0.01", "exhausted", "200"]  # "none" has no member at 0.01: blank
    assert matrix[5].split() == ["1", "diverged", "exhausted", "diverged"]


def test_figure_overlays_the_valleys(tmp_path):
    path = tmp_path / "schedules.png"
    plots.valleys_overlaid(TOY, path, field="schedule", budget_steps=1500, eval_every=25, title="toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.schedules", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run end to end and the bad flags, all started at once."""
    root = tmp_path_factory.mktemp("schedules")
    commands = {
        "tiny": command(f"--workdir={root / 'tiny'}", *TINY),
        "unknown": command("--schedules=constant,onecycle", f"--workdir={root / 'unknown'}", *TINY[:1]),
        "twice": command("--schedules=step,constant,step", f"--workdir={root / 'twice'}", *TINY[:1]),
    }
    return root, run_together(commands)


def test_tiny_run_trains_each_schedule(runs):
    root, procs = runs
    proc, workdir = procs["tiny"], root / "tiny"
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "schedules.png").stat().st_size > 10_000
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["experiment"] == "schedules" and list(summary["schedules"]) == ["constant", "step"]
    assert summary["schedules"]["constant"]["spec"] is None  # the plain optimizer
    spec = summary["schedules"]["step"]["spec"]
    assert (spec["name"], spec["decay_steps"], spec["total_steps"]) == ("step", 20, 40)
    members = {(m["schedule"], m["learning_rate"]): m for m in summary["members"]}
    assert len(members) == 6 and len(summary["members"]) == 6
    # The schedule reaches the engine: a member still running after step 20 trains the same as the
    # constant one until the first decay (after step 20), and differently after it.
    slow = [lr for (s, lr), m in members.items() if s == "constant" and m["steps_trained"] == 40]
    assert slow, "a rate must still be training at step 40 to see the decay"
    const, step = members[("constant", slow[0])]["curve"]["loss"], members[("step", slow[0])]["curve"]["loss"]
    np.testing.assert_allclose(step[:2], const[:2], rtol=1e-5)
    assert abs(step[-1] - const[-1]) > 1e-4 * abs(const[-1])
    for name, s in summary["schedules"].items():
        rows = [m for m in summary["members"] if m["schedule"] == name]
        assert s["summary"] == valleys.valley_summary(rows)
    table = [line.split() for line in proc.stdout.splitlines()]
    header = next(i for i, row in enumerate(table) if row[:3] == ["schedule", "reached", "diverged"])
    assert [row[0] for row in table[header + 1:header + 3]] == ["constant", "step"]
    rerun = subprocess.run(command(f"--workdir={workdir}", *TINY), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "already holds this run's results" in rerun.stdout
    assert "band low" in rerun.stdout


@pytest.mark.parametrize("name,message", [
    ("unknown", "flag --schedules=['constant', 'onecycle']: unknown schedule 'onecycle': choose from constant, "
                "step, exponential, cosine_restarts, one_cycle"),
    ("twice", "flag --schedules=['step', 'constant', 'step']: schedule listed twice: step"),
])
def test_bad_schedules_are_refused_in_one_line(runs, name, message):
    root, procs = runs
    proc = procs[name]
    assert proc.returncode == 1 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (root / name).exists()
