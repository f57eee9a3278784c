"""random_search / bayes_search: sampling, --search parsing, the objective's ordering, Optuna rounds
(within bounds, reproducible from the seed, concentrating on a synthetic valley) with training
replaced by a synthetic one, and one tiny bayes_search end to end (rerun: the saved results)."""

import importlib.util
import json
import math
import subprocess
import sys
import types

import numpy as np
import pytest

from lrlab.engine import loop
from lrlab.optim import optimizers
from lrlab.store import ranking
from lrlab.store.workdir import Workdir
from lrlab.task.target import Target
from lrlab.training import search
from lrlab.training import settings as settings_lib

BUDGET = loop.Budget(max_steps=1000, eval_every=10)
TARGET = Target("accuracy", 0.97)
TASK = types.SimpleNamespace(target=TARGET, target_key="train_accuracy")  # what the searches read of a task
LR = (1e-6, 100.0, True)
ADAM = optimizers.get("adam")
# Optuna is a dependency, but an image without it (the GPU machine's) still runs the rest of the suite.
needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="Optuna is not installed")


def test_sample_random_reproducible_within_bounds_log_uniform():
    ranges = search.parse_ranges(["learning_rate:1e-6:100", "b1:0.8:0.99"], ADAM)
    s = search.sample_random(ranges, 4000, seed=0)
    assert all(v.dtype == np.float32 and v.shape == (4000,) for v in s.values())
    np.testing.assert_array_equal(s["learning_rate"], search.sample_random(ranges, 4000, seed=0)["learning_rate"])
    assert not np.array_equal(s["learning_rate"], search.sample_random(ranges, 4000, seed=1)["learning_rate"])
    assert s["learning_rate"].min() >= np.float32(1e-6) and s["learning_rate"].max() <= np.float32(100)
    assert s["b1"].min() >= np.float32(0.8) and s["b1"].max() <= np.float32(0.99)
    per_decade = np.histogram(np.log10(s["learning_rate"]), bins=8, range=(-6, 2))[0] / 4000
    np.testing.assert_allclose(per_decade, 1 / 8, atol=0.03)  # log-uniform: every decade alike
    assert abs(np.mean(s["b1"]) - 0.895) < 0.01  # linear: uniform on [0.8, 0.99]
    # each hyperparameter its own stream: adding b1 to the search keeps the learning rates
    lr_only = search.sample_random({"learning_rate": LR}, 4000, seed=0)
    np.testing.assert_array_equal(lr_only["learning_rate"], s["learning_rate"])


def test_parse_ranges_scales():
    assert search.parse_ranges(["learning_rate:1e-5:1", "momentum:0.5:0.99"], optimizers.get("momentum")) == {
        "learning_rate": (1e-5, 1.0, True), "momentum": (0.5, 0.99, False)}
    assert search.parse_ranges(["learning_rate:1e-6:1:linear", "eps:1e-9:1e-6", "b2:0.9:0.9999:log"], ADAM) == {
        "learning_rate": (1e-6, 1.0, False), "eps": (1e-9, 1e-6, True), "b2": (0.9, 0.9999, True)}


