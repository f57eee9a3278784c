"""The one ranking rule (store/ranking.py), and every picker of a "best" that uses it agreeing on
shared outcomes: a valley's best member, a search's best trial, the best rate across seeds,
search_compare's reference steps."""

import math

from lrlab.store import ranking
from lrlab.studies import search_compare
from lrlab.task.target import Target
from lrlab.training import replicates, search

TARGET = Target("accuracy", 0.97)
MAX_STEPS = 1000


def outcome(lr, status, steps=None, curve=()):
    return {"optimizer": "adam", "group": "adam", "learning_rate": lr, "status": status, "steps_to_target": steps,
            "curve": {"train_accuracy": list(curve)}}


OUTCOMES = [outcome(0.1, "diverged", curve=[0.5, math.nan]), outcome(0.03, "reached", 300),
            outcome(0.01, "reached", 300), outcome(0.003, "reached", 500), outcome(0.001, "exhausted", curve=[0.9, 0.96]),
            outcome(1e-4, "exhausted", curve=[0.5])]


def test_the_rule_orders_reached_then_missed_by_closeness_then_diverged():
    order = [r["learning_rate"] for r in ranking.ranked(OUTCOMES, MAX_STEPS, TARGET, "train_accuracy")]
    assert order == [0.01, 0.03, 0.003, 0.001, 1e-4, 0.1]  # a tie on steps goes to the lower rate
    assert ranking.best_member(OUTCOMES)["learning_rate"] == 0.01
    assert ranking.reached_band(OUTCOMES) == (0.003, 0.03)
    assert ranking.best_member([OUTCOMES[0], OUTCOMES[4]]) is None


def test_a_band_is_the_unbroken_run_of_reached_rates_around_the_best():
    """A multiplier sweep measured with a hole (momo_adam on small_cnn): 10 missed between 1 and 100,
    which reached. The span of every rate that reached covers the hole; the band one can pick from
    stops at it."""
    holed = [outcome(1000.0, "reached", 2850), outcome(100.0, "reached", 2850), outcome(10.0, "exhausted", curve=[0.93]),
             outcome(1.0, "reached", 700), outcome(0.1, "reached", 2500), outcome(0.01, "exhausted", curve=[0.91])]
    assert ranking.reached_band(holed) == (0.1, 1000.0)
    assert ranking.unbroken_band(holed) == (0.1, 1.0)
    assert ranking.unbroken_band(holed[:3]) == (100.0, 1000.0)  # the best at the run's lower edge
    assert ranking.unbroken_band(OUTCOMES) == ranking.reached_band(OUTCOMES)  # no hole: the same
    assert ranking.unbroken_band([OUTCOMES[0], OUTCOMES[4]]) is None


def test_every_picker_agrees_on_the_same_outcomes():
    expected = ranking.best(OUTCOMES, MAX_STEPS, TARGET, "train_accuracy")["learning_rate"]
    trials = [{**r, "index": i, "objective": ranking.objective(r, MAX_STEPS, TARGET, "train_accuracy")}
              for i, r in enumerate(OUTCOMES)]
    assert search.best_trial(trials)["learning_rate"] == expected
    assert ranking.best_member(OUTCOMES)["learning_rate"] == expected
    assert search_compare.best_steps(OUTCOMES) == 300
    rows = [{"optimizer": "adam", "group": "adam", "learning_rate": r["learning_rate"],
             "median_steps": r["steps_to_target"] if r["status"] == "reached" else None} for r in OUTCOMES]
    assert replicates.best(rows)["learning_rate"] == expected
