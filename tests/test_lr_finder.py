"""lr_finder: the ramp, the suggestion rules on synthetic loss curves, the stop at divergence on a
real (tiny) population, and the experiment end to end on small_cnn against a valley we measured.

The subprocesses (one real run, bad flags) start together with the first test, and the real run goes
on while the in-process tests run: the two cores overlap them.
"""

import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import image_task

from lrlab.optim import optimizers, schedules
from lrlab.studies import lr_finder
from lrlab.task import models
from lrlab.training import range_test
from lrlab.training import settings as settings_lib

# The measured valley (runs/mack2018-cpu/lr_valley: small_cnn, Adam, MNIST, batch 100, seed 0, 48 rates
# 1e-6..100, 97% training accuracy): fastest at 0.0147 and 0.0215 (550 steps); 0.01: 700, 0.00464:
# 800, 0.001: 2500 steps; 0.0316 and every rate above it missed 97% within 3000 steps.
VALLEY_BEST = (0.01468, 0.02154)
FIRST_FAILED = 0.03162


def valley_member(lr, status, steps=None):
    return {"optimizer": "adam", "learning_rate": lr, "status": status, "steps_to_target": steps,
            "seconds_to_target": steps and steps / 10.0, "steps_trained": steps or 3000}


VALLEY = {"schema_version": 1, "experiment": "lr_valley", "members": [
    valley_member(0.001, "reached", 2500), valley_member(0.004642, "reached", 800),
    valley_member(0.01, "reached", 700), valley_member(VALLEY_BEST[0], "reached", 550),
    valley_member(VALLEY_BEST[1], "reached", 550), valley_member(FIRST_FAILED, "exhausted"),
    valley_member(1.0, "exhausted")]}


def command(*args):
    return [sys.executable, "-m", "lrlab.experiments.lr_finder", "--noprogress", *args]


