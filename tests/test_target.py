"""The target (task/target.py): a direction inferred from a loss-like name, and goals an accuracy
cannot take refused in one line."""

import pytest

from lrlab.task.target import Target, inferred_mode


def test_a_loss_target_is_minimised_unless_said_otherwise():
    assert Target("loss", 0.15).mode == "min" and Target("validation_loss", 2.0).reached(1.9)
    assert Target("accuracy", 0.9).mode == "max" and not Target("accuracy", 0.9).reached(0.5)
    assert Target("loss", 0.15, "max").mode == "max"
    assert [inferred_mode(m) for m in ("perplexity", "error_rate", "f1", "bleu")] == ["min", "min", "max", "max"]


@pytest.mark.parametrize("goal", [-1.0, 0.0, 5.0])
def test_an_accuracy_goal_outside_0_1_is_refused(goal):
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        Target("accuracy", goal)


def test_a_goal_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        Target("loss", float("inf"), "min")
