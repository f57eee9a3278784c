"""model_scaling: the linear fit, the best rate per width, width parsing, and the command end to end."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lrlab.studies import model_scaling

FLAGFILE = pathlib.Path(__file__).parent.parent / "experiments" / "mack2018" / "model_scaling.flags"
TINY = ["--model=mlp", "--widths=0.25,0.5", "--lrs=0.001,0.01", "--max_steps=20", "--eval_every=10",
        "--eval_examples=250", "--batch_size=32", "--target_accuracy=0.5", "--noprogress"]  # mlp: quick to compile


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.model_scaling", *args]


def member(width, lr, steps, parameters=None, seconds=None):
    """A hand-made member record: reached when `steps` is given."""
    return {"width": width, "parameters": parameters or int(1000 * width), "learning_rate": lr,
            "status": "reached" if steps is not None else "exhausted", "steps_to_target": steps,
            "seconds_to_target": seconds if steps is not None else None}


def test_linear_fit_recovers_an_exact_line():
    n = np.array([3.2e6, 5.0e6, 7.2e6, 12.8e6, 30e6])
    fit = model_scaling.linear_fit(n, 4.5 + 2e-6 * n)
    assert fit["points"] == 5
    assert fit["c"] == pytest.approx(4.5, rel=1e-9) and fit["k"] == pytest.approx(2e-6, rel=1e-9)
    assert fit["r2"] == pytest.approx(1.0, abs=1e-12)


def test_linear_fit_of_noisy_data_has_r2_below_one():
    n = np.linspace(1e6, 3e7, 20)
    t = 10 + 1e-6 * n + np.random.default_rng(0).normal(0, 2.0, n.size)
    fit = model_scaling.linear_fit(n, t)
    assert 0.5 < fit["r2"] < 1.0
    assert fit["k"] == pytest.approx(1e-6, rel=0.2)
    residual = t - (fit["c"] + fit["k"] * n)
    assert fit["r2"] == pytest.approx(1 - np.sum(residual**2) / np.sum((t - t.mean()) ** 2))


@pytest.mark.parametrize("n,t", [([], []), ([1.0], [2.0]), ([1.0, 2.0], [3.0, 5.0]),
                                 ([5.0, 5.0, 5.0], [1.0, 2.0, 3.0])])
def test_linear_fit_is_null_with_too_few_points_or_one_size(n, t):
    assert model_scaling.linear_fit(n, t) == {"c": None, "k": None, "r2": None, "points": len(n)}


def test_linear_fit_of_constant_time_is_exact():
    fit = model_scaling.linear_fit([1e3, 2e3, 4e3], [50.0, 50.0, 50.0])
    assert fit["k"] == pytest.approx(0, abs=1e-12) and fit["c"] == pytest.approx(50.0) and fit["r2"] == 1.0


def test_best_rate_per_width_fewest_steps_ties_to_the_lower_rate():
    members = [
        member(1, 0.001, 300), member(1, 0.01, 200), member(1, 0.1, None),
        member(2, 0.001, 250), member(2, 0.01, 250), member(2, 0.1, 400),  # a tie: the lower rate wins
        member(4, 0.001, None), member(4, 0.01, None), member(4, 0.1, None),  # none reached
    ]
    best = model_scaling.best_rate_per_width(members[::-1])  # any order in, widths ascending out
    assert best == [
        {"width": 1, "parameters": 1000, "learning_rate": 0.01, "steps_to_target": 200},
        {"width": 2, "parameters": 2000, "learning_rate": 0.001, "steps_to_target": 250},
        {"width": 4, "parameters": 4000, "learning_rate": None, "steps_to_target": None},
    ]
    assert model_scaling.transfer(best) == {"distinct_best_rates": 2, "best_rates": [0.001, 0.01],
                                      "widths_without_a_best_rate": 1, "same_best_rate_at_every_width": False}
    assert model_scaling.transfer(best[:1])["same_best_rate_at_every_width"] is True


def test_rate_fits_use_only_the_widths_that_reached():
    members = [member(w, 0.01, 100 * w, parameters=1000 * w, seconds=2.0 + 0.5 * w) for w in (1, 2, 3, 4)]
    members += [member(w, 0.1, 50 if w < 3 else None, parameters=1000 * w, seconds=1.0) for w in (1, 2, 3, 4)]
    fits = model_scaling.rate_fits(members)
    assert [f["learning_rate"] for f in fits] == [0.01, 0.1]
    assert fits[0]["seconds"]["c"] == pytest.approx(2.0) and fits[0]["seconds"]["k"] == pytest.approx(5e-4)
    assert fits[0]["steps"]["k"] == pytest.approx(0.1) and fits[0]["steps"]["points"] == 4
    assert fits[1]["steps"] == {"c": None, "k": None, "r2": None, "points": 2}
    report = model_scaling.format_report(members, fits, model_scaling.best_rate_per_width(members),
                                   model_scaling.transfer(model_scaling.best_rate_per_width(members)), 50)
    assert "seconds: too few points (2); steps: too few points (2)" in report.splitlines()[-2]


def test_parse_widths():
    assert model_scaling.parse_widths(["2", "1", "0.5"]) == [0.5, 1.0, 2.0]
    assert len(model_scaling.STUDY_WIDTHS) == 36 and model_scaling.STUDY_WIDTHS[-1] == 9.75


@pytest.mark.parametrize("values,needle", [
    ([], "at least one"), (["1", "x"], "must be numbers"), (["1", "0"], "positive"), (["-2"], "positive"),
    (["inf"], "positive and finite"), (["1", "2", "1.0"], "1 given twice"),
])
def test_parse_widths_refuses(values, needle):
    with pytest.raises(ValueError, match=needle):
        model_scaling.parse_widths(values)


def test_study_flagfile_holds_the_study_sweep():
    settings = dict(line.split("=", 1) for line in FLAGFILE.read_text().splitlines() if line.startswith("--"))
    assert [float(w) for w in settings["--widths"].split(",")] == list(model_scaling.STUDY_WIDTHS)
    assert [float(lr) for lr in settings["--lrs"].split(",")] == list(model_scaling.STUDY_LRS)
    assert settings["--model"] == "tutorial_cnn" and settings["--target_accuracy"] == "0.96"


def test_tiny_model_scaling_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(command(f"--workdir={workdir}", *TINY), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "width   parameters" in proc.stdout and f"saved figure: {workdir / 'scaling.png'}" in proc.stdout
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["schema_version"] == 2 and summary["experiment"] == "model_scaling"
    assert summary["model"]["widths"] == [0.25, 0.5] and summary["optimizer"] == "adam"
    assert summary["flags"]["widths"] == ["0.25", "0.5"] and summary["flags"]["target_accuracy"] == 0.5
    assert [t["width"] for t in summary["timing"]] == [0.25, 0.5]
    members = summary["members"]
    assert [(m["width"], round(m["learning_rate"], 6)) for m in members] == [
        (0.25, 0.001), (0.25, 0.01), (0.5, 0.001), (0.5, 0.01)]
    params = dict(zip(summary["model"]["widths"], summary["model"]["parameters"]))
    assert params[0.25] < params[0.5] == 784 * 64 + 64 + 64 * 10 + 10  # hidden layer of 128 * 0.5 units
    for m in members:
        assert m["parameters"] == params[m["width"]]
        assert m["status"] in ("reached", "diverged", "exhausted")
        assert (m["steps_to_target"] is None) == (m["seconds_to_target"] is None) == (m["status"] != "reached")
        assert 0 <= m["final_train_accuracy"] <= 1 and 0 <= m["final_test_accuracy"] <= 1
    assert any(m["status"] == "reached" for m in members)
    for best in summary["best_rates"]:
        reached = [m for m in members if m["width"] == best["width"] and m["status"] == "reached"]
        assert best["steps_to_target"] == min((m["steps_to_target"] for m in reached), default=None)
    assert [f["learning_rate"] for f in summary["fits"]] == summary["learning_rates"]
    for fit in summary["fits"]:  # two widths: too few points for any fit
        assert fit["seconds"]["c"] is None and fit["steps"]["r2"] is None and fit["steps"]["points"] <= 2
    assert set(summary["transfer"]) == {"distinct_best_rates", "best_rates", "widths_without_a_best_rate",
                                        "same_best_rate_at_every_width"}
    assert (workdir / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "checkpoints" / "width-0.25" / "adam").is_dir()


BAD_FLAGS = {
    "--widths=1,1.0": "flag --widths=['1', '1.0']: width multiplier 1 given twice",
    "--widths=0.5,-1": "width multipliers must be positive and finite, got -1",
    "--optimizer=all": "model_scaling trains one optimizer",
    "--width=2": "flag --width=2.0: model_scaling sets the width from --widths",
    "--lrs=0.01,0.1,0.010": "learning rate 0.01 listed twice",
}


def test_bad_flags_fail_with_one_clear_line(tmp_path):
    workdirs = {flag: tmp_path / f"run{i}" for i, flag in enumerate(BAD_FLAGS)}
    procs = {flag: subprocess.Popen(command(*TINY, f"--workdir={workdirs[flag]}", flag), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for flag in BAD_FLAGS}  # concurrently: faster
    for flag, proc in procs.items():
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 1, (flag, stderr)
        assert BAD_FLAGS[flag] in stderr and "Traceback" not in stderr, (flag, stderr)
        assert not workdirs[flag].exists(), flag  # nothing written