@pytest.mark.parametrize("entries, optimizer, message", [
    (["learning_rate:1e-5:1", "momentum:0.1:0.9"], "adam", "adam has no hyperparameter 'momentum'"),
    (["learning_rate:1:0.1"], "adam", "need finite LOW < HIGH"),
    (["learning_rate:0:1"], "adam", "log-scale range needs LOW > 0"),
    (["learning_rate:1e-5:1", "b1:0.5:1.5"], "adam", "b1 must be finite and in [0, 1), got 1.5"),
    (["learning_rate:0:1:linear"], "adam", "learning_rate must be finite and in (0, inf], got 0"),
    (["learning_rate:1e-5:1:cubic"], "adam", "scale must be log or linear"),
    (["learning_rate:1e-5"], "adam", "is not NAME:LOW:HIGH"),
    (["learning_rate:a:1"], "adam", "must be numbers"),
    (["learning_rate:1e-5:1", "learning_rate:1e-4:1"], "adam", "given twice"),
    (["b1:0.8:0.99"], "adam", "must include learning_rate"),
])
def test_parse_ranges_errors(entries, optimizer, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        search.parse_ranges(entries, optimizers.get(optimizer))


def record(status, steps=None, curve=(), lr=1e-3):
    return {"learning_rate": lr, "hyperparameters": {"learning_rate": lr}, "status": status,
            "steps_to_target": steps, "steps_trained": steps or BUDGET.max_steps, "final_test_accuracy": 0.5,
            "final_train_accuracy": curve[-1] if curve else float("nan"), "curve": {"train_accuracy": list(curve)}}


def test_objective_ordering():
    ranked = [record("reached", 200), record("reached", 1000), record("exhausted", curve=[0.5, 0.96, 0.9]),
              record("pruned", curve=[0.8]), record("exhausted", curve=[0.1]),
              record("diverged", curve=[0.97 - 1e-6, float("nan")])]
    values = [ranking.objective(r, BUDGET.max_steps, TARGET, "train_accuracy") for r in ranked]
    assert values == sorted(values) and len(set(values)) == len(values), values
    assert values[:2] == [200.0, 1000.0]
    assert values[2] == pytest.approx(1000 * (1 + 0.97 - 0.96))  # ranked by the best accuracy, not the last


def synthetic_sweep(calls):
    """Stands in for sweep.run_sweep: a valley around lr 1e-3 (steps 100 + 300 per decade away),
    exhausted beyond a decade (accuracy falling), diverged above lr 3."""
    def run_sweep(task, populations, settings, scope=None, stop=None):
        (members,) = populations
        optimizer, hparams_K = members.name, members.hparams
        calls.append({"hparams": hparams_K, "scope": scope.parts})
        records = []
        for i, lr in enumerate(hparams_K["learning_rate"]):
            d = abs(math.log10(lr) + 3)
            status = "diverged" if lr > 3 else "reached" if d < 1 else "exhausted"
            steps = int(10 * round((100 + 300 * d) / 10)) if status == "reached" else None
            records.append({"optimizer": optimizer, "learning_rate": float(lr), "status": status,
                            "hyperparameters": {k: float(v[i]) for k, v in hparams_K.items()},
                            "steps_to_target": steps, "steps_trained": steps or settings.budget.max_steps,
                            "final_train_accuracy": 0.97 - 0.1 * d, "final_test_accuracy": 0.9, "curve": {}})
        return records, {optimizer: {"compile_seconds": 0.0, "train_seconds": 0.0}}
    return run_sweep


SETTINGS = settings_lib.SweepSettings(budget=BUDGET)


@needs_optuna
def test_propose_within_bounds_and_reproducible():
    ranges = {"learning_rate": LR, "b1": (0.8, 0.99, False)}

    def second_round(seed):
        study = search.make_study(seed, n_startup=8)
        trials, first = search.propose(study, ranges, 8)
        for trial, lr in zip(trials, first["learning_rate"]):
            study.tell(trial, 100 + 300 * abs(math.log10(lr) + 3))
        trials, values = search.propose(study, ranges, 8)
        assert all(t.params["learning_rate"] == pytest.approx(v, rel=1e-6)
                   for t, v in zip(trials, values["learning_rate"]))
        return values

    a, b, c = second_round(0), second_round(0), second_round(1)
    for name, (low, high, _) in ranges.items():
        assert a[name].dtype == np.float32 and a[name].shape == (8,)
        assert np.all(a[name] >= np.float32(low)) and np.all(a[name] <= np.float32(high))
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])
        assert len(set(a[name].tolist())) == 8  # constant liar: a batch does not repeat itself


