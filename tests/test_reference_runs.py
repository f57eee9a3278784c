"""The command line gives the same members as before the library reshaping: six small
configurations (tests/reference_runs.py: lr_valley, with successive halving, techniques, pbt,
random_search, lr_finder), their statuses and steps to target against those recorded from lrlab
0.1 (tests/data/reference_members.json); retirement, newer than the recording, may only end members
that missed the target (exhausted) earlier. Started together, so the two cores overlap them."""

import json
import pathlib

import pytest
import reference_runs
from conftest import run_together

pytestmark = pytest.mark.slow  # six command-line runs together: a guard for refactors, run with -m slow

RECORDED = json.loads((pathlib.Path(__file__).parent / "data" / "reference_members.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JAX_PLATFORMS", "cpu")  # recorded on a CPU: on a GPU machine too, compared on its CPU
        return root, run_together({name: reference_runs.command(name, root / name) for name in reference_runs.CONFIGS})


@pytest.mark.parametrize("name", list(reference_runs.CONFIGS))
def test_members_are_those_recorded_before(runs, name):
    root, procs = runs
    assert procs[name].returncode == 0, procs[name].stderr
    summary = json.loads((root / name / "results.json").read_text())
    got = reference_runs.summarize(reference_runs.CONFIGS[name][0], summary)
    assert len(got) == len(RECORDED[name])
    for now, recorded in zip(got, RECORDED[name]):
        if now.get("status") == "retired":  # retirement (newer than the recording) ends members that miss anyway
            assert recorded["status"] == "exhausted" and now["steps_trained"] <= recorded["steps_trained"], now
            now = {**now, "status": "exhausted", "steps_trained": recorded["steps_trained"]}
        assert now == recorded
