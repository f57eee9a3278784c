"""Checkpoints verify themselves: each step's record lies in its own folder, a damaged or unverified
step is passed over for a verified one (said in one line), and a failed save leaves nothing behind."""

import errno
import json

import jax.numpy as jnp
import numpy as np
import pytest

from lrlab.engine import placement
from lrlab.store import checkpoints


def population(value):
    return {"w": jnp.full((4, 3), value, jnp.float32), "step": jnp.asarray(value, jnp.int32)}


def manager(tmp_path, lines):
    return checkpoints.RunCheckpoints(tmp_path / "ckpt", {"run": "test"}, every=1, notify=lines.append)


def save_two(tmp_path):
    lines = []
    m = manager(tmp_path, lines)
    m.save(1, population(1), {"step": 1})
    m.save(2, population(2), {"step": 2})
    m.close()
    return tmp_path / "ckpt"


def restore(tmp_path):
    lines = []
    m = manager(tmp_path, lines)
    try:
        restored = m.restore(population(0), placement.make_mesh())
    finally:
        m.close()
    return restored, lines


def flip_largest(folder):
    path = max((p for p in folder.rglob("*") if p.is_file() and p.name != checkpoints.RECORD),
               key=lambda p: p.stat().st_size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_each_step_carries_its_own_record(tmp_path):
    folder = save_two(tmp_path)
    for step in ("1", "2"):
        recorded = json.loads((folder / step / checkpoints.RECORD).read_text())
        assert recorded == checkpoints.digest(folder / step) and recorded
    assert not (folder / checkpoints.LEGACY_DIGESTS).exists()


@pytest.mark.parametrize("record", ["missing", "unreadable"])
def test_damaged_unverified_latest_falls_back_to_the_verified_one(tmp_path, record):
    """The newest step lost its record and its bytes: the intact older step is used, and said."""
    folder = save_two(tmp_path)
    if record == "missing":
        (folder / "2" / checkpoints.RECORD).unlink()
    else:
        (folder / "2" / checkpoints.RECORD).write_text("{ cut")
    flip_largest(folder / "2")
    (restored, state), lines = restore(tmp_path)
    assert state["step"] == 1 and np.all(np.asarray(restored["w"]) == 1)
    assert f"checkpoint {folder / '2'} is unverified (no record of its files): resuming from checkpoint 1 instead" \
        in lines[0]
    assert not (folder / "2").exists()


def test_intact_unverified_latest_is_not_preferred_over_a_verified_one(tmp_path):
    folder = save_two(tmp_path)
    (folder / "2" / checkpoints.RECORD).unlink()
    (_, state), lines = restore(tmp_path)
    assert state["step"] == 1 and "unverified" in lines[0]


def test_only_unverified_checkpoints_are_used_last_and_said(tmp_path):
    folder = save_two(tmp_path)
    for step in ("1", "2"):
        (folder / step / checkpoints.RECORD).unlink()
    (restored, state), lines = restore(tmp_path)
    assert state["step"] == 2 and np.all(np.asarray(restored["w"]) == 2)
    assert "is unverified (no record of its files): resuming from it, as no verified checkpoint is intact" in lines[0]


def test_damaged_verified_steps_are_named_in_one_line(tmp_path):
    folder = save_two(tmp_path)
    for step in ("1", "2"):
        flip_largest(folder / step)
    with pytest.raises(checkpoints.CheckpointDamaged) as caught:
        restore(tmp_path)
    text = str(caught.value)
    assert "\n" not in text and text.count("changed since it was saved") == 2


def test_older_workdirs_index_still_verifies(tmp_path):
    """A workdir written with the index beside the steps (digests.json) is verified by it."""
    folder = save_two(tmp_path)
    index = {}
    for step in ("1", "2"):
        index[step] = json.loads((folder / step / checkpoints.RECORD).read_text())
        (folder / step / checkpoints.RECORD).unlink()
    (folder / checkpoints.LEGACY_DIGESTS).write_text(json.dumps(index))
    flip_largest(folder / "2")
    (_, state), lines = restore(tmp_path)
    assert state["step"] == 1 and "changed since it was saved" in lines[0]


def test_a_failed_save_is_one_line_and_leaves_no_partial_step(tmp_path, monkeypatch):
    lines = []
    m = manager(tmp_path, lines)
    m.save(1, population(1), {"step": 1})

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints, "digest", full)
    with pytest.raises(checkpoints.CheckpointWriteError) as caught:
        m.save(2, population(2), {"step": 2})
    m.close()
    assert str(caught.value) == (f"cannot write checkpoint 2 in {tmp_path / 'ckpt'}: No space left on device; "
                                 f"the previous checkpoint is intact")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]
