"""Retirement: members at chance for long enough, or out of pace for the target within the
budget, are retired and re-packed away; the rules replay on a curve as the runner applies them;
chance comes from the task; runs made before them resume without them."""

import dataclasses
import math

import numpy as np
import pytest
from conftest import make_cfg, run_population

from lrlab.engine import loop, placement, population
from lrlab.task import classification, models
from lrlab.task import task as task_lib
from lrlab.task.target import Target
from lrlab.training import retirement, settings
from lrlab.training.retirement import RetireSpec

ACC, LOSS = Target("accuracy", 0.97), Target("loss", 2.0, "min")


def test_label_chance_is_the_best_constant_predictor():
    labels = np.array([0, 1, 1, 2, 2, 2, 2, 3])
    freq = np.array([1, 2, 4, 1]) / 8
    chance = classification.label_chance(labels)
    assert chance["accuracy"] == 0.5  # always predicting class 2
    assert chance["loss"] == pytest.approx(-sum(p * math.log(p) for p in freq))  # predicting the frequencies


def test_classification_task_gives_chance_of_its_target_metric():
    train = {"x": np.zeros((10, 2), np.float32), "label": np.array([0] * 7 + [1] * 3)}
    task = classification.classification(models.make_model("mlp"), train)
    assert task.chance_value(train) == pytest.approx(0.7)
    assert task.with_target(0.9).chance_value(train) == pytest.approx(0.7)
    assert task_lib.Task(model=task.model, train=train, loss=task.loss, metrics=task.metrics,
                      target=ACC).chance_value(train) is None  # a task without it: never retired


@pytest.mark.parametrize("target, chance, at, above", [(ACC, 0.11, 0.125, 0.2), (LOSS, 2.3, 2.29, 2.2)])
def test_replay_needs_consecutive_evaluations_at_chance_after_the_grace_period(target, chance, at, above):
    spec = RetireSpec(grace_steps=100, evaluations=3, margin=0.02, pace=0)
    steps = list(range(25, 401, 25))
    flat = [at] * len(steps)
    replay = lambda values, s=steps: retirement.replay(spec, target, chance, s, values, 400)  # noqa: E731
    assert replay(flat) == 100  # 4 at chance by then, grace over
    broken = [at, at, above, at, at, above, at, at, at, at, at, at, at, at, at, at]
    assert replay(broken) == 225  # every third breaks the streak until 150
    assert replay([above] * len(steps)) is None
    assert replay([math.nan] * len(steps)) is None  # NaN: not at chance
    assert replay(flat[:4], steps[:4]) is None  # the last one ends the run anyway


def test_pace_rule_retires_only_members_whose_best_pace_misses_the_target_by_the_budget():
    """Accuracy every 50 steps, budget 1000, target 0.97: the best gain over two evaluations, kept up
    to the budget, must fall short for 3 evaluations in a row from step 100."""
    spec = RetireSpec(pace=1.0, pace_grace_steps=100, pace_evaluations=3)
    steps = list(range(50, 1001, 50))
    replay = lambda values: retirement.replay(spec, ACC, None, steps, values, 1000)  # noqa: E731
    slow = [0.2 + 0.01 * i for i in range(len(steps))]  # 0.0002 per step: 0.23 + 0.0002 * 850 = 0.4 by the budget
    assert replay(slow) == 250  # short at 150 (the first evaluation with a pace), 200 and 250
    tracker = retirement.Tracker(spec, ACC, None, 1000, 1)
    assert next(s for s, v in zip(steps, slow) if tracker.update(np.array([0]), np.array([s]), np.array([v]))[0]) == 250
    assert list(tracker.reason) == [retirement.PACE]  # which rule retired it
    fast_then_flat = [0.5, 0.8, 0.9, 0.95] + [0.96] * 16  # the plateau keeps its fast start's credit
    assert replay(fast_then_flat) is None
    late = [0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.6, 0.9] + [0.98] * 12  # no pace at all, then a take-off
    assert replay(late) == 250  # retired on its plateau: why the rule waits for a grace period
    assert retirement.replay(dataclasses.replace(spec, pace_grace_steps=300), ACC, None, steps, late, 1000) is None
    assert replay([math.nan] * len(steps)) is None  # NaN: never out of pace
    loss_target = Target("loss", 0.5, "min")  # lower is better: a loss falling 0.001 per step misses 0.5 by 1000
    assert retirement.replay(spec, loss_target, None, steps, [2.3 - 0.001 * s for s in steps], 1000) == 250
    assert retirement.replay(spec, loss_target, None, steps, [2.3 - 0.003 * s for s in steps], 1000) is None