@needs_optuna
def test_bayes_search_rounds(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(search, "run_sweep", synthetic_sweep(calls))
    ranges = {"learning_rate": LR}
    run = lambda seed: search.train_bayes(TASK, "adam", ranges, 4, 8, SETTINGS, seed, overrides={"b2": 0.99},
                                           scope=Workdir(tmp_path, "bayes_search").scope())
    result = run(0)
    assert [c["scope"] for c in calls] == [(f"round-{r}",) for r in range(4)]
    assert all(np.all(c["hparams"]["b2"] == np.float32(0.99)) for c in calls)
    assert [t["round"] for t in result.trials] == [r for r in range(4) for _ in range(8)]
    assert [t["optuna_trial"] for t in result.trials] == list(range(32))
    assert result.total_model_steps == sum(t["steps_trained"] for t in result.trials)
    assert [e["cumulative_model_steps"] for e in result.rounds] == list(
        np.cumsum([sum(t["steps_trained"] for t in result.trials[8 * r: 8 * r + 8]) for r in range(4)]))
    incumbents = [e["incumbent_objective"] for e in result.rounds]
    assert incumbents == sorted(incumbents, reverse=True) and incumbents[-1] == result.best["objective"]
    assert result.best == min(result.trials, key=lambda t: t["objective"])
    # TPE concentrates: the later rounds' candidates lie nearer the valley's floor than the random first
    distance = lambda r: np.median([abs(math.log10(t["learning_rate"]) + 3) for t in result.trials if t["round"] == r])
    assert distance(3) < distance(0) / 2, [distance(r) for r in range(4)]
    again, other = run(0), run(1)
    assert again.trials == result.trials and other.trials != result.trials
    trace = result.to_json()["trace"]
    assert trace[-1]["cumulative_model_steps"] == result.total_model_steps and len(trace) == 32


def test_random_search_one_population(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(search, "run_sweep", synthetic_sweep(calls))
    ranges = {"learning_rate": LR, "b1": (0.8, 0.99, False)}
    result = search.train_random(TASK, "adam", ranges, 12, SETTINGS, seed=3,
                                  scope=Workdir(tmp_path, "random_search").scope())
    (call,) = calls
    sampled = search.sample_random(ranges, 12, 3)
    np.testing.assert_array_equal(call["hparams"]["learning_rate"], sampled["learning_rate"])
    np.testing.assert_array_equal(call["hparams"]["b1"], sampled["b1"])
    assert np.all(call["hparams"]["b2"] == np.float32(0.999))  # not searched: the default
    assert call["scope"] == ("round-0",)
    assert len(result.rounds) == 1 and result.rounds[0]["cumulative_model_steps"] == result.total_model_steps


TINY = ["--model=mlp", "--rounds=2", "--batch=4", "--max_steps=30", "--eval_every=10", "--eval_examples=250",
        "--batch_size=32", "--target_accuracy=0.6", "--norepack", "--noprogress"]


def command(*args, experiment="bayes_search"):
    return [sys.executable, "-m", f"lrlab.experiments.{experiment}", *args]


@needs_optuna
def test_bayes_search_end_to_end_and_bad_flags(tmp_path):
    """A tiny run (and, beside it, a bad --search refused in one line before any work), then the
    same command again: it prints the saved results without training."""
    workdir = tmp_path / "bayes"
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, cmd in {
        "run": command(f"--workdir={workdir}", *TINY),
        "bad": command("--search=learning_rate:1e-5:1,momentum:0.1:0.9", f"--workdir={tmp_path / 'bad'}",
                       experiment="random_search"),
    }.items()}
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    done = {name: (procs[name].returncode, *outputs[name]) for name in procs}
    code, out, err = done["bad"]
    assert code == 1 and err.startswith("FATAL Flags parsing error") and (
        "--search: 'momentum:0.1:0.9': adam has no hyperparameter 'momentum'" in err.splitlines()[0]), err
    assert not (tmp_path / "bad").exists()  # refused before any work
    code, out, err = done["run"]
    assert code == 0, err
    summary = json.loads((workdir / "results.json").read_text())
    assert summary["experiment"] == "bayes_search" and summary["search"]["ranges"] == {
        "learning_rate": {"low": 1e-6, "high": 100.0, "scale": "log"}}
    trials = summary["trials"]
    assert [t["round"] for t in trials] == [0] * 4 + [1] * 4
    assert all(1e-6 <= t["learning_rate"] <= 100 and t["status"] in ("reached", "exhausted", "diverged")
               for t in trials)
    assert summary["total_model_steps"] == sum(t["steps_trained"] for t in trials) > 0
    assert summary["rounds"][-1]["cumulative_model_steps"] == summary["total_model_steps"]
    assert summary["best"]["objective"] == min(t["objective"] for t in trials)
    assert (workdir / "search.png").stat().st_size > 10_000 and "best: learning rate" in out
    import optuna  # the run's Optuna study is bayes_search's own: each trial once, as told

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert [(t.number, t.value) for t in study.trials] == [(t["optuna_trial"], t["objective"]) for t in trials]
    assert (workdir / "members.csv").read_text().count("\n") == 1 + len(trials)
    rerun = subprocess.run(command(f"--workdir={workdir}", *TINY), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already holds this run's results" in rerun.stdout and "round 1/2" not in rerun.stdout
    lines = rerun.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert f"{summary['best']['learning_rate']:.4g}" in lines[header + 1]  # rank 1 row
