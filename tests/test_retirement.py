"""Retirement (issue 14): members at chance for long enough are retired and re-packed away; the rule
replays on a curve as the runner applies it; chance comes from the task; runs made before it
resume without it."""

import math

import numpy as np
import pytest

from conftest import make_cfg, run_population
from lrlab import population as pop_lib
from lrlab import models, retirement, runner, sweep, tasks
from lrlab.retirement import RetireSpec
from lrlab.tasks import Target

ACC, LOSS = Target("accuracy", 0.97), Target("loss", 2.0, "min")


def test_label_chance_is_the_best_constant_predictor():
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 3])
    freq = np.array([1, 2, 4, 1]) / 8
    chance = tasks.label_chance(labels)
    assert chance["accuracy"] == 0.5  # always predicting class 2
    assert chance["loss"] == pytest.approx(-sum(p * math.log(p) for p in freq))  # predicting the frequencies


def test_classification_task_gives_chance_of_its_target_metric():
    train = {"x": np.zeros((10, 2), np.float32), "label": np.array([0] * 7 + [1] * 3)}
    task = tasks.classification(models.make_model("mlp"), train)
    assert task.chance_value(train) == pytest.approx(0.7)
    assert task.with_target(0.9).chance_value(train) == pytest.approx(0.7)
    assert tasks.Task(model=task.model, train=train, loss=task.loss, metrics=task.metrics,
                      target=ACC).chance_value(train) is None  # a task without it: never retired


@pytest.mark.parametrize("target, chance, at, above", [(ACC, 0.11, 0.125, 0.2), (LOSS, 2.3, 2.29, 2.2)])
def test_replay_needs_consecutive_evaluations_at_chance_after_the_grace_period(target, chance, at, above):
    spec = RetireSpec(grace_steps=100, evaluations=3, margin=0.02)
    steps = list(range(25, 401, 25))
    flat = [at] * len(steps)
    assert retirement.replay(spec, target, chance, steps, flat) == 100  # 4 at chance by then, grace over
    broken = [at, at, above, at, at, above, at, at, at, at, at, at, at, at, at, at]
    assert retirement.replay(spec, target, chance, steps, broken) == 225  # every third breaks the streak until 150
    assert retirement.replay(spec, target, chance, steps, [above] * len(steps)) is None
    assert retirement.replay(spec, target, chance, steps, [math.nan] * len(steps)) is None  # NaN: not at chance
    assert retirement.replay(spec, target, chance, steps[:4], flat[:4]) is None  # the last one ends the run anyway


def test_retire_spec_rejects_bad_constants():
    with pytest.raises(ValueError, match="retire_evaluations"):
        RetireSpec(evaluations=0)
    with pytest.raises(ValueError, match="retire_margin"):
        RetireSpec(margin=1.0)


def test_members_at_chance_are_retired_and_repacked_the_others_unchanged(small_data):
    """Adam at 1e-7 (no progress) and 30 (at chance) retire at the grace period; the two that learn
    train exactly as without retirement; the population shrinks to the learners."""
    cfg = make_cfg(target=0.9)
    lrs = np.array([1e-7, 3e-3, 1e-2, 30.0])
    budget = runner.Budget(max_steps=60, eval_every=10)
    spec = RetireSpec(grace_steps=20, evaluations=2, margin=0.02)
    programs = runner.Programs(cfg)
    chance = retirement.chance_of(cfg.task, small_data)
    assert chance == pytest.approx(np.bincount(np.asarray(small_data.eval["label"])[:200]).max() / 200)
    hook = retirement.Retirement(spec, cfg.task.target, chance, lrs.size)
    retired = run_population(cfg, lrs, small_data, budget, programs=programs, hooks=[hook])
    plain = run_population(cfg, lrs, small_data, budget, programs=programs)
    status = retired.final.status
    assert [pop_lib.STATUS_NAMES[s] for s in status] == ["retired", *[pop_lib.STATUS_NAMES[s] for s in
                                                                       plain.final.status[1:3]], "retired"]
    assert plain.final.status[0] == plain.final.status[3] == pop_lib.EXHAUSTED
    assert list(retired.final.steps_trained[[0, 3]]) == [20, 20]
    assert retired.population_sizes[-1] == 2 and plain.population_sizes == [4]
    for m in (1, 2):  # the learners: the same curve, status and steps
        assert retired.curves[m]["train_accuracy"] == plain.curves[m]["train_accuracy"]
        assert retired.final.steps_to_target[m] == plain.final.steps_to_target[m]
    assert hook.state()["streak"][0] >= 2 and retirement.Retirement(spec, cfg.task.target, chance, 4).streak.sum() == 0


def test_settings_without_retirement_save_as_runs_made_before_it():
    on, off = sweep.SweepSettings(), sweep.SweepSettings(retire=None)
    assert on.to_json()["retire"] == {"grace_steps": 300, "evaluations": 5, "margin": 0.02}
    assert "retire" not in off.to_json()  # the identity an older checkpoint saved


def test_grace_period_counts_from_the_end_of_a_warmup(small_data):
    task = make_cfg().task
    (hook,) = retirement.hooks(RetireSpec(grace_steps=300), task, small_data, 4, warmup_steps=1000)
    assert hook.spec.grace_steps == 1300
    assert retirement.hooks(None, task, small_data, 4) == []
