"""Training techniques in the engine: 16-bit compute keeps float32 master weights, float16 loss
scaling skips overflowing steps, batch-norm statistics are per member and used at evaluation,
augmentation is deterministic from the seed, early stopping keeps the best variables, and
successive halving prunes the right members at its rungs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hparams, image_task, make_cfg, run_population

from lrlab.engine import loop, placement, population, segment
from lrlab.optim import optimizers
from lrlab.task import augment, models, sampling
from lrlab.task import task as task_lib
from lrlab.training import pruning, sweep
from lrlab.training import settings as settings_lib

BUDGET = loop.Budget(max_steps=20, eval_every=10)
UNREACHABLE = 1.0  # every evaluation image right: no member gets there in these budgets, all train on


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_bfloat16_keeps_float32_master_weights_and_tracks_float32(small_data):
    f32 = run_population(make_cfg(target=UNREACHABLE), [1e-3, 3e-3], small_data, BUDGET)
    bf16 = run_population(make_cfg(dtype="bfloat16", target=UNREACHABLE), [1e-3, 3e-3], small_data, BUDGET)
    assert all(x.dtype == np.float32 for x in _leaves(bf16.final.params))
    assert all(x.dtype == np.float32 for x in _leaves(bf16.final.opt_state) if np.issubdtype(x.dtype, np.floating))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(bf16.final.params), _leaves(f32.final.params)))
    np.testing.assert_allclose(bf16.final.loss, f32.final.loss, rtol=0.05)  # 16-bit compute, same training


def test_float16_overflow_skips_the_step_and_halves_the_scale(small_data):
    cfg = make_cfg(dtype="float16")
    pop = population.init_population(cfg, hparams("adam", [1e-3, 1e-3]), 0)
    assert np.all(np.asarray(pop.loss_scale) == population.FLOAT16_INITIAL_SCALE)
    pop = pop.replace(loss_scale=jnp.array([population.FLOAT16_INITIAL_SCALE, 2.0**100], jnp.float32))
    before = jax.tree_util.tree_map(np.asarray, pop)  # the segment donates `pop`
    step = placement.make_segment_fn(cfg, 1)
    new, _ = step(pop, small_data, jnp.int32(0), jax.random.PRNGKey(1), jnp.float32(2.0), jnp.int32(10),
                  jnp.bool_(True))
    assert list(np.asarray(new.status)) == [population.RUNNING, population.RUNNING]  # not diverged
    assert float(new.loss_scale[1]) == 2.0**99  # overflowed: halved ...
    same = lambda tree: jax.tree_util.tree_map(lambda x: x[1], tree)
    jax.tree_util.tree_map(np.testing.assert_array_equal, same(new.params), same(before.params))  # ... and skipped
    assert float(new.loss_scale[0]) == population.FLOAT16_INITIAL_SCALE
    assert not np.array_equal(_leaves(new.params)[0][0], _leaves(before.params)[0][0])  # member 0 stepped


def test_batch_norm_statistics_are_per_member_and_equal_independent_runs(small_data):
    cfg = make_cfg(model=models.make_model("small_cnn", batch_norm=True), target=UNREACHABLE)
    together = run_population(cfg, [1e-3, 1e-2], small_data, BUDGET)
    alone = run_population(cfg, [1e-2], small_data, BUDGET)
    stats = together.final.model_state["batch_stats"]
    means = _leaves(stats)
    assert means and all(not np.allclose(x[0], x[1]) for x in means)  # each member its own statistics
    for a, b in zip(_leaves(stats), _leaves(alone.final.model_state["batch_stats"])):
        np.testing.assert_allclose(a[1], b[0], rtol=2e-4, atol=1e-6)
    # evaluation uses the running averages: one image's logits do not depend on the rest of the batch
    model, variables = cfg.task.model.module, jax.tree_util.tree_map(lambda x: x[1], together.final.variables)
    x = augment.to_float(small_data.eval["image"][:8])
    np.testing.assert_allclose(model.apply(variables, x[:1]), model.apply(variables, x)[:1], rtol=1e-5, atol=1e-5)


def test_augmentation_is_deterministic_from_the_seed(small_data):
    images = augment.to_float(small_data.eval["image"][:4])
    a = augment.augment_batch(jax.random.PRNGKey(0), images, 2.0, 10.0)
    np.testing.assert_array_equal(a, augment.augment_batch(jax.random.PRNGKey(0), images, 2.0, 10.0))
    assert not np.allclose(a, augment.augment_batch(jax.random.PRNGKey(1), images, 2.0, 10.0))
    assert not np.allclose(a, images)
    np.testing.assert_allclose(augment.augment_batch(jax.random.PRNGKey(0), images, 0.0, 0.0), images, atol=1e-6)
    cfg = make_cfg(augment=True, target=UNREACHABLE)
    first, second = (run_population(cfg, [3e-3], small_data, BUDGET) for _ in range(2))
    plain = run_population(make_cfg(target=UNREACHABLE), [3e-3], small_data, BUDGET)
    jax.tree_util.tree_map(np.testing.assert_array_equal, first.final.params, second.final.params)
    assert not np.allclose(_leaves(first.final.params)[0], _leaves(plain.final.params)[0])


def test_early_stopping_update_keeps_the_best_and_stops_after_patience():
    pop = population.Population(
        params={"w": jnp.zeros((2, 3))}, opt_state=(), rng=jnp.zeros((2, 2), jnp.uint32),
        member=jnp.arange(2), status=jnp.zeros(2, jnp.int32), steps_trained=jnp.zeros(2, jnp.int32),
        steps_to_target=jnp.full(2, -1), target_value=jnp.zeros(2), loss=jnp.zeros(2),
        best={"params": {"w": jnp.zeros((2, 3))}}, best_score=jnp.full(2, -jnp.inf), evals_since_best=jnp.zeros(2, jnp.int32))
    evaluated = jnp.array([True, True])
    for value, acc in [(1.0, [0.5, 0.5]), (2.0, [0.7, 0.4]), (3.0, [0.6, 0.45]), (4.0, [0.65, 0.3])]:
        variables = {"params": {"w": jnp.full((2, 3), value)}}
        pop = segment.early_stopping_update(pop.replace(params=variables["params"]), variables,
                                            jnp.array(acc, jnp.float32), evaluated, patience=2)
    assert list(np.asarray(pop.status)) == [population.STOPPED, population.STOPPED]
    np.testing.assert_allclose(pop.best_score, [0.7, 0.5])
    restored = segment.restore_best(pop)
    np.testing.assert_array_equal(restored.params["w"], [[2.0] * 3, [1.0] * 3])  # each member's best


@pytest.mark.slow
def test_early_stopping_run_returns_the_best_variables():
    settings = settings_lib.SweepSettings(budget=loop.Budget(60, None, 10), batch_size=32, eval_examples=200, patience=2,
                                   validation_examples=300, progress=False)
    task = image_task(target=UNREACHABLE, n=2000)
    data, chunk = sweep.sweep_data(task, settings)
    assert data.train["label"].shape[0] == 1700 and float(data.val_weight.sum()) == 300  # held out of training
    _, val_idx = sampling.split_validation(2000, 300, 0)
    cfg = sweep.engine_config(task, optimizers.get("adam"), settings, chunk)
    pop = population.init_population(cfg, hparams("adam", [3e-3, 30.0]), 0)
    out = loop.train(pop, data, settings.budget, jax.random.PRNGKey(1), loop.Programs(cfg), progress=False)
    for i in range(2):
        val = np.array(out.curves[i]["val_accuracy"])
        assert out.final.best_score[i] == pytest.approx(val.max())
        accuracy = loop.evaluate_members(cfg, jax.tree_util.tree_map(lambda x: x[i:i + 1], out.final.variables),
                                           task_lib.take(task.train, val_idx))["accuracy"]
        assert accuracy[0] == pytest.approx(val.max(), abs=1e-6)  # the returned variables are the best ones


def test_successive_halving_keeps_the_best_and_prunes_at_the_rung(small_data):
    running, reached, diverged = population.RUNNING, population.REACHED, population.DIVERGED
    status = np.array([running, running, running, running, reached, diverged])
    accuracy = np.array([0.3, 0.9, 0.5, 0.8, 0.97, 0.1])
    cut = pruning.rung_cut(status, accuracy, np.array([-1, -1, -1, -1, 40, -1]), eta=2)
    assert list(cut) == [0, 2]  # top 3 of 6: reached #4, then #1 and #3 by accuracy
    assert pruning.PruneSpec(100, 3).rungs(1000, 30) == [120, 300, 900]
    out = run_population(make_cfg(target=UNREACHABLE), [1e-5, 1e-3, 3e-3, 1e-4], small_data,
                         loop.Budget(40, None, 10), hooks=[pruning.SuccessiveHalving(pruning.PruneSpec(10, 2), 40, 10)])
    acc_at_10 = np.array([c["train_accuracy"][0] for c in out.curves])
    names = [population.STATUS_NAMES[s] for s in out.final.status]
    assert names.count("pruned") == 3  # rungs at 10 (keep 2 of 4) and 20 (keep 1 of 2)
    assert names[int(np.argmax(acc_at_10))] != "pruned" or names.count("exhausted") == 1
    pruned_first = np.argsort(-acc_at_10)[2:]
    assert all(names[i] == "pruned" and out.final.steps_trained[i] == 10 for i in pruned_first)
    assert sorted(out.final.steps_trained) == [10, 10, 20, 40]  # the survivor trains on to the budget
