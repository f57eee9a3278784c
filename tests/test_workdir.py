"""The run handle (store/workdir.py): one run holds a folder, an empty path is refused, overwrite
removes only what lrlab wrote, and a folder holding another run's identity is refused, naming each
difference."""

import json

import pytest

from lrlab.store import workdir as workdir_lib
from lrlab.store.workdir import Workdir, WorkdirError

IDENTITY = {"settings": {"budget": {"max_steps": 100}, "seed": 0}, "task": "mnist"}


def claimed(path, identity=IDENTITY, **kw):
    run = Workdir(path, "lr_valley", **kw)
    run.claim(identity)
    return run


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_workdir_is_refused(path):
    with pytest.raises(WorkdirError, match="the workdir is empty"):
        Workdir(path, "lr_valley")


def test_a_held_folder_is_refused_until_released(tmp_path):
    first = claimed(tmp_path / "w")
    with pytest.raises(WorkdirError, match="in use by another run .*lr_valley, process"):
        claimed(tmp_path / "w")
    first.release()
    claimed(tmp_path / "w").release()


def test_results_are_found_and_another_identity_is_refused_with_its_differences(tmp_path):
    run = claimed(tmp_path / "w")
    run.save_results({"records": []})
    run.release()
    again = Workdir(tmp_path / "w", "lr_valley")
    assert again.claim(IDENTITY) and again.finished
    again.release()
    assert json.loads((tmp_path / "w" / workdir_lib.IDENTITY_FILE).read_text())["experiment"] == "lr_valley"
    other = {"settings": {"budget": {"max_steps": 200}, "seed": 0}, "task": "mnist"}
    with pytest.raises(WorkdirError, match=r"settings\.budget\.max_steps.*100.*200"):
        claimed(tmp_path / "w", other)


def test_overwrite_removes_only_what_lrlab_wrote(tmp_path):
    run = claimed(tmp_path / "w")
    run.save_results({"records": []})
    run.release()
    (tmp_path / "w" / "checkpoints").mkdir(exist_ok=True)
    mine = tmp_path / "w" / "checkpoints" / "important.txt"
    mine.write_text("the user's")
    fresh = claimed(tmp_path / "w", {"other": 1}, overwrite=True)
    assert not fresh.finished and not fresh.results_path.exists()
    assert mine.read_text() == "the user's"
    fresh.release()


def test_an_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WorkdirError, match="cannot write there"):
        Workdir(blocker / "w", "lr_valley").prepare()
