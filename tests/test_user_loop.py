"""The benchmarks' user baseline (benchmarks/user_loop.py: plain Flax + Optax, no lrlab) is the same
network and the same run as lrlab's, so population_vs_sequential's end-to-end ratios compare equals."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hparams, image_task, load_mnist

from lrlab.engine import config, loop, population
from lrlab.optim import optimizers
from lrlab.task import augment, models, sampling

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import user_loop  # noqa: E402


@pytest.mark.parametrize("name", ["small_cnn", "tutorial_cnn"])
def test_user_models_equal_lrlab_models(name):
    """Same parameter tree, count and initial values from the same key; same logits."""
    key = jax.random.fold_in(jax.random.PRNGKey(0), 0)
    x0 = jnp.zeros((1, 28, 28, 1))
    theirs = models.make_model(name, conv_impl="xla")
    ours = user_loop.MODELS[name]()
    p_lrlab, p_user = theirs.init(key, x0)["params"], ours.init(key, x0)["params"]
    assert jax.tree_util.tree_structure(p_lrlab) == jax.tree_util.tree_structure(p_user)
    assert models.param_count(p_user) == {"small_cnn": 3478, "tutorial_cnn": 3274634}[name]
    jax.tree_util.tree_map(np.testing.assert_array_equal, p_lrlab, p_user)
    x = augment.to_float(jnp.asarray(load_mnist().train_images[:16]))
    np.testing.assert_allclose(theirs.apply({"params": p_lrlab}, x), ours.apply({"params": p_user}, x),
                               rtol=1e-5, atol=1e-5)


def test_user_loop_table_equals_population():
    """On the 1,000-image slice: the user's loop, given lrlab's keys, reaches the target at the same
    evaluations as an lrlab population of the same rates (and misses where it misses)."""
    lrs, target, budget = [1e-4, 1e-2, 1.0], 0.8, loop.Budget(max_steps=300, eval_every=50)
    task = image_task(target=target)
    train, eval_idx = task.train, np.arange(200)
    data = population.make_train_data(train, {k: v[eval_idx] for k, v in train.items()}, eval_chunk=100)
    cfg = config.EngineConfig(task=task, optimizer=optimizers.get("adam"), eval_chunk=100)
    pop = population.init_population(cfg, hparams("adam", lrs), 0)
    out = loop.train(pop, data, budget, sampling.data_key(0), loop.Programs(cfg), progress=False)
    root = jax.random.PRNGKey(0)
    keys = {"init": jax.random.fold_in(root, 0), "data": sampling.data_key(0),
            "dropout": jax.random.fold_in(root, population.DROPOUT_SALT)}
    user_data = {"train_image": jnp.asarray(train["image"]), "train_label": jnp.asarray(train["label"]),
                 "eval_image": jnp.asarray(train["image"][eval_idx]),
                 "eval_label": jnp.asarray(train["label"][eval_idx])}
    runs = user_loop.valley("small_cnn", lrs, user_data, keys, budget.max_steps, budget.eval_every, target)
    statuses = [population.STATUS_NAMES[s] for s in np.asarray(out.final.status)]
    assert [r.reached for r in runs] == [s == "reached" for s in statuses]
    assert "reached" in statuses and "exhausted" in statuses  # the check can fail both ways
    steps = np.asarray(out.final.steps_to_target)
    for r, s in zip(runs, steps):
        if r.reached:
            assert r.steps_to_target == s
