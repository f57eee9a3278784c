"""The lr_free study (studies/lr_free.py): its table's ratios, bands and verdicts from member records,
the profile's ratios, and a small run end to end."""

import math

import numpy as np
import pytest
from conftest import image_task

import lrlab
from lrlab.studies import lr_free
from lrlab.task import models


def rec(name, rate, steps, seed=0):
    return {"optimizer": name, "learning_rate": rate, "status": "reached" if steps else "retired",
            "steps_to_target": steps, "seed": seed}


RECORDS = [
    # seed 0: adam's best 200 at 1e-3; momentum's best 300
    rec("adam", 1e-4, 600), rec("adam", 1e-3, 200), rec("adam", 1e-2, None),
    rec("momentum", 1e-2, 300), rec("momentum", 1e-1, None),
    rec("prodigy", 0.1, 400), rec("prodigy", 1.0, 250), rec("prodigy", 10.0, 250),
    rec("dog", 1.0, 500), rec("dog", 10.0, 180),
    # seed 1: adam 250, prodigy's default 260 (1.04x), dog's default missed
    rec("adam", 1e-4, 700, 1), rec("adam", 1e-3, 250, 1), rec("adam", 1e-2, None, 1),
    rec("momentum", 1e-2, 400, 1), rec("momentum", 1e-1, None, 1),
    rec("prodigy", 0.1, 500, 1), rec("prodigy", 1.0, 260, 1), rec("prodigy", 10.0, None, 1),
    rec("dog", 1.0, None, 1), rec("dog", 10.0, 200, 1),
]


def test_rows_give_the_ratios_to_the_tuned_best_per_seed_and_the_verdict():
    rows = {r["optimizer"]: r for r in lr_free.method_rows(RECORDS, ("adam", "momentum"), ("prodigy", "dog"))}
    prodigy, dog = rows["prodigy"], rows["dog"]
    assert [s["default_ratio"] for s in prodigy["seeds"]] == pytest.approx([250 / 200, 260 / 250])
    assert prodigy["passes_at_default"] and prodigy["median_default_steps"] == 255
    assert [s["band_decades"] for s in prodigy["seeds"]] == pytest.approx([2.0, 1.0])
    assert dog["seeds"][0]["default_ratio"] == pytest.approx(2.5) and dog["seeds"][1]["default_ratio"] is None
    assert not dog["passes_at_default"] and dog["median_default_steps"] is None  # a seed missed
    assert dog["median_best_ratio"] == pytest.approx(statistics_median([180 / 200, 200 / 250]))
    assert rows["adam"]["kind"] == "tuned" and not rows["adam"]["passes_at_default"]
    assert rows["adam"]["median_best_ratio"] == 1.0 and rows["momentum"]["median_best_ratio"] == pytest.approx(
        statistics_median([1.5, 1.6]))


def statistics_median(values):
    return float(np.median(values))


def test_profile_ratios_are_over_the_fastest():
    rows = lr_free.method_rows(RECORDS[:10], ("adam", "momentum"), ("prodigy", "dog"))
    ratios = lr_free.profile_ratios(rows)
    assert ratios == pytest.approx({"adam": 1.0, "momentum": 1.5, "prodigy": 1.25, "dog": 2.5})


def test_the_sweep_always_holds_the_default_and_refuses_a_tuned_method():
    assert 1.0 in lr_free.MULTIPLIERS and math.isclose(lr_free.MULTIPLIERS[0], 1e-3)
    with pytest.raises(ValueError, match="adam is not a learning-rate-free method"):
        lrlab.lr_free(image_task(models.make_model("mlp")), methods=("adam",))


@pytest.mark.slow
def test_a_small_run_end_to_end_and_reloaded(tmp_path):
    task = image_task(models.make_model("mlp"), target=0.8)
    settings = lrlab.SweepSettings(budget=lrlab.Budget(max_steps=200, eval_every=50), eval_examples=200, progress=False)
    kw = {"tuned": ("adam",), "methods": ("prodigy", "schedule_free_sgd"), "learning_rates": [1e-3, 1e-2],
          "multipliers": [0.3, 3.0]}
    result = lrlab.lr_free(task, settings, tmp_path / "run", **kw)
    rows = {r["optimizer"]: r for r in result.rows}
    assert set(rows) == {"adam", "prodigy", "schedule_free_sgd"}
    assert sorted({m["learning_rate"] for m in result.summary["members"] if m["optimizer"] == "prodigy"}) == \
        pytest.approx([0.3, 1.0, 3.0])  # the default joins the sweep
    assert "at their defaults" in result.report()
    for name in ("lr_free.png", "profile.png", "results.json", "members.csv"):
        assert (tmp_path / "run" / name).exists()
    again = lrlab.lr_free(task, settings, tmp_path / "run", **kw)
    assert again.summary["methods"] == result.summary["methods"]
