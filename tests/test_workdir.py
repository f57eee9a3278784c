"""The run handle (store/workdir.py): one run holds a folder, an empty path is refused, overwrite
removes only what lrlab wrote, and a folder holding another run's identity is refused, naming each
difference."""

import json

import pytest

from lrlab.store import records
from lrlab.store import workdir as workdir_lib
from lrlab.store.workdir import Workdir, WorkdirError

IDENTITY = {"settings": {"budget": {"max_steps": 100}, "seed": 0}, "task": "mnist"}
RESULTS = {"schema_version": records.SCHEMA_VERSION, "experiment": "lr_valley", "members": []}


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
    run.save_results(RESULTS)
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
    run.save_results(RESULTS)
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


def _valley_task(labels=None, model=None):
    import flax.linen as nn
    import numpy as np

    import lrlab

    class Linear(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    rng = np.random.default_rng(0)
    images = rng.normal(size=(300, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 300).astype(np.int32) if labels is None else labels
    return lrlab.classification(model or Linear(), {"image": images, "label": labels}, inputs=lambda b: b["image"])


def test_a_rerun_must_match_the_data_and_the_model_code_by_content(tmp_path):
    import flax.linen as nn

    import lrlab

    settings = lrlab.SweepSettings(budget=lrlab.Budget(max_steps=10, eval_every=10), progress=False,
                                   eval_examples=100, views=lrlab.Views(optuna_storage="none"))
    members = lrlab.grid("adam", learning_rate=[1e-3])
    task = _valley_task()
    first = lrlab.lr_valley(task, members, settings, workdir=tmp_path / "w")
    again = lrlab.lr_valley(_valley_task(), members, settings, workdir=tmp_path / "w")
    assert again.records == first.records  # the same content: reloaded
    relabelled = _valley_task(labels=(task.train["label"] + 1) % 10)
    with pytest.raises(WorkdirError, match=r"content\.data\.train="):
        lrlab.lr_valley(relabelled, members, settings, workdir=tmp_path / "w")

    class Linear(nn.Module):  # the same name and fields, another body
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(10, use_bias=False)(x.reshape(x.shape[0], -1))

    with pytest.raises(WorkdirError, match=r"content\.model_code="):
        lrlab.lr_valley(_valley_task(model=Linear()), members, settings, workdir=tmp_path / "w")
    saved = json.loads((tmp_path / "w" / workdir_lib.IDENTITY_FILE).read_text())
    del saved["content"], saved["optimizer_code"]  # an identity saved before contents were compared
    (tmp_path / "w" / workdir_lib.IDENTITY_FILE).write_text(json.dumps(saved))
    assert lrlab.lr_valley(_valley_task(), members, settings, workdir=tmp_path / "w").records == first.records


def test_results_that_are_not_this_experiments_are_recomputed(tmp_path):
    run = claimed(tmp_path / "w")
    run.save_results({})
    run.release()
    again = Workdir(tmp_path / "w", "lr_valley")
    assert not again.claim(IDENTITY)
    again.release()


def test_every_output_is_listed_before_it_is_written(tmp_path, monkeypatch):
    """A run killed between listing a file and writing it leaves a listed name without its file,
    which is harmless; the other order leaves a file the next run refuses as not lrlab's."""
    run = claimed(tmp_path / "w")
    real = workdir_lib.files.write_json

    def listed_first(path, obj):
        assert path.name in (run._manifest() or []) or path.name == workdir_lib.MANIFEST, path.name
        real(path, obj)

    monkeypatch.setattr(workdir_lib.files, "write_json", listed_first)
    run.save_results(RESULTS)  # the identity, then the results
    run.release()
    assert (tmp_path / "w" / workdir_lib.IDENTITY_FILE).exists() and (tmp_path / "w" / workdir_lib.RESULTS).exists()


@pytest.mark.parametrize("name", [workdir_lib.TENSORBOARD, workdir_lib.MEMBERS_CSV, workdir_lib.RESULTS])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_file_where_an_output_goes_is_refused_and_kept(tmp_path, name, overwrite):
    """A file lrlab did not write, where one of its outputs goes, is never renamed or replaced."""
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / name).write_text("the user's")
    with pytest.raises(WorkdirError, match=f"{name} is there and lrlab did not write it: move it away"):
        claimed(folder, overwrite=overwrite)
    assert (folder / name).read_text() == "the user's"
    assert [p.name for p in folder.iterdir()] == [name]  # nothing added either
