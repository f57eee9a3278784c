"""optimizer_comparison: tiny runs end to end (with --lrs, and from a hand-written valley), its pure
functions (best rate per optimizer, instability, --lrs parsing), and bad input refused in one line.

The subprocesses of each group start together, so the two cores overlap their start-up and compilation.
"""

import json
import math
import re
import sys

import pytest
from conftest import run_together

from lrlab.experiments.optimizer_comparison import parse_rate_pairs
from lrlab.store import ranking, records
from lrlab.studies import optimizer_comparison
from lrlab.task.target import Target

TARGET = Target("accuracy", 0.6)

TINY = ["--model=mlp", "--max_steps=40", "--eval_every=10", "--eval_examples=250", "--test_examples=250",
        "--batch_size=32", "--target_accuracy=0.6", "--noprogress"]


def member(optimizer, lr, status, steps=None):
    """A member record as lr_valley writes it (the fields optimizer_comparison reads, and a curve)."""
    return {"optimizer": optimizer, "learning_rate": lr, "hyperparameters": {"learning_rate": lr}, "status": status,
            "steps_to_target": steps, "examples_to_target": steps and steps * 100,
            "seconds_to_target": steps and steps / 100, "steps_trained": steps or 3000,
            "final_train_accuracy": 0.9, "final_test_accuracy": 0.9, "curve": {}}


# Known best rates: adam 0.003 (200 steps, tied with 0.01: the lower rate), sgd 0.1 (fewer steps
# than the lower 0.05); momentum reached nothing, so it is skipped.
VALLEY_MEMBERS = [
    member("adam", 0.001, "reached", 300), member("adam", 0.003, "reached", 200),
    member("adam", 0.01, "reached", 200), member("adam", 1.0, "diverged"),
    member("sgd", 0.05, "reached", 400), member("sgd", 0.1, "reached", 300), member("sgd", 1e-5, "exhausted"),
    member("momentum", 0.1, "exhausted"), member("momentum", 10.0, "diverged"),
]
VALLEY = {"schema_version": 1, "experiment": "lr_valley", "steps_to_target_resolution": 50,
          "members": VALLEY_MEMBERS}


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.optimizer_comparison", *args]


