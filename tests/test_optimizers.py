"""TF1 semantics of the registry; hyperparameters are per-member data, never recompiled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrlab import optimizers


def _one_step(name, grad, lr, **hp):
    tx = optimizers.make_optimizer(name)
    params = {"w": jnp.zeros(3)}
    hparams = optimizers.population_hparams(name, [lr], hp)
    state = optimizers.init_population_state(tx, jax.tree_util.tree_map(lambda x: x[None], params), hparams)
    state = jax.tree_util.tree_map(lambda x: x[0], state)
    updates, state = tx.update({"w": grad}, state, params)
    return np.asarray(updates["w"]), state


G = jnp.array([0.5, -2.0, 1e-3])


def test_rmsprop_matches_tf1_first_step():
    # TF1: ms starts at 1; ms = 0.9 ms + 0.1 g^2; update = -lr g / sqrt(ms + 1e-10)
    ms = 0.9 + 0.1 * G**2
    update, _ = _one_step("rmsprop", G, 0.01)
    np.testing.assert_allclose(update, -0.01 * G / np.sqrt(ms + 1e-10), rtol=1e-6)


def test_adagrad_matches_tf1_first_step():
    update, _ = _one_step("adagrad", G, 0.1)  # accum = 0.1 + g^2, no epsilon
    np.testing.assert_allclose(update, -0.1 * G / np.sqrt(0.1 + G**2), rtol=1e-6)


def test_momentum_matches_tf1_two_steps():
    # TF1 MomentumOptimizer(lr, 0.5): a = 0.5 a + g; update = -lr a
    tx = optimizers.make_optimizer("momentum")
    state = tx.init({"w": jnp.zeros(3)})
    state.hyperparams["learning_rate"] = jnp.asarray(0.1)
    first, state = tx.update({"w": G}, state)
    second, state = tx.update({"w": G}, state)
    np.testing.assert_allclose(first["w"], -0.1 * G, rtol=1e-6)
    np.testing.assert_allclose(second["w"], -0.1 * 1.5 * G, rtol=1e-6)


def test_adadelta_matches_tf1_first_step():
    rho, eps = 0.95, 1e-8
    acc = (1 - rho) * G**2
    expected = -1.0 * np.sqrt(0 + eps) / np.sqrt(acc + eps) * G
    update, _ = _one_step("adadelta", G, 1.0)
    np.testing.assert_allclose(update, expected, rtol=1e-5)


def test_adam_defaults_are_tf1():
    assert optimizers.default_hparams("adam") == {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
    update, _ = _one_step("adam", G, 0.001)
    np.testing.assert_allclose(update, -0.001 * np.sign(G) * np.abs(G) / (np.abs(G) + 1e-8), rtol=1e-4)


def test_flag_override_changes_hyperparameter():
    assert optimizers.default_hparams("momentum", {"momentum": 0.9, "b1": 0.1}) == {"momentum": 0.9}


@pytest.mark.parametrize("text,expected", [("adam", ["adam"]), ("sgd, adam", ["sgd", "adam"]),
                                           ("all", list(optimizers.OPTIMIZERS))])
def test_parse_optimizer_list(text, expected):
    assert optimizers.parse_optimizer_list(text) == expected


@pytest.mark.parametrize("text", ["adamw", "", "adam,adam", "sgd,nope"])
def test_parse_optimizer_list_rejects(text):
    with pytest.raises(ValueError):
        optimizers.parse_optimizer_list(text)


def test_new_learning_rates_do_not_recompile():
    tx = optimizers.make_optimizer("adam")
    params_K = {"w": jnp.zeros((4, 3))}

    @jax.jit
    def step(state, g):
        return jax.vmap(tx.update)(g, state)

    for lrs in ([1e-3, 1e-2, 0.1, 1.0], [5.0, 6.0, 7.0, 8.0]):
        hp = {"learning_rate": np.array(lrs, np.float32)}
        state = optimizers.init_population_state(tx, params_K, hp)
        updates, _ = step(state, {"w": jnp.ones((4, 3))})
        np.testing.assert_allclose(updates["w"][:, 0], -np.array(lrs), rtol=1e-4)
    assert step._cache_size() == 1
