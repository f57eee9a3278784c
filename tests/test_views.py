"""The views of a run for other tools, read back with the tools' own readers: the Optuna
study with optuna.load_study, the TensorBoard runs with tensorboard's event reader, members.csv with
pandas.read_csv, each checked against results.json; a rerun leaves one trial per member; the
storage URL is checked before any work."""

import json
import math
import subprocess
import sys

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import image_task
from tensorboard.backend.event_processing import event_accumulator

import lrlab
from lrlab.engine import population
from lrlab.store import views
from lrlab.store.workdir import MEMBERS_CSV, OPTUNA_DB, TENSORBOARD, Workdir
from lrlab.task import models
from lrlab.training import search

# sgd on an MLP: 0.1 reaches 80% in 20 steps, 1 misses (exhausted), 1e30 diverges, 0.001 and 0.01
# are pruned at the rung of 30 steps (successive halving, eta 3).
RATES = [0.001, 0.01, 0.1, 1.0, 1e30]
SETTINGS = dict(budget=lrlab.Budget(60, None, 10), batch_size=32, eval_examples=200, progress=False,
                prune=lrlab.PruneSpec(30, 3))
STATE = {"reached": "COMPLETE", "exhausted": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL"}


def valley(workdir, **view_options):
    task = image_task(models.make_model("mlp"), target=0.8)
    settings = lrlab.SweepSettings(**SETTINGS, views=views.Views(**view_options))
    return lrlab.lr_valley(task, lrlab.grid("sgd", learning_rate=RATES), settings, workdir=workdir)


def cli(*args):
    return [sys.executable, "-m", "lrlab.experiments.lr_valley", "--num_lrs=2", "--max_steps=20", "--eval_every=10",
            "--noprogress", *args]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny valley with every view (and, started beside it, two commands with a bad storage)."""
    tmp = tmp_path_factory.mktemp("views")
    bad = {name: subprocess.Popen(cli(f"--optuna_storage={url}", f"--workdir={tmp / name}"), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name, url in {"malformed": "postgres ql://x", "missing": f"sqlite:///{tmp}/no/such/folder/x.db"}.items()}
    result = valley(tmp / "run", tensorboard=True)
    return tmp, result, {name: (p.wait(timeout=300), *p.communicate()) for name, p in bad.items()}


def test_every_status_has_a_trial_state():
    assert set(population.STATUS_NAMES) - {"padding"} <= set(views.TRIAL_STATES)
    assert views.TRIAL_STATES["retired"] == "PRUNED" and views.TRIAL_STATES["diverged"] == "FAIL"


def test_the_optuna_study_is_the_run(run):
    tmp, result, _ = run
    summary = json.loads((tmp / "run" / "results.json").read_text())
    records = summary["members"]
    assert [r["status"] for r in records] == ["pruned", "pruned", "reached", "exhausted", "diverged"]
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp / 'run' / OPTUNA_DB}")
    assert summary["views"]["optuna"]["study_name"] == study.study_name and study.direction.name == "MINIMIZE"
    assert len(study.trials) == len(records)
    budget = SETTINGS["budget"].max_steps
    for trial, r in zip(study.trials, records):
        assert trial.state.name == STATE[r["status"]]
        assert trial.params == {"optimizer": "sgd", "learning_rate": r["learning_rate"]}
        assert trial.distributions["learning_rate"].log  # the rates are log-spaced
        assert trial.user_attrs["status"] == r["status"] and trial.user_attrs["name"].startswith("sgd/learning_rate=")
        curve = r["curve"]
        assert trial.intermediate_values == {s: v for s, v in zip(curve["step"], curve["train_accuracy"])
                                             if v is not None}
        if r["status"] == "reached":
            assert trial.value == r["steps_to_target"] == 20
        elif r["status"] == "diverged":
            assert trial.value is None
        else:  # a miss sorts after every reached member, closer to the target first
            assert trial.value == pytest.approx(budget * (1 + 0.8 - max(curve["train_accuracy"])))
    assert study.best_trial.params["learning_rate"] == result.best()["learning_rate"]


def test_tensorboard_runs_hold_each_members_curves(run):
    tmp, result, _ = run
    names = views.member_names(result.records)
    assert sorted(p.relative_to(tmp / "run" / TENSORBOARD).as_posix() for p in (tmp / "run" / TENSORBOARD).glob(
        "*/*")) == sorted(names) and names[2] == "sgd/learning_rate=0.1"
    for r, name in zip(result.records, names):
        events = event_accumulator.EventAccumulator(str(tmp / "run" / TENSORBOARD / name))
        events.Reload()
        ok = lambda v: v is not None and math.isfinite(v)  # NaN: none, as in results.json
        finite = {k for k in ("loss", "train_accuracy", "train_loss") if any(map(ok, r["curve"][k]))}
        assert set(events.Tags()["scalars"]) == {"learning_rate"} | finite and "train_accuracy" in finite
        for tag in ("loss", "train_accuracy"):
            kept = [(s, v) for s, v in zip(r["curve"]["step"], r["curve"][tag]) if ok(v)]
            assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)] == kept
        np.testing.assert_allclose([e.value for e in events.Scalars("learning_rate")], r["learning_rate"], rtol=1e-6)


def test_members_csv_reads_as_the_records(run):
    tmp, result, _ = run
    table = pd.read_csv(tmp / "run" / MEMBERS_CSV)
    assert len(table) == len(result.records)
    for column in ("optimizer", "group", "status"):
        assert table[column].tolist() == [r[column] for r in result.records]
    for column in ("learning_rate", "steps_to_target", "steps_trained", "final_train_accuracy",
                   "final_test_loss"):
        expected = [r.get(column, r["hyperparameters"].get(column)) for r in result.records]
        np.testing.assert_array_equal(table[column].to_numpy(np.float64),
                                      [np.nan if v is None else v for v in expected])
    assert "curve" not in table and table["steps_trained"].dtype == np.int64


def test_a_rerun_leaves_one_trial_per_member(run, tmp_path):
    """Lost results.json after the views were written: the rerun restores the populations and writes
    the views again, replacing them (the run's SQLite file, or its study in a shared database)."""
    tmp, result, _ = run
    shared = f"sqlite:///{tmp_path / 'all.db'}"
    for storage in ("workdir", shared, shared):
        (tmp / "run" / "results.json").unlink()
        again = valley(tmp / "run", optuna_storage=storage)
        outcome = lambda records: [(r["learning_rate"], r["status"], r["steps_to_target"]) for r in records]
        assert outcome(again.records) == outcome(result.records)
    for url in (f"sqlite:///{tmp / 'run' / OPTUNA_DB}", shared):
        (summary,) = optuna.get_all_study_summaries(url)
        assert summary.n_trials == len(RATES), url


def test_a_bad_storage_fails_in_one_line_before_any_work(run):
    tmp, _, done = run
    for name, reason in {"malformed": "not a database URL", "missing": "no folder"}.items():
        code, out, err = done[name]
        assert code == 1 and err.startswith("FATAL Flags parsing error: flag --optuna_storage=") and reason in err, err
        assert "Traceback" not in err and not (tmp / name).exists()  # absl's second line: --helpshort
    with pytest.raises(ValueError, match="in-memory SQLite"):
        views.Views(optuna_storage="sqlite://")
    with pytest.raises(OSError, match="unable to open database file"):  # a database failing at the end
        views.write_study(f"sqlite:///{tmp}", "x", {}, [])


def test_bayes_search_exports_its_own_study_once(monkeypatch, tmp_path):
    """bayes_search's study (asked and told by TPE) is the exported one: the same trials, numbers,
    params and values, each once, with the members' curves and fields."""
    from test_search import SETTINGS as SEARCH_SETTINGS
    from test_search import TASK, synthetic_sweep

    monkeypatch.setattr(search, "run_sweep", synthetic_sweep([]))
    ranges = {"learning_rate": (1e-6, 100.0, True)}
    result = search.train_bayes(TASK, "adam", ranges, 2, 4, SEARCH_SETTINGS, 0)
    run = Workdir(tmp_path, "bayes_search")
    summary = {"experiment": "bayes_search", "target": {"metric": "accuracy", "goal": 0.97, "mode": "max"},
               "target_key": "train_accuracy", "max_steps": 1000}
    run.save_views(summary, result.records, views.Views(), study=result.study, ranges=ranges)
    (study,) = [optuna.load_study(study_name=s.study_name, storage=f"sqlite:///{tmp_path / OPTUNA_DB}")
                for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path / OPTUNA_DB}")]
    assert [t.number for t in study.trials] == [t["optuna_trial"] for t in result.trials] == list(range(8))
    assert [t.value for t in study.trials] == [t["objective"] for t in result.trials]
    assert [t.params for t in study.trials] == [t.params for t in result.study.trials]
    assert [t.user_attrs["status"] for t in study.trials] == [t["status"] for t in result.trials]
    assert all(math.isclose(t.params["learning_rate"], r["learning_rate"], rel_tol=1e-6)
               for t, r in zip(study.trials, result.trials))


def test_replicates_and_new_statuses_are_named_valued_and_tabled(tmp_path):
    """Records as other experiments make them (a seed per replicate, two optimizers, a second
    hyperparameter, a retired member): unique run names, the study's params, states and values, and
    a table pandas reads as the records."""
    curve = {"step": [50, 100], "train_accuracy": [0.5, 0.9], "loss": [1.0, 0.5], "seconds": [1.0, 2.0]}
    records = [{"optimizer": opt, "seed": seed, "learning_rate": lr,
                "hyperparameters": {"learning_rate": lr, "weight_decay": wd}, "status": status,
                "steps_to_target": 100 if status == "reached" else None, "steps_trained": 100, "curve": curve}
               for opt, status in (("adamw", "reached"), ("sgdw", "retired")) for seed in (0, 1)
               for lr in (1e-3, 1e-2, 1e-1) for wd in (1e-4, 1e-2)]
    names = views.member_names(records)
    assert len(set(names)) == len(records) and names[0] == "adamw/seed=0,learning_rate=0.001,weight_decay=0.0001"
    summary = {"target": {"metric": "accuracy", "goal": 0.97, "mode": "max"}, "target_key": "train_accuracy",
               "max_steps": 100}
    trials = views.make_trials(summary, records)
    assert {t.state.name for t in trials[:12]} == {"COMPLETE"} and {t.state.name for t in trials[12:]} == {"PRUNED"}
    assert [t.value for t in trials[:12]] == [100.0] * 12
    assert all(t.value == pytest.approx(100 * (1 + 0.97 - 0.9)) for t in trials[12:])  # a miss: above the budget
    dists = trials[0].distributions
    assert dists["learning_rate"].log and dists["weight_decay"].log and dists["optimizer"].choices == ("adamw", "sgdw")
    assert trials[0].user_attrs["seed"] == 0 and trials[0].intermediate_values == {50: 0.5, 100: 0.9}
    views.write_table(tmp_path / MEMBERS_CSV, records)
    table = pd.read_csv(tmp_path / MEMBERS_CSV)
    assert list(table.columns) == ["optimizer", "seed", "learning_rate", "weight_decay", "status", "steps_to_target",
                                   "steps_trained"]
    np.testing.assert_array_equal(table["steps_to_target"], [r["steps_to_target"] or np.nan for r in records])
    np.testing.assert_array_equal(table["learning_rate"], [r["learning_rate"] for r in records])
    np.testing.assert_array_equal(table["weight_decay"], [r["hyperparameters"]["weight_decay"] for r in records])
    assert table["seed"].tolist() == [r["seed"] for r in records] and table["status"].tolist() == [
        r["status"] for r in records]


def test_tensorboard_learning_rate_follows_the_schedule(tmp_path):
    """`learning_rate` is the member's peak times its schedule's factor at each evaluation (here a
    step decay halving it every 100 steps, the variant's own in a schedules run)."""
    spec = {"name": "step", "decay_steps": 100, "decay_factor": 0.5, "period": 1000, "period_mult": 2.0,
            "warmup_steps": 0, "total_steps": 300}
    record = {"optimizer": "adam", "schedule": "step", "hyperparameters": {"learning_rate": 0.1}, "status": "exhausted",
              "curve": {"step": [50, 150, 250], "train_accuracy": [0.1, 0.2, 0.3], "loss": [2.0, 1.5, 1.0]}}
    summary = {"experiment": "schedules", "field": "schedule", "settings": {"schedule": None},
               "schedules": {"step": {"spec": spec}}}
    views.write_tensorboard(tmp_path / TENSORBOARD, summary, [record])
    events = event_accumulator.EventAccumulator(str(tmp_path / TENSORBOARD / "adam" / "learning_rate=0.1"))
    events.Reload()
    np.testing.assert_allclose([e.value for e in events.Scalars("learning_rate")], [0.1, 0.05, 0.025], rtol=1e-6)
    assert [e.value for e in events.Scalars("loss")] == [2.0, 1.5, 1.0]