def write_valley(folder, summary=VALLEY):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run with --lrs (the whole budget) and one from the hand-written valley (--stop_at_target,
    adam and momentum only: momentum reached nothing there)."""
    root = tmp_path_factory.mktemp("comparison")
    valley = write_valley(root / "valley")
    procs = run_together({
        "lrs": command("--lrs=adam:0.003,sgd:0.1", f"--workdir={root / 'lrs'}", *TINY),
        "valley": command(f"--from_valley={valley}", "--optimizer=adam,momentum", "--stop_at_target",
                          f"--workdir={root / 'from_valley'}", *TINY),
    })
    return root, procs


def test_lrs_end_to_end(runs):
    root, procs = runs
    proc, workdir = procs["lrs"], root / "lrs"
    assert proc.returncode == 0, proc.stderr
    assert "steps to 60%" in proc.stdout and f"saved results: {workdir / 'results.json'}" in proc.stdout
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["schema_version"] == 2 and summary["experiment"] == "optimizer_comparison"
    assert summary["flags"]["lrs"] == ["adam:0.003", "sgd:0.1"] and summary["test_examples"] == 250
    assert set(summary["timing"]) == {"adam", "sgd"} and summary["timing"]["adam"]["test_curve_seconds"] > 0
    entries = summary["optimizers"]
    assert list(entries) == ["adam", "sgd"]
    assert entries["adam"]["learning_rate"] == 0.003 and entries["sgd"]["learning_rate"] == 0.1
    for e in entries.values():
        assert e["lr_source"] == {"from": "lrs"}
        curve, train = e["test_curve"], e["train_curve"]
        assert curve["step"] == [10, 20, 30, 40]  # the whole budget, every --eval_every steps
        assert curve["seconds"] == train["seconds"] == sorted(curve["seconds"])  # the training clock
        assert all(0 <= acc <= 1 for acc in curve["test_accuracy"])
        assert 0 <= e["final_test_accuracy"] <= 1 and e["final_test_subset_accuracy"] == curve["test_accuracy"][-1]
        at = optimizer_comparison.first_at_target(train["train_accuracy"], TARGET)
        assert e["status"] == ("exhausted" if at is None else "reached")
        assert e["steps_to_target"] == (None if at is None else train["step"][at])
        assert e["seconds_to_target"] == (None if at is None else train["seconds"][at])
        drops, largest = optimizer_comparison.drops(curve["test_accuracy"], 0.01)
        assert e["instability"] == {"drops": drops, "largest_drop": largest, "threshold": 0.01}


def test_from_valley_takes_each_optimizers_best_rate(runs):
    root, procs = runs
    proc, workdir = procs["valley"], root / "from_valley"
    assert proc.returncode == 0, proc.stderr
    assert "skipping momentum: no learning rate reached the target in the valley" in proc.stdout
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["skipped"] == {"momentum": "no learning rate reached the target in the valley"}
    entries = summary["optimizers"]
    assert list(entries) == ["adam"] and entries["adam"]["learning_rate"] == 0.003  # the tie's lower rate
    assert entries["adam"]["lr_source"] == {"from": "valley", "path": str(root / "valley" / "results.json"),
                                            "steps_to_target": 200, "seconds_to_target": 2.0}
    e = entries["adam"]  # --stop_at_target: the curve ends at the target (reached at 10 or 20 steps)
    assert e["status"] == "reached" and e["test_curve"]["step"][-1] == e["steps_to_target"] == e["steps_trained"]


def test_best_rates_and_read_valley(tmp_path):
    path, members = records.read_valley(write_valley(tmp_path / "valley"))
    assert path == tmp_path / "valley" / "results.json" and members == VALLEY_MEMBERS
    assert records.read_valley(path)[1] == VALLEY_MEMBERS
    best = ranking.best_rates(members, ["sgd", "adam", "momentum"])
    assert list(best) == ["sgd", "adam", "momentum"]
    assert best["adam"]["learning_rate"] == 0.003 and best["sgd"]["learning_rate"] == 0.1 and best["momentum"] is None


def test_read_valley_refuses_what_lr_valley_did_not_write(tmp_path):
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1]")
    write_valley(tmp_path / "no_members", {**VALLEY, "members": [{"optimizer": "adam"}]})
    for path, needle in [(tmp_path / "nothing.json", "no such file"), (tmp_path, "no results.json in that folder"),
                         (tmp_path / "garbage.json", "garbage.json is unreadable (JSONDecodeError"),
                         (tmp_path / "list.json", "not lr_valley's results of schema version 1 or 2 (a JSON list)"),
                         (tmp_path / "no_members", "its members lack some of")]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            records.read_valley(path)


def test_accuracy_drops_counts_evaluations_below_the_best_so_far():
    accuracy = [0.5, 0.9, 0.885, 0.95, 0.93, 0.7, 0.96, 0.955, 0.945]
    # best before each: -, 0.5, 0.9, 0.9, 0.95, 0.95, 0.95, 0.96, 0.96 -> drops 0.015, 0.02, 0.25, 0.015
    drops, largest = optimizer_comparison.drops(accuracy, 0.01)
    assert drops == 4 and largest == pytest.approx(0.25)
    assert optimizer_comparison.drops(accuracy, 0.1) == (1, pytest.approx(0.25))
    assert optimizer_comparison.drops([0.1, 0.5, 0.9], 0.01) == (0, 0.0)
    assert optimizer_comparison.drops([], 0.01) == (0, 0.0)


def test_comparison_entry_keeps_steps_to_target_of_a_member_that_diverged_after():
    record = {**member("adam", 0.01, "diverged"), "steps_trained": 35,
              "curve": {"step": [10, 20, 30, 35], "train_accuracy": [0.5, 0.97, 0.98, 0.4], "loss": [1, 1, 1, 9],
                        "seconds": [1.0, 2.0, 3.0, 3.5], "test_accuracy": [0.5, 0.96, 0.97, 0.3]}}
    e = optimizer_comparison.comparison_entry(record, {"from": "lrs"}, Target("accuracy", 0.97), "train_accuracy", 0.01, 100)
    assert e["status"] == "diverged" and e["steps_to_target"] == 20 and e["examples_to_target"] == 2000
    assert e["seconds_to_target"] == 2.0 and e["instability"]["drops"] == 1
    assert e["test_curve"] == {"step": [10, 20, 30, 35], "seconds": [1.0, 2.0, 3.0, 3.5],
                               "test_accuracy": [0.5, 0.96, 0.97, 0.3]}
    assert math.isclose(e["instability"]["largest_drop"], 0.67)


def test_parse_rate_pairs():
    assert parse_rate_pairs(["adam:0.001", " sgd : 1e-1"]) == {"adam": 0.001, "sgd": 0.1}


@pytest.mark.parametrize("entries,needle", [
    (["adam"], "is not OPTIMIZER:RATE"),
    (["adamw:0.1"], "unknown optimizer 'adamw'"),
    (["adam:0"], "must be positive"),
    (["adam:-1"], "must be positive"),
    (["adam:inf"], "must be positive and finite"),
    (["adam:abc"], "'abc' is not a number"),
    (["adam:0.1", "adam:0.2"], "adam given twice"),
    ([], "no OPTIMIZER:RATE pairs"),
])
def test_parse_rate_pairs_refuses(entries, needle):
    with pytest.raises(ValueError, match=needle):
        parse_rate_pairs(entries)


BAD = {
    "both": (["--lrs=adam:0.1", "--from_valley={valley}"], "--from_valley and --lrs are mutually exclusive"),
    "neither": ([], "give --from_valley=PATH"),
    "wrong schema": (["--from_valley={tmp}/other"], "is not lr_valley's results of schema version 1 or 2"),
    "none reached": (["--from_valley={tmp}/unreached"], "reached the target there: nothing to compare"),
    "optimizer absent": (["--from_valley={valley}", "--optimizer=rmsprop"], "--optimizer=rmsprop: rmsprop not in"),
    "bad lrs": (["--lrs=adam:0.1,sgd:fast"], "--lrs: 'sgd:fast': the rate 'fast' is not a number"),
}


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    valley = write_valley(tmp / "valley")
    write_valley(tmp / "other", {**VALLEY, "experiment": "optimizer_comparison"})
    write_valley(tmp / "unreached", {**VALLEY, "members": [member("adam", 0.1, "exhausted")]})
    procs = run_together({
        name: command(*[a.format(tmp=tmp, valley=valley) for a in args], f"--workdir={tmp / name / 'run'}", *TINY)
        for name, (args, _) in BAD.items()})
    return tmp, procs


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_with_one_line(bad_runs, case):
    tmp, procs = bad_runs
    proc = procs[case]
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrlab: error: ") and BAD[case][1] in lines[0], proc.stderr
    assert not (tmp / case).exists()  # nothing written
