"""Results survive Orbax and JSON round trips; the summary picks the right best rate and band."""

import math

import jax
import numpy as np
import pytest

from lrlab.store import files, ranking, valleys
from lrlab.store import records as records_lib


def _record(opt, lr, status, steps, seconds=None):
    return {"optimizer": opt, "learning_rate": lr, "hyperparameters": {"learning_rate": lr}, "status": status,
            "steps_to_target": steps, "examples_to_target": None if steps is None else steps * 100,
            "seconds_to_target": seconds, "steps_trained": steps or 300, "final_train_accuracy": 0.5,
            "final_test_accuracy": float("nan") if status == "diverged" else 0.4,
            "curve": {"step": [50, 100], "train_accuracy": [0.1, 0.5],
                      "loss": [2.0, float("nan") if status == "diverged" else 1.5],
                      "seconds": [1.0, 2.0]}}


RECORDS = [
    _record("adam", 1e-4, "exhausted", None),
    _record("adam", 1e-3, "reached", 150, 3.0),
    _record("adam", 1e-2, "reached", 100, 2.5),
    _record("adam", 1e-1, "reached", 100, 2.0),
    _record("adam", 10.0, "diverged", None),
    _record("sgd", 0.1, "exhausted", None),
]


def test_best_and_band():
    best, band = ranking.best_and_band(RECORDS[:5])
    assert best["learning_rate"] == 1e-2  # fewest steps; tie broken by the lower rate (not the seconds)
    assert band == (1e-3, 1e-1)
    assert ranking.best_and_band(RECORDS[5:]) == (None, None)


def test_every_consumer_of_the_best_rate_picks_the_same_member():
    """One rule: lr_valley's table, optimizer_comparison --from_valley, model_scaling's best rate per
    width and search_compare's scoring agree on tied members (here: 0.01 and 0.1 at 100 steps)."""
    from lrlab.studies import model_scaling, search_compare
    from lrlab.studies.lr_valley import ValleyResult
    from lrlab.studies.optimizer_comparison import rates_from_valley

    valley = RECORDS[:5]
    expected = 1e-2
    assert ranking.best_member(valley)["learning_rate"] == expected
    assert ranking.best_rates(valley, ["adam"])["adam"]["learning_rate"] == expected
    assert rates_from_valley(valley, ["adam"])[0] == {"adam": expected}
    assert model_scaling.best_rate_per_width([{**r, "width": 1.0, "parameters": 10} for r in valley])[0]["learning_rate"] \
        == expected
    assert search_compare.score_members("grid48", 1, valley, 100)["found_lr"] == expected
    assert ValleyResult({"members": valley}).best()["learning_rate"] == expected
    assert f"best learning rate {expected:.4g} " in valleys.format_table(valley, 50)


def test_orbax_round_trip(tmp_path):
    tree = records_lib.orbax_tree(RECORDS)
    files.save_orbax(tmp_path / "r", tree)
    restored = files.restore_orbax(tmp_path / "r")
    assert set(restored) == {"adam", "sgd"}
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, tree)
    np.testing.assert_array_equal(restored["adam"]["hyperparameters"]["learning_rate"], [1e-4, 1e-3, 1e-2, 0.1, 10.0])
    np.testing.assert_array_equal(restored["adam"]["final_test_accuracy"], [0.4] * 4 + [np.nan])
    assert list(restored["adam"]["steps_to_target"]) == [-1, 150, 100, 100, -1]
    assert list(restored["adam"]["status"]) == [3, 1, 1, 1, 2]


def test_json_round_trip_writes_nan_as_null(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"members": RECORDS})
    back = files.read_json(path)["members"]
    assert back[4]["final_test_accuracy"] is None and back[4]["curve"]["loss"] == [2.0, None]
    assert back[1] == RECORDS[1]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left


def test_failed_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "results.json"
    files.write_json(path, {"a": 1})
    try:
        files.write_json(path, {"a": object()})
    except TypeError:
        pass
    assert files.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_table_names_best_rate_and_band():
    text = valleys.format_table(RECORDS, eval_every=50)
    assert "adam: best learning rate 0.01 (100 steps, 10000 examples, 2.5 s)" in text
    assert "band that reached the target: 0.001 to 0.1 (3 of 5 rates)" in text
    assert "sgd: no learning rate reached the target" in text
    assert math.isnan(RECORDS[4]["final_test_accuracy"])


def test_disk_full_while_writing_fails_with_one_line_and_leaves_nothing_half(tmp_path, capsys):
    """ENOSPC in the middle of a write: one clear error line, exit 1, the old file intact, no temp file."""
    import errno

    from lrlab.experiments import command

    path = tmp_path / "results.json"
    files.write_json(path, {"old": True})

    def fill_disk(f):
        f.write(b'{"new": ')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit) as exit_info, command.writing(f"results to {tmp_path}"):
        files.atomic_write(path, fill_disk)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (f"lrlab: error: cannot write results to {tmp_path}: No space left on "
                                       "device (nothing half-written is left behind)\n")
    assert files.read_json(path) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_envelope_names_fastest_and_slowest_and_the_band():
    records = [_record("adam", 0.01, "reached", 300), _record("sgd", 0.01, "reached", 900),
               _record("rmsprop", 0.01, "diverged", None), _record("adam", 1.0, "diverged", None),
               _record("sgd", 1.0, "reached", 500), _record("adam", 1e-5, "exhausted", None)]
    rows = valleys.envelope(records)
    assert [r["learning_rate"] for r in rows] == [1e-5, 0.01, 1.0]
    assert rows[0] == {"learning_rate": 1e-5, "optimizers": 1, "reached": 0, "fastest": None,
                       "fastest_steps": None, "slowest": None, "slowest_steps": None}
    assert (rows[1]["fastest"], rows[1]["fastest_steps"], rows[1]["slowest"], rows[1]["slowest_steps"]) == \
        ("adam", 300, "sgd", 900)
    assert (rows[2]["fastest"], rows[2]["slowest"], rows[2]["reached"]) == ("sgd", "sgd", 1)
    assert valleys.trained_band(rows) == (0.01, 1.0)
    assert valleys.trained_band(rows[:1]) is None