class Runs:
    """The experiment's subprocesses, started together at once; `result(name)` waits for one."""

    def __init__(self, root, commands):
        self.root = root
        self.procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                      for name, cmd in commands.items()}
        self.done = {}

    def result(self, name):
        if name not in self.done:
            out, err = self.procs[name].communicate(timeout=600)
            self.done[name] = subprocess.CompletedProcess(self.procs[name].args, self.procs[name].returncode, out, err)
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The real run (small_cnn, Adam, the ramp's defaults but 2 seeds, with the valley above) and
    the bad-flag runs. The first test (bad flags) starts them; the real run goes on in the
    background while the in-process tests run, and the last test waits for it."""
    root = tmp_path_factory.mktemp("finder")
    (root / "valley.json").write_text(json.dumps(VALLEY))
    runs = Runs(root, {
        "real": command("--model=small_cnn", "--optimizer=adam", "--num_seeds=2", "--confirm=3",
                        f"--valley={root / 'valley.json'}", f"--workdir={root / 'real'}"),
        "range": command("--lr_min=1", "--lr_max=0.1", f"--workdir={root / 'bad-range'}"),
        "schedule": command("--schedule=cosine_restarts", f"--workdir={root / 'bad-schedule'}"),
        "valley": command(f"--valley={root / 'nothing-here'}", f"--workdir={root / 'bad-valley'}"),
        "hparam": command("--hparam=b1=0.8,0.9", f"--workdir={root / 'bad-hparam'}"),
    })
    yield runs
    for proc in runs.procs.values():
        if proc.poll() is None:
            proc.kill()


BAD = {"range": ("FATAL Flags parsing error", "--lr_min must be below --lr_max"),
       "schedule": ("FATAL Flags parsing error", "--schedule=cosine_restarts"),
       "valley": ("lrlab: error: ", "--valley="),
       "hparam": ("FATAL Flags parsing error", "give each other hyperparameter one value")}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_flags_one_line(runs, name):
    """One line naming the flag (absl adds its help hint), exit code 1, nothing written."""
    proc = runs.result(name)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("Pass --helpshort")]
    prefix, needle = BAD[name]
    assert len(lines) == 1 and lines[0].startswith(prefix) and needle in lines[0], proc.stderr
    assert not (runs.root / f"bad-{name}").exists()


def test_ramp_factor_is_geometric_from_lr_min_to_lr_max():
    factor = schedules.range_test_factor(1e-8, 100)
    f_T = np.array([float(factor(t)) for t in range(102)])
    lr_T = 10.0 * f_T
    np.testing.assert_allclose(lr_T[0], 1e-7, rtol=1e-5)
    np.testing.assert_allclose(lr_T[99], 10.0, rtol=1e-5)
    np.testing.assert_allclose(lr_T[100:], 10.0, rtol=1e-6)  # held at the peak after the ramp
    np.testing.assert_allclose(lr_T[1:100] / lr_T[:99], 1e8 ** (1 / 99), rtol=1e-4)
    np.testing.assert_allclose(lr_T[:100], range_test.ramp_rates(1e-7, 10.0, 100), rtol=1e-4)
    with pytest.raises(ValueError):
        schedules.range_test_factor(1e-3, 1)


def test_ramped_optimizer_applies_each_members_peak_times_the_ramp():
    """SGD with gradient 1: each step's update is -lr_max_k * factor(t); the peak is per-member data."""
    ramp = schedules.ScheduleSpec(schedules.RANGE_TEST, decay_factor=1e-3, total_steps=5)
    sgd = optimizers.get("sgd")
    tx = sgd.make_tx(ramp)
    params_K = jnp.zeros((2,))
    state = sgd.init_state(params_K, {"learning_rate": np.array([1.0, 3.0], np.float32)}, ramp)
    step = jax.jit(jax.vmap(lambda s: tx.update(jnp.ones(()), s)))
    updates = []
    for _ in range(5):
        u_K, state = step(state)
        updates.append(np.asarray(u_K))
    np.testing.assert_allclose(-np.array(updates).T, np.outer([1.0, 3.0], np.geomspace(1e-3, 1.0, 5)), rtol=1e-5)
    assert state.hyperparams["learning_rate"].shape == (2,)


def test_smoothing_is_fastais_bias_corrected_average():
    np.testing.assert_allclose(range_test.smooth(np.full(50, 2.3)), 2.3)  # bias correction: no ramp-up from 0
    x = np.array([1.0, 3.0])
    np.testing.assert_allclose(range_test.smooth(x, beta=0.5)[1], (0.25 * 1 + 0.5 * 3) / 0.75)
    s = range_test.smooth(np.array([[1.0, np.nan, 1.0], [1.0, 1.0, 1.0]]))
    assert np.isnan(s[0, 1:]).all() and np.isfinite(s[1]).all()  # NaN stays in its own row, and stays


def fastai_valley(losses):
    """fastai's `valley` loops, transcribed literally, as the reference for the vectorized rule."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def fastai_slide(lrs, losses, lr_diff=15, thresh=0.005):
    """fastai's `slide`, transcribed with its negative indices, as the reference for the rule (the index)."""
    loss_grad = np.gradient(np.asarray(losses))
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min = l_idx
    while (l_idx >= -len(losses)) and (abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh):
        local_min = l_idx
        r_idx -= 1
        l_idx -= 1
    return len(losses) + local_min


def test_slide_matches_fastais_loop():
    rng = np.random.default_rng(1)
    lr = np.geomspace(1e-6, 1, 80)
    for scale in (0.001, 0.01, 0.1):
        for _ in range(10):
            loss = np.cumsum(rng.normal(scale=scale, size=80)) + 3
            assert range_test.slide(loss) == fastai_slide(lr, loss)
    assert range_test.slide(np.ones(15)) is None  # shorter than the window: no answer (fastai's index fails)


def ramp_curve(lr, fall_at=1e-3, lowest_at=0.1):
    """Loss flat at 2.3, falling fastest at `fall_at` (a tanh in log lr), lowest at `lowest_at`, then rising."""
    x, top = np.log10(lr), np.log10(lowest_at)
    return np.where(x <= top, 1.3 - np.tanh(2 * (x - np.log10(fall_at))),
                    1.3 - np.tanh(2 * (top - np.log10(fall_at))) + 3 * (x - top) ** 2)


RAMP = np.geomspace(1e-7, 10.0, 160)  # 20 steps a decade


def picks_of(loss, lr=RAMP):
    return {r: None if p is None else p["learning_rate"] for r, p in range_test.suggest(lr, loss, len(lr)).items()}


def test_rules_ignore_an_early_spike():
    """A spike in the first tenth (a bad first batch) neither counts as divergence nor moves any
    rule's answer: fastai's stop rule ends the test there, and its average carries the spike into
    the curve the rules read; lrlab's average and stop rule start afresh after the first tenth."""
    first = range_test.trimmed_start(len(RAMP))
    spiked_raw = ramp_curve(RAMP)
    spiked_raw[3:6] = 40.0
    assert range_test.divergence_step(range_test.smooth(spiked_raw)) == 3  # fastai's rule is fooled
    clean = range_test.smooth(ramp_curve(RAMP), restart=first)
    spiked = range_test.smooth(spiked_raw, restart=first)
    np.testing.assert_array_equal(spiked[first:], clean[first:])
    assert not range_test.all_diverged(spiked[None], start=first)
    assert picks_of(spiked) == picks_of(clean) and all(rate is not None for rate in picks_of(clean).values())


def test_rules_on_a_flat_start():
    """Flat for five decades, then the descent: steep finds the descent, minimum a tenth of the bottom,
    and no rule picks a rate from the flat part."""
    picks = picks_of(ramp_curve(RAMP, fall_at=1e-2, lowest_at=0.3))
    assert picks["steep"] == pytest.approx(1e-2, rel=0.5)
    assert picks["minimum"] == pytest.approx(0.03, rel=0.3)
    assert all(rate > 1e-4 for rate in picks.values())


def test_rules_on_a_curve_that_never_diverges():
    """The loss only falls: the minimum is at the trimmed end, steep at the fastest fall; every rule answers."""
    loss = 1.3 - np.tanh(2 * (np.log10(RAMP) + 3))
    assert range_test.divergence_step(loss) is None
    picks = picks_of(loss)
    assert picks["minimum"] == pytest.approx(RAMP[-6] / 10)
    assert picks["steep"] == pytest.approx(1e-3, rel=0.3)
    assert all(rate is not None for rate in picks.values())


def test_rules_with_nan_at_the_end():
    """The last steps NaN (the ramp blew up): the rules read only the finite part before it."""
    raw = ramp_curve(RAMP)
    raw[-20:] = np.nan
    smoothed = range_test.smooth(raw)
    picks = picks_of(smoothed)
    cut = picks_of(range_test.smooth(ramp_curve(RAMP)[:-20]), RAMP[:-20])
    assert picks == pytest.approx(cut)
    assert all(rate is not None and rate < RAMP[-20] for rate in picks.values())


def test_spread_is_the_ratio_of_the_seeds_extremes():
    seeds = [{r: {"learning_rate": lr} for r in range_test.RULES} for lr in (0.01, 0.04, 0.02)]
    assert range_test.spread(seeds) == {r: pytest.approx(4.0) for r in range_test.RULES}
    seeds[1]["slide"] = None
    assert range_test.spread(seeds)["slide"] is None


def test_rules_on_a_synthetic_curve():
    """Loss flat at 2.3, falling fastest at lr 1e-3 (a tanh in log lr), lowest at 0.1, then rising."""
    lr = np.geomspace(1e-6, 10.0, 141)  # 20 steps a decade
    x = np.log10(lr)
    loss = np.where(x <= -1, 1.3 - np.tanh(2 * (x + 3)), 1.3 - np.tanh(4) + 3 * (x + 1) ** 2)
    lo = int(np.argmin(loss))
    np.testing.assert_allclose(lr[lo], 0.1, rtol=0.01)
    np.testing.assert_allclose(lr[range_test.steep(lr, loss)], 1e-3, rtol=0.15)
    assert range_test.minimum(loss) == lo
    v = range_test.valley(loss)
    assert v == fastai_valley(list(loss))
    assert 0 < v < lo and loss[0] > loss[v] > loss[lo]  # on the way down the longest descent


def test_valley_matches_fastais_loops_on_random_walks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        loss = np.cumsum(rng.normal(size=60)) + 100
        assert range_test.valley(loss) == fastai_valley(list(loss))
    assert range_test.valley(np.arange(5.0)) == 0  # all rising: fastai's index -1 would wrap to the end


def test_suggest_trims_the_start_and_ignores_what_follows_divergence():
    lr = np.geomspace(1e-6, 10.0, 100)
    loss = np.linspace(2.3, 0.5, 100)
    loss[:5] = [9.0, 6.0, 4.0, 3.0, 2.4]  # a steep start: inside the first num_steps // 10, left out
    loss[60:] = 10.0  # diverged (> 4x the minimum so far)...
    loss[80:] = 0.01  # ... so this later dip is not the minimum
    assert range_test.divergence_step(loss) == 60
    picks = range_test.suggest(lr, loss, num_steps=100)
    assert 10 <= picks["steep"]["step"] < 56
    assert picks["minimum"]["step"] == 55  # the last point kept: divergence at 60, 5 more trimmed before it
    assert picks["minimum"]["learning_rate"] == pytest.approx(lr[55] / 10)
    assert 10 <= picks["valley"]["step"] < 55
    assert range_test.suggest(lr[:8], loss[:8], num_steps=100) == {r: None for r in range_test.RULES}


def test_divergence_rule():
    assert range_test.divergence_step(np.array([2.0, 1.0, 3.9, 4.1])) == 3
    assert range_test.divergence_step(np.array([2.0, 1.0, 3.9])) is None
    assert range_test.divergence_step(np.array([2.0, np.nan, 1.0])) == 1
    assert not range_test.all_diverged(np.array([[2.0, 1.0, 5.0], [2.0, 1.0, 3.0]]))
    assert range_test.all_diverged(np.array([[2.0, 1.0, 5.0], [2.0, np.nan, np.nan]]))


def test_range_test_stops_once_every_seed_diverged():
    """SGD ramped to 1e6 on an MLP: every seed's loss blows up well before the ramp ends."""
    settings = settings_lib.SweepSettings(batch_size=32, progress=False)
    res = range_test.lr_range_test(image_task(models.make_model("mlp")), "sgd", 1e-2, 1e6, 60, 2, settings,
                                  segment_steps=5)
    assert res.stopped_early and res.steps_run < 60 and res.steps_run % 5 == 0
    assert range_test.all_diverged(res.smoothed_KS)
    assert not range_test.all_diverged(res.smoothed_KS[:, : res.steps_run - 5])  # not one segment earlier
    assert res.loss_KS.shape == (2, res.steps_run) and res.model_steps == 2 * res.steps_run
    np.testing.assert_allclose(res.lr_S, np.geomspace(1e-2, 1e6, 60)[: res.steps_run])
    assert not np.array_equal(res.loss_KS[0], res.loss_KS[1])  # distinct seeds
    assert res.diverged_at is not None and res.suggested_lr < res.lr_S[res.diverged_at]
    if res.suggestions[range_test.HEADLINE] is None:  # the headline rule has no answer: the next one answers
        assert res.suggested_rule == next(r for r in range_test.SUGGESTION_ORDER if res.suggestions[r] is not None)


def test_versus_valley():
    picks = {"steep": {"learning_rate": 0.1}, "minimum": {"learning_rate": 0.02}, "valley": None}
    c = lr_finder.versus_valley(picks, VALLEY["members"], "adam")
    assert c["best"] == list(VALLEY_BEST) and c["best_steps"] == 550 and c["band"] == [0.001, VALLEY_BEST[1]]
    assert c["minimum"] == {"factor": 1.0, "in_band": True} and c["valley"] is None
    assert c["steep"]["factor"] == pytest.approx(0.1 / VALLEY_BEST[1]) and not c["steep"]["in_band"]
    assert lr_finder.versus_valley(picks, VALLEY["members"], "sgd") is None


def test_real_run_suggests_a_rate_in_the_measured_valley(runs):
    """small_cnn, Adam, MNIST, batch 100, the default ramp (1e-7 to 10 in 100 steps), 2 seeds: the
    minimum / 10 rule lands within 3x of the valley's best 0.0147-0.0215, and below
    0.0316, where training failed (measured: 0.0167; over seeds 0-2 and 1-3 members, 0.017-0.042).
    The confirmation (3 candidates to 97%) finds a rate that reached the target, inside the band."""
    proc = runs.result("real")
    assert proc.returncode == 0, proc.stderr
    workdir = runs.root / "real"
    summary = json.loads((workdir / "results.json").read_text())
    test = summary["tests"]["adam"]
    lr = test["suggestions"]["minimum"]["learning_rate"]
    assert VALLEY_BEST[0] / 3 <= lr < FIRST_FAILED, lr
    assert test["steps_run"] == 100 and len(test["loss_KS"]) == 2 and len(test["lr_S"]) == 100
    assert len(test["seed_suggestions"]) == 2 and set(test["spread"]) == set(range_test.RULES)
    assert summary["versus_valley"]["adam"]["minimum"]["in_band"]
    confirmed = summary["confirmed"]["adam"]
    assert len(confirmed["candidates"]) == 3 and confirmed["best"] is not None
    assert summary["suggested"]["adam"] == confirmed["best"]["learning_rate"]
    assert VALLEY_BEST[0] / 3 <= confirmed["best"]["learning_rate"] < FIRST_FAILED
    assert len(summary["members"]) == 3 and (workdir / "members.csv").exists()
    assert (workdir / "lr_finder.png").stat().st_size > 10_000
    assert f"{range_test.HEADLINE} *" in proc.stdout and "valley best" in proc.stdout and "spread across seeds" in proc.stdout
    grid_steps = sum(m["steps_trained"] for m in VALLEY["members"])
    assert f"adam: confirmed {confirmed['best']['learning_rate']:.4g}" in proc.stdout
    assert f"of the valley grid's {grid_steps:,}" in proc.stdout
    again = subprocess.run(proc.args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "already holds this run's results" in again.stdout and f"{range_test.HEADLINE} *" in again.stdout


@pytest.mark.slow
def test_resume_after_a_kill_during_the_confirmation_equals_an_uninterrupted_run(tmp_path):
    """SIGKILL once the confirmation has checkpointed; the rerun resumes it (the ramp is not run again)
    and every result equals an uninterrupted run's."""
    flags = ["--model=small_cnn", "--optimizer=adam", "--num_seeds=2", "--num_steps=40", "--confirm=3",
             "--max_steps=400", "--eval_every=20", "--target_accuracy=0.9", "--eval_examples=500"]
    whole = subprocess.Popen(command(*flags, f"--workdir={tmp_path / 'whole'}"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(*flags, "--checkpoint_every=1", f"--workdir={killed}"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folder = killed / "checkpoints" / "adam-confirm"
    deadline = time.time() + 300
    while not (folder.exists() and any((p / "files.json").exists() for p in folder.iterdir() if p.name.isdigit())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert not (killed / "results.json").exists()
    again = subprocess.run(command(*flags, "--checkpoint_every=1", f"--workdir={killed}"), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "lrlab: resuming from step" in again.stdout
    assert whole.wait(timeout=600) == 0, whole.communicate()

    def outcome(workdir):
        summary = json.loads((workdir / "results.json").read_text())
        fields = ("learning_rate", "status", "steps_to_target", "steps_trained", "final_train_accuracy")
        return (summary["tests"]["adam"]["suggestions"], summary["confirmed"]["adam"]["best"],
                summary["confirmed"]["adam"]["model_steps"], [{k: m[k] for k in fields} for m in summary["members"]])

    assert outcome(killed) == outcome(tmp_path / "whole")


def test_the_range_test_alone_saves_its_results_without_member_views(tmp_path):
    """--confirm=0: nothing is trained to the target, so there are no member views to write."""
    settings = settings_lib.SweepSettings(batch_size=32, progress=False)
    result = lr_finder.lr_finder(image_task(models.make_model("mlp")), ["sgd"], settings, tmp_path / "run",
                                 num_steps=30, num_seeds=2, confirm=0)
    assert result.summary["confirmed"] == {} and result.summary["members"] == []
    assert (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "members.csv").exists()
    assert result.summary["suggested_by"]["sgd"] in range_test.RULES
