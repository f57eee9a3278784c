"""search_compare's scoring (lrlab/comparison.py) on hand-written records: the good/bad threshold,
grid12's sub-sampling and cost, Bayesian cost counted to the first good round, PBT and lr_finder
cost accounting, the per-method table; --methods parsing; and one tiny comparison end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest

from lrlab.studies import search_compare


def rec(lr, status, steps=None, trained=1500):
    """A member record / trial with the fields the scoring reads."""
    return {"learning_rate": lr, "status": status, "steps_to_target": steps,
            "steps_trained": steps if status == "reached" else trained}


# A toy valley of 8 rates (ascending): S* = 500 at 0.01; 0.003 (540) is within 10%, 0.001 (600) is not.
VALLEY = [rec(1e-5, "exhausted"), rec(1e-4, "exhausted"), rec(1e-3, "reached", 600), rec(3e-3, "reached", 540),
          rec(1e-2, "reached", 500), rec(3e-2, "reached", 700), rec(1.0, "diverged", trained=50),
          rec(10.0, "diverged", trained=25)]
S_STAR = 500


def test_best_steps_and_threshold():
    assert search_compare.best_steps(VALLEY) == S_STAR
    assert search_compare.best_steps([rec(1.0, "diverged")]) is None
    assert search_compare.is_good(550, S_STAR)  # exactly 1.1 x S*
    assert not search_compare.is_good(575, S_STAR)
    assert not search_compare.is_good(None, S_STAR)
    row = search_compare.make_row("x", 1, trainings=3, model_steps=10, found_lr=0.1, found_steps=600, s_star=S_STAR)
    assert row["ratio"] == pytest.approx(1.2) and not row["good"]


def test_valley_rates_are_the_study_grid():
    lrs = search_compare.valley_rates()
    assert len(lrs) == 48 and lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(100.0)
    assert np.allclose(np.diff(np.log(lrs)), np.log(lrs[1] / lrs[0]))


def test_grid48_is_the_whole_valley():
    row = search_compare.score_grid("grid48", 1, VALLEY, S_STAR)
    assert row["trainings"] == 8
    assert row["model_steps"] == 1500 + 1500 + 600 + 540 + 500 + 700 + 50 + 25
    assert row["found_lr"] == 1e-2 and row["found_steps"] == S_STAR and row["good"]


def test_grid_subsampling_and_cost():
    shuffled = VALLEY[::-1]  # order must not matter: the subset is by learning rate
    assert [r["learning_rate"] for r in search_compare.grid_subset(shuffled, 4, 0)] == [1e-5, 1e-2]
    assert [r["learning_rate"] for r in search_compare.grid_subset(shuffled, 4, 1)] == [1e-4, 3e-2]
    row = search_compare.score_grid("grid12", 1, shuffled, S_STAR, stride=4)  # offset 0: 1e-5 and 1e-2
    assert (row["trainings"], row["model_steps"], row["found_steps"], row["good"]) == (2, 1500 + 500, 500, True)
    row = search_compare.score_grid("grid12", 3, shuffled, S_STAR, stride=4)  # offset 2: 1e-3 (600) and 1.0
    assert (row["offset"], row["trainings"], row["model_steps"]) == (2, 2, 600 + 50)
    assert row["found_lr"] == 1e-3 and row["ratio"] == pytest.approx(1.2) and not row["good"]
    row = search_compare.score_grid("grid12", 2, shuffled, S_STAR, stride=4)  # offset 1: 1e-4 and 3e-2 (700)
    assert row["found_steps"] == 700 and not row["good"]


def test_search_counts_pruned_members_at_their_rung():
    trials = [rec(1e-3, "pruned", trained=100), rec(1e-2, "reached", 525), rec(1e-4, "pruned", trained=300),
              rec(1.0, "diverged", trained=25)]
    row = search_compare.score_search("random32_sha", 2, trials, S_STAR)
    assert row["model_steps"] == 100 + 525 + 300 + 25 and row["trainings"] == 4 and row["pruned"] == 2
    assert row["found_steps"] == 525 and row["good"]
    missed = search_compare.score_search("random16", 1, [rec(1e-6, "exhausted"), rec(50.0, "diverged", trained=25)],
                                     S_STAR)
    assert missed["found_steps"] is None and missed["ratio"] is None and not missed["good"]
    assert missed["model_steps"] == 1525


def _round(r, members, cumulative, lr, status, steps):
    return {"round": r, "members": members, "model_steps": 0, "cumulative_model_steps": cumulative,
            "incumbent_objective": steps or 9999, "incumbent": rec(lr, status, steps)}


def test_bayes_cost_counts_to_the_first_good_round():
    rounds = [_round(0, 8, 9000, 1e-3, "reached", 600), _round(1, 8, 14000, 3e-3, "reached", 540),
              _round(2, 8, 18000, 1e-2, "reached", 500), _round(3, 8, 21000, 1e-2, "reached", 500)]
    row = search_compare.score_rounds("bayes4x8", 1, rounds, S_STAR)
    assert (row["model_steps"], row["trainings"], row["rounds_used"]) == (14000, 16, 2)
    assert row["found_lr"] == 3e-3 and row["good"]
    never = search_compare.score_rounds("bayes4x8", 2, rounds[:1] + [_round(1, 8, 20000, 1e-3, "reached", 600)], S_STAR)
    assert (never["model_steps"], never["trainings"], never["good"]) == (20000, 16, False)
    nothing = search_compare.score_rounds("bayes4x8", 3, [_round(0, 8, 12000, 1.0, "diverged", None)], S_STAR)
    assert nothing["found_steps"] is None and nothing["model_steps"] == 12000


def test_pbt_cost_is_k_times_steps_to_target_or_all_steps():
    hit = search_compare.score_pbt("pbt16", 1, k=16, steps_to_target=525, steps_run=525, found_lr=0.01, s_star=S_STAR)
    assert (hit["model_steps"], hit["trainings"], hit["good"]) == (16 * 525, 16, True)
    slow = search_compare.score_pbt("pbt16", 2, k=16, steps_to_target=600, steps_run=600, found_lr=0.01, s_star=S_STAR)
    assert slow["model_steps"] == 9600 and not slow["good"] and slow["ratio"] == pytest.approx(1.2)
    miss = search_compare.score_pbt("pbt16", 3, k=16, steps_to_target=None, steps_run=1500, found_lr=0.5, s_star=S_STAR)
    assert miss["model_steps"] == 24000 and miss["found_steps"] is None and not miss["good"]


def test_lr_finder_cost_excludes_then_includes_the_verification():
    row = search_compare.score_finder("lr_finder", 1, finder_model_steps=380, num_seeds=4, suggested_lr=0.01,
                                  verify=rec(0.01, "reached", 525), s_star=S_STAR)
    assert (row["model_steps"], row["trainings"]) == (380, 4)
    assert (row["model_steps_with_verification"], row["trainings_with_verification"]) == (905, 5)
    assert row["good"] and row["found_steps"] == 525
    bad = search_compare.score_finder("lr_finder", 2, finder_model_steps=400, num_seeds=4, suggested_lr=0.5,
                                  verify=rec(0.5, "diverged", trained=75), s_star=S_STAR)
    assert bad["model_steps_with_verification"] == 475 and not bad["good"] and bad["found_steps"] is None
    none = search_compare.score_finder("lr_finder", 3, finder_model_steps=40, num_seeds=4, suggested_lr=None,
                                   verify=None, s_star=S_STAR)
    assert none["model_steps_with_verification"] == 40 and none["trainings_with_verification"] == 4


def test_summary_table_medians_and_misses():
    rows = [search_compare.make_row("a", s, trainings=16, model_steps=m, found_lr=0.01, found_steps=f, s_star=S_STAR)
            for s, m, f in ((1, 1000, 500), (2, 3000, None), (3, 2000, 540))]
    (entry,) = search_compare.summary_table(rows)
    assert (entry["successes"], entry["seeds"], entry["median_model_steps"]) == (2, 3, 2000)
    assert entry["median_ratio"] == pytest.approx(1.08)  # 1.0, 1.08 and a miss (infinite)
    text = search_compare.format_summary([entry], S_STAR, 0.01, 25)
    assert "2/3" in text and "550 steps" in text


@pytest.mark.parametrize("entries, expected", [
    (["all"], list(search_compare.METHODS)),
    (["pbt16", " grid48"], ["grid48", "pbt16"]),  # METHODS order
])
def test_parse_methods(entries, expected):
    assert search_compare.parse_methods(entries) == expected


@pytest.mark.parametrize("entries, message", [
    (["grid48", "nope"], "unknown method 'nope'"),
    (["grid48", "grid48"], "listed twice"),
    ([], "at least one"),
    (["all", "grid48"], "unknown method 'all'"),
])
def test_parse_methods_refuses(entries, message):
    with pytest.raises(ValueError, match=message):
        search_compare.parse_methods(entries)


def test_bad_methods_flag_is_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lrlab.experiments.search_compare", "--methods=grid48,random7",
                          f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "--methods" in out.stderr and "unknown method 'random7'" in out.stderr
    assert "Traceback" not in out.stderr


def test_run_all_resumes_from_saved_rows_in_method_order(tmp_path):
    """Finished rows (checkpoints/<method>/seed-<s>/row.json) are reused without training; grid48
    runs once; rows come back method by method, seeds ascending."""
    from lrlab.optim import optimizers
    from lrlab.store import files
    from lrlab.store.workdir import Workdir
    from lrlab.training import settings

    methods = ["grid48", "random16", "pbt16"]
    for method, seed in [("grid48", 1), ("random16", 1), ("random16", 2), ("pbt16", 1), ("pbt16", 2)]:
        row = search_compare.make_row(method, seed, trainings=16, model_steps=100 * seed, found_lr=0.01,
                                  found_steps=500, s_star=S_STAR)
        (tmp_path / "checkpoints" / method / f"seed-{seed}").mkdir(parents=True)
        files.write_json(tmp_path / "checkpoints" / method / f"seed-{seed}" / "row.json", row)
    setup = search_compare.Setup(None, optimizers.get("adam"), settings.SweepSettings(),
                             scope=Workdir(tmp_path, "search_compare").scope())
    seen = []
    rows = search_compare.run_all(setup, methods, 2, VALLEY, S_STAR,
                              on_row=lambda row, i, n: seen.append((row["method"], row["seed"], i, n)))
    assert seen == [("grid48", 1, 1, 5), ("random16", 1, 2, 5), ("pbt16", 1, 3, 5), ("random16", 2, 4, 5),
                    ("pbt16", 2, 5, 5)]
    assert [(r["method"], r["seed"]) for r in rows] == [("grid48", 1), ("random16", 1), ("random16", 2),
                                                       ("pbt16", 1), ("pbt16", 2)]


@pytest.mark.slow
def test_search_compare_end_to_end(tmp_path):
    """A tiny comparison (MLP, 60-step budget) of the methods that train: every row scored against
    the valley's S*, results.json and the figure written, and a rerun prints the saved table."""
    args = [sys.executable, "-m", "lrlab.experiments.search_compare", f"--workdir={tmp_path}", "--model=mlp",
            "--max_steps=60", "--eval_every=10", "--eval_examples=250", "--batch_size=32", "--target_accuracy=0.6",
            "--methods=grid12,random16,pbt16,lr_finder", "--method_seeds=1", "--noprogress"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "results.json").read_text())
    s_star = summary["s_star"]
    assert s_star == min(r["steps_to_target"] for r in summary["valley"] if r["status"] == "reached")
    assert [r["method"] for r in summary["rows"]] == ["grid12", "random16", "pbt16", "lr_finder"]
    for row in summary["rows"]:
        assert row["good"] == (row["found_steps"] is not None and row["found_steps"] <= 1.1 * s_star)
        assert row["model_steps"] > 0 and row["trainings"] >= 1
    grid12 = summary["rows"][0]
    assert grid12["trainings"] == 12 and grid12["model_steps"] == sum(
        r["steps_trained"] for r in sorted(summary["valley"], key=lambda r: r["learning_rate"])[0::4])
    assert (tmp_path / "search_compare.png").stat().st_size > 10_000
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already holds this run's results" in rerun.stdout and "good/seeds" in rerun.stdout


def test_flags_the_comparison_sets_are_refused_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lrlab.experiments.search_compare", "--prune=sha",
                          f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "flag --prune=sha: not with search_compare" in out.stderr.splitlines()[0]
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()
