"""The range test's confirmation (training/confirm.py): candidates on a log grid around the
suggestions, trained to the target as one population; the fastest wins and every step is counted."""

import numpy as np
import pytest
from conftest import image_task

from lrlab.engine.loop import Budget
from lrlab.optim import optimizers
from lrlab.store import ranking
from lrlab.task import models
from lrlab.training import confirm
from lrlab.training import settings as settings_lib


def grid(*indices):
    return 10.0 ** (np.asarray(indices, np.float64) / confirm.GRID_PER_DECADE)


def test_candidates_are_the_suggestions_then_their_nearest_neighbours():
    # 0.01 and 0.0105 share a grid point (j = -8); 0.1 is j = -4: then one step out from each, in order
    np.testing.assert_allclose(confirm.candidates([0.01, 0.0105, 0.1], 6), grid(-9, -8, -7, -5, -4, -3))
    np.testing.assert_allclose(confirm.candidates([0.01], 5), grid(-10, -9, -8, -7, -6))
    np.testing.assert_allclose(confirm.candidates([0.01, 0.1, 1.0], 2), grid(-8, -4))  # the first preferred
    np.testing.assert_allclose(confirm.candidates([0.01, None, 0.1], 2), grid(-8, -4))  # a rule with no answer


def test_candidates_refuse_nothing_to_confirm():
    with pytest.raises(ValueError, match="no rule suggested a rate"):
        confirm.candidates([None, None], 4)
    with pytest.raises(ValueError, match="at least 1 candidate"):
        confirm.candidates([0.01], 0)


def test_confirm_picks_the_fastest_candidate_and_counts_every_step():
    """An MLP on 2,000 MNIST images to 80% training accuracy: the found rate is the ranking rule's best
    of the candidates' records, the population stops once it has reached the target, and the cost is
    the sum of the candidates' steps trained (retired and pruned ones included)."""
    task = image_task(models.make_model("mlp"), target=0.8, n=2000)
    settings = settings_lib.SweepSettings(batch_size=32, budget=Budget(max_steps=300, eval_every=20),
                                          eval_examples=500, progress=False)
    rates = confirm.candidates([3e-3], 4)
    out = confirm.confirm(task, optimizers.get("adam"), rates, settings)
    records = out["members"]
    assert [r["learning_rate"] for r in records] == pytest.approx(list(rates))
    best = ranking.best_member(records)
    assert best is not None and out["best"] == {"learning_rate": best["learning_rate"],
                                                "steps_to_target": best["steps_to_target"]}
    assert out["best"]["steps_to_target"] == min(r["steps_to_target"] for r in records if r["status"] == "reached")
    assert out["model_steps"] == sum(r["steps_trained"] for r in records) and out["model_steps"] > 0
    assert out["candidates"] == pytest.approx(list(rates))
    # stopped at the first evaluation where one reached: nobody trained past it, the slower were pruned
    assert max(r["steps_trained"] for r in records) == out["best"]["steps_to_target"]
    assert {r["status"] for r in records} <= {"reached", "pruned", "retired", "diverged"}
    assert any(r["status"] == "pruned" for r in records)


def test_the_preference_order_names_every_rule():
    from lrlab.training import range_test

    assert sorted(confirm.ORDER) == sorted(range_test.RULES)