def test_default_pace_rule_keeps_a_member_that_dips_on_its_plateau_and_then_reaches():
    """A measured curve (examples.mnist_cnn, Adam at 0.018, seed 0, retirement off): 0.93 from the
    first evaluation, flat for three, a dip at step 250, then 97% at step 700 of a 1000-step budget.
    Three evaluations out of pace in a row retire it at 250; the default's four do not."""
    steps = list(range(50, 701, 50))
    accuracy = [0.9315, 0.9385, 0.9075, 0.939, 0.7955, 0.961, 0.9635, 0.9625, 0.914, 0.955, 0.969, 0.9685, 0.9685,
                0.975]
    chance = 0.113  # the 2000-example evaluation subset's
    three = dataclasses.replace(RetireSpec(), pace_evaluations=3)
    assert retirement.replay(three, ACC, chance, steps, accuracy, 1000) == 250
    assert retirement.replay(RetireSpec(), ACC, chance, steps, accuracy, 1000) is None


def test_retire_spec_rejects_bad_constants():
    with pytest.raises(ValueError, match="retire_evaluations"):
        RetireSpec(evaluations=0)
    with pytest.raises(ValueError, match="retire_margin"):
        RetireSpec(margin=1.0)
    with pytest.raises(ValueError, match="retire_pace"):
        RetireSpec(pace=-1.0)


def test_members_at_chance_are_retired_and_repacked_the_others_unchanged(small_data):
    """Adam at 1e-7 (no progress) and 30 (at chance) retire at the grace period; the two that learn
    train exactly as without retirement; the population shrinks to the learners."""
    cfg = make_cfg(target=0.9)
    lrs = np.array([1e-7, 3e-3, 1e-2, 30.0])
    budget = loop.Budget(max_steps=60, eval_every=10)
    spec = RetireSpec(grace_steps=20, evaluations=2, margin=0.02, pace=0)
    programs = loop.Programs(cfg)
    chance = retirement.chance_of(cfg.task, small_data)
    assert chance == pytest.approx(np.bincount(np.asarray(small_data.eval["label"])[:200]).max() / 200)
    hook = retirement.Retirement(spec, cfg.task.target, chance, budget.max_steps, lrs.size)
    retired = run_population(cfg, lrs, small_data, budget, programs=programs, hooks=[hook])
    plain = run_population(cfg, lrs, small_data, budget, programs=programs)
    status = retired.final.status
    assert [population.STATUS_NAMES[s] for s in status] == ["retired", *[population.STATUS_NAMES[s] for s in
                                                                       plain.final.status[1:3]], "retired"]
    assert plain.final.status[0] == plain.final.status[3] == population.EXHAUSTED
    assert list(retired.final.steps_trained[[0, 3]]) == [20, 20]
    assert placement.live_chunks(np.isin(np.arange(4), [1, 2]), 1, programs.member_chunk(plain.final)) <= 2
    for m in (1, 2):  # the learners: the same curve, status and steps
        assert retired.curves[m]["train_accuracy"] == plain.curves[m]["train_accuracy"]
        assert retired.final.steps_to_target[m] == plain.final.steps_to_target[m]
    assert hook.state()["streak"][0] >= 2
    assert list(hook.tracker.reason) == [retirement.CHANCE, "", "", retirement.CHANCE]  # the rule, per member
    rows = [{"status": population.STATUS_NAMES[s], "steps_trained": int(n)}
            for s, n in zip(status, retired.final.steps_trained)]
    retirement.name_rules(rows, hook.tracker.reason)
    assert rows[0] == {"status": "retired", "steps_trained": 20, "retired_by": "chance", "retired_at": 20}
    assert "retired_by" not in rows[1]
    assert sum(retirement.Retirement(spec, cfg.task.target, chance, 60, 4).state()["streak"]) == 0


def test_settings_without_retirement_save_as_runs_made_before_it():
    on, off = settings.SweepSettings(), settings.SweepSettings(retire=None)
    assert on.to_json()["retire"] == {"grace_steps": 300, "evaluations": 5, "margin": 0.02, "pace": 1.0,
                                      "pace_grace_steps": 100, "pace_evaluations": 4}
    assert "retire" not in off.to_json()  # the identity an older checkpoint saved
    no_pace = settings.SweepSettings(retire=RetireSpec(pace=0))
    assert no_pace.to_json()["retire"] == {"grace_steps": 300, "evaluations": 5, "margin": 0.02}  # as before it


def test_grace_period_counts_from_the_end_of_a_warmup(small_data):
    task = make_cfg().task
    (hook,) = retirement.hooks(RetireSpec(grace_steps=300), task, small_data, 4, 5000, warmup_steps=1000)
    assert hook.tracker.spec.grace_steps == 1300 and hook.tracker.spec.pace_grace_steps == 1100
    assert retirement.hooks(None, task, small_data, 4, 5000) == []
