"""Target protocols: the study's streaming rule fires where its hook would; subset stays the default."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_cfg, run_population

from lrlab.engine import loop, population, protocols, stop
from lrlab.optim import optimizers
from lrlab.store import checkpoints
from lrlab.task import target as target_lib
from lrlab.task import task as task_lib
from lrlab.training import settings as settings_lib
from lrlab.training import sweep

BATCH = 4
# A hand-made training accuracy per step (step 1 first): the model below reads it off a table.
ACCURACY = np.array([0.0, 0.25, 0.5, 0.5, 0.5, 1.0, 1.0, 0.75, 1.0, 1.0,
                     1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32)


def study_hook_stop(accuracy, check_every, target, every_step):
    """The study's EarlyStopping (hooks.py) over tf.metrics.accuracy, written without lrlab: the
    metric's update op runs when fetched (every step with LastMetricHook, else every check_every-th
    step), each time adding the batch's correct predictions and size; the hook reads the running
    mean every check_every-th step and stops when it is strictly above the target."""
    total = count = 0.0
    for step, acc in enumerate(accuracy, start=1):
        if every_step or step % check_every == 0:
            total, count = total + acc * BATCH, count + BATCH
        if step % check_every == 0 and total / count > target:
            return step
    return None


class StepCounter(nn.Module):
    """Outputs its one weight w for every example; with loss -w and SGD at rate 1, w = step - 1 at
    step `step`, so a metric can look up that step's hand-made accuracy."""

    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.zeros, ())
        return jnp.broadcast_to(w, (x.shape[0], 1))


def table_task(goal):
    table = jnp.asarray(ACCURACY)
    lookup = lambda out, batch: table[jnp.clip(jnp.round(out[:, 0]).astype(jnp.int32), 0, len(ACCURACY) - 1)]
    train = {"x": np.zeros((40, 1), np.float32)}
    return task_lib.Task(model=StepCounter(), train=train, loss=lambda out, batch: -out[:, 0],
                      metrics={"accuracy": lookup}, target=target_lib.Target("accuracy", goal), eval=train)


@pytest.mark.parametrize("protocol,check_every,goal", [
    ("streaming", 5, 0.7),  # means at 5, 10, 15: 0.5, 0.75 -> stops at 10
    ("streaming", 5, 0.75),  # 0.75 is not above 0.75: the next check, 15 (mean 0.833)
    ("streaming", 2, 0.6),  # every other step: 0.25, 0.375, 0.583, 0.625 -> 8
    ("streaming_every_step", 5, 0.6),  # every batch: 0.35 at 5, 0.65 at 10 -> 10
    ("streaming_every_step", 5, 0.65),  # 0.65 not above: 15 (0.767)
    ("streaming_every_step", 4, 0.99),  # never above within 20 steps: exhausted
])
def test_streaming_rule_fires_where_the_study_hook_would(protocol, check_every, goal):
    expected = study_hook_stop(ACCURACY, check_every, goal, protocol == "streaming_every_step")
    task = table_task(goal)
    settings = settings_lib.SweepSettings(budget=loop.Budget(max_steps=len(ACCURACY), eval_every=check_every),
                                   batch_size=BATCH, progress=False, protocol=protocol)
    cfg = sweep.engine_config(task, optimizers.get("sgd"), settings, eval_chunk=40)
    data = population.make_train_data(task.train, task.eval, 40)
    out = run_population(cfg, [1.0], data, settings.budget)
    steps = int(out.final.steps_to_target[0])
    assert (steps if steps != population.NO_STEP else None) == expected
    mean = out.curves[0]["validation_streaming_accuracy"][-1]  # the running mean at the last check
    last = expected or len(ACCURACY)
    taken = ACCURACY[:last] if protocol == "streaming_every_step" else ACCURACY[check_every - 1:last:check_every]
    np.testing.assert_allclose(mean, taken.mean(), rtol=1e-6)


class StopAfter:
    """A stop signal requested from its `n`-th check on (the runner checks after each chunk)."""

    def __init__(self, n):
        self.n, self.checks = n, 0

    @property
    def requested(self):
        self.checks += 1
        return "SIGTERM" if self.checks >= self.n else None


def test_streaming_mean_resumes_through_a_checkpoint(tmp_path, monkeypatch):
    """Stopped at step 7 (between checks at 5 and 10) and resumed: the running mean still holds steps
    1-7, so it passes 0.65 at step 15 as uninterrupted (a mean restarted at 8 would pass at 10)."""
    monkeypatch.setattr(loop, "STOP_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(loop, "PROBE_STEPS", 1)
    task = table_task(0.65)
    settings = settings_lib.SweepSettings(budget=loop.Budget(max_steps=len(ACCURACY), eval_every=5), batch_size=BATCH,
                                   progress=False, protocol="streaming_every_step")
    cfg = sweep.engine_config(task, optimizers.get("sgd"), settings, eval_chunk=40)
    data = population.make_train_data(task.train, task.eval, 40)
    manager = lambda: checkpoints.RunCheckpoints(tmp_path, {"run": "test"}, every=1, notify=lambda line: None)
    with pytest.raises(stop.Interrupted) as stopped:
        run_population(cfg, [1.0], data, settings.budget, checkpoints=manager(), stop=StopAfter(7))
    assert stopped.value.step == 7
    resumed = run_population(cfg, [1.0], data, settings.budget, checkpoints=manager())
    assert int(resumed.final.steps_to_target[0]) == 15 == study_hook_stop(ACCURACY, 5, 0.65, every_step=True)
    np.testing.assert_allclose(resumed.curves[0]["validation_streaming_accuracy"], [0.35, 0.65, 11.5 / 15], rtol=1e-6)


def test_streaming_needs_at_least_the_subset_protocols_steps(small_data):
    """A cumulative mean of training batches (dropout on) crosses the goal no earlier than the
    instantaneous accuracy on the evaluation subset, on a tiny real run."""
    lrs = [3e-3, 1e-2]
    budget = loop.Budget(max_steps=120, eval_every=10)
    subset = run_population(make_cfg(target=0.8), lrs, small_data, budget, repack=False)
    streaming = run_population(make_cfg(target=0.8, stream_every=10), lrs, small_data, budget, repack=False)
    s_sub, s_str = subset.final.steps_to_target, streaming.final.steps_to_target
    assert (s_sub != population.NO_STEP).all()  # the comparison is not vacuous
    for a, b in zip(s_sub, s_str):
        assert b == population.NO_STEP or (a != population.NO_STEP and b >= a)
    assert (s_str > s_sub).any() or (s_str == population.NO_STEP).any()
    # the subset protocol's program carries no streaming state
    assert subset.final.stream_sum is None and streaming.final.stream_count[0] > 0


def test_protocol_is_validated_and_default_settings_unchanged():
    with pytest.raises(ValueError, match="protocol must be one of subset, streaming, streaming_every_step"):
        settings_lib.SweepSettings(protocol="study")
    assert "protocol" not in settings_lib.SweepSettings().to_json()  # runs from before the field resume
    assert settings_lib.SweepSettings(protocol="streaming").to_json()["protocol"] == "streaming"
    assert protocols.stream_every("streaming", 50) == 50 and protocols.stream_every("streaming_every_step", 50) == 1
