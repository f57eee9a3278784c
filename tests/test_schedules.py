"""Schedules: Optax's values per step, the peak rate per member, each member's own step count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrlab.optim import members, optimizers
from lrlab.optim.schedules import ScheduleSpec, factor_schedule

STEPS = np.arange(0, 120)


@pytest.mark.parametrize("spec,reference", [
    (ScheduleSpec("constant"), optax.constant_schedule(1.0)),
    (ScheduleSpec("step", decay_steps=25, decay_factor=0.5), optax.exponential_decay(1.0, 25, 0.5, staircase=True)),
    (ScheduleSpec("exponential", decay_steps=25, decay_factor=0.5), optax.exponential_decay(1.0, 25, 0.5)),
    (ScheduleSpec("one_cycle", total_steps=100), optax.cosine_onecycle_schedule(100, 1.0)),
])
def test_factors_are_optax_schedules(spec, reference):
    np.testing.assert_allclose([factor_schedule(spec)(t) for t in STEPS], [reference(t) for t in STEPS], rtol=1e-6)


def test_sgdr_restarts_with_growing_periods():
    f = factor_schedule(ScheduleSpec("cosine_restarts", period=10, period_mult=2.0, total_steps=100))
    values = np.array([float(f(t)) for t in STEPS[:71]])
    assert values[0] == 1.0 and values[10] == 1.0 and values[30] == 1.0 and values[70] == 1.0  # restarts
    np.testing.assert_allclose(values[5], 0.5, atol=1e-6)  # half-way down the first 10-step cosine
    np.testing.assert_allclose(values[20], 0.5, atol=1e-6)  # half-way down the second, 20 steps long
    assert np.all(np.diff(values[:10]) < 0) and np.all(np.diff(values[10:30]) < 0)


def test_warmup_ramps_linearly_to_the_peak_then_follows_the_schedule():
    f = factor_schedule(ScheduleSpec("step", decay_steps=10, decay_factor=0.1, warmup_steps=4))
    np.testing.assert_allclose([float(f(t)) for t in (0, 1, 2, 4, 13, 14, 24)], [0, 0.25, 0.5, 1, 1, 0.1, 0.01],
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_each_members_rate_is_its_peak_times_the_factor(optimizer):
    """Per-member peaks, vmapped: SGD's update at step t is -peak * factor(t) * gradient."""
    spec = ScheduleSpec("step", decay_steps=2, decay_factor=0.5, warmup_steps=0)
    opt = optimizers.get(optimizer)
    tx = opt.make_tx(schedule=spec)
    peaks = np.array([0.1, 1.0, 3.0], np.float32)
    hparams = members.population_hparams(optimizer, peaks, {"momentum": 0.0})
    params = {"w": jnp.zeros((3, 2))}
    state = opt.init_state(params, hparams, schedule=spec)
    grads = {"w": jnp.ones((3, 2))}
    for t in range(5):
        updates, state = jax.vmap(tx.update)(grads, state, params)
        np.testing.assert_allclose(updates["w"][:, 0], -peaks * 0.5 ** (t // 2), rtol=1e-6)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        ScheduleSpec("linear")
    with pytest.raises(ValueError, match="decay_factor"):
        ScheduleSpec("step", decay_factor=1.5)


def test_a_scheduled_valley_runs_and_records_its_schedule(tmp_path):
    import json
    import subprocess
    import sys

    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "lrlab.experiments.lr_valley", "--optimizer=adam", "--num_lrs=2",
                           "--lr_min=1e-3", "--lr_max=1e-2", "--max_steps=30", "--eval_every=10",
                           "--eval_examples=250", "--batch_size=32", "--noprogress", "--schedule=cosine_restarts",
                           "--sgdr_period=10", "--warmup_steps=5", f"--workdir={workdir}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    flags = json.loads((workdir / "results.json").read_text())["flags"]
    assert (flags["schedule"], flags["sgdr_period"], flags["warmup_steps"]) == ("cosine_restarts", 10, 5)
