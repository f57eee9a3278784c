"""TF1 semantics of the registry; hyperparameters are per-member data, never recompiled."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrlab
from lrlab.optim import members as members_lib
from lrlab.optim import optimizers


def _one_step(name, grad, lr, **hp):
    opt = optimizers.get(name)
    tx = opt.make_tx()
    params = {"w": jnp.zeros(3)}
    hparams = members_lib.population_hparams(name, [lr], hp)
    state = opt.init_state(jax.tree_util.tree_map(lambda x: x[None], params), hparams)
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
    tx = optimizers.get("momentum").make_tx()
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
    assert optimizers.get("adam").defaults() == {"b1": 0.9, "b2": 0.999, "eps": 1e-8}
    update, _ = _one_step("adam", G, 0.001)
    np.testing.assert_allclose(update, -0.001 * np.sign(G) * np.abs(G) / (np.abs(G) + 1e-8), rtol=1e-4)


def test_flag_override_changes_hyperparameter():
    hparams = members_lib.population_hparams("momentum", [0.1, 0.2], {"momentum": 0.9, "b1": 0.1})  # b1: not momentum's
    assert set(hparams) == {"learning_rate", "momentum"}
    np.testing.assert_array_equal(hparams["momentum"], np.float32([0.9, 0.9]))


@pytest.mark.parametrize("text,expected", [("adam", ["adam"]), ("sgd, adam", ["sgd", "adam"]),
                                           ("all", list(optimizers.STUDY_OPTIMIZERS))])
def test_parse_optimizer_list(text, expected):
    assert optimizers.parse_optimizer_list(text) == expected


@pytest.mark.parametrize("text", ["adamw", "", "adam,adam", "sgd,nope"])
def test_parse_optimizer_list_rejects(text):
    with pytest.raises(ValueError):
        optimizers.parse_optimizer_list(text)


def test_adagrad_initial_accumulator_is_per_member():
    """A hyperparameter used only at initialisation still differs per member (vmapped init)."""
    opt = optimizers.get("adagrad")
    hparams = members_lib.population_hparams("adagrad", [0.1, 0.1])
    hparams["initial_accumulator"] = np.array([0.1, 2.0], np.float32)
    state = opt.init_state({"w": jnp.zeros((2, 3))}, hparams)
    updates, _ = jax.vmap(opt.make_tx().update)({"w": jnp.ones((2, 3))}, state, {"w": jnp.zeros((2, 3))})
    np.testing.assert_allclose(updates["w"][:, 0], -0.1 / np.sqrt(np.array([0.1, 2.0]) + 1.0), rtol=1e-5)


def test_any_factory_of_named_floats_is_an_optimizer():
    opt = optimizers.optimizer(lambda learning_rate, weight_decay=1e-4: optax.adamw(learning_rate,
                                                                                    weight_decay=weight_decay),
                               name="adamw")
    assert opt.names == ("learning_rate", "weight_decay") and opt.defaults() == {"weight_decay": 1e-4}
    members = members_lib.grid(opt, learning_rate=[1e-3, 1e-2], weight_decay=[0.0, 0.1, 0.2])
    assert members.size == 6 and members.varying() == ["learning_rate", "weight_decay"]
    np.testing.assert_allclose(members.hparams["weight_decay"], [0.0, 0.1, 0.2] * 2, rtol=1e-6)
    np.testing.assert_allclose(members.hparams["learning_rate"], [1e-3] * 3 + [1e-2] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match="name every hyperparameter"):
        optimizers.optimizer(lambda learning_rate, **kw: optax.sgd(learning_rate))
    with pytest.raises(ValueError, match="learning_rate"):
        optimizers.optimizer(lambda lr: optax.sgd(lr))
    with pytest.raises(ValueError, match="give weight_decay"):
        members_lib.grid(optimizers.optimizer(lambda learning_rate, weight_decay: optax.adamw(learning_rate)),
                        learning_rate=[0.1])


def test_bad_values_are_refused_by_the_range_table():
    with pytest.raises(ValueError, match=r"b1 must be finite and in \[0, 1\), got 1.5"):
        members_lib.grid("adam", learning_rate=[1e-3], b1=1.5)
    with pytest.raises(ValueError, match="learning_rate must be finite and in"):
        members_lib.grid("sgd", learning_rate=[-1.0])
    with pytest.raises(ValueError, match="adam has no hyperparameter momentum"):
        members_lib.grid("adam", learning_rate=[1e-3], momentum=0.9)


def test_the_command_line_flags_are_the_registry():
    from lrlab.experiments import common_flags

    for _flag, (opt, hp) in common_flags.HPARAM_FLAGS.items():
        assert optimizers.REGISTRY[opt].hparams[hp].default is not None
    assert {"momentum", "adam_b1", "adam_b2", "adam_eps", "adagrad_initial_accumulator", "adadelta_rho",
            "adadelta_eps", "rmsprop_decay", "rmsprop_eps", "rmsprop_initial_scale"} == set(common_flags.HPARAM_FLAGS)


def test_new_learning_rates_do_not_recompile():
    opt = optimizers.get("adam")
    tx = opt.make_tx()
    params_K = {"w": jnp.zeros((4, 3))}

    @jax.jit
    def step(state, g):
        return jax.vmap(tx.update)(g, state)

    for lrs in ([1e-3, 1e-2, 0.1, 1.0], [5.0, 6.0, 7.0, 8.0]):
        hp = {"learning_rate": np.array(lrs, np.float32)}
        state = opt.init_state(params_K, {**members_lib.population_hparams("adam", lrs), **hp})
        updates, _ = step(state, {"w": jnp.ones((4, 3))})
        np.testing.assert_allclose(updates["w"][:, 0], -np.array(lrs), rtol=1e-4)
    assert step._cache_size() == 1


def test_an_optax_factory_passes_as_it_is():
    """optax.adamw's float arguments are hyperparameters; mu_dtype, mask and nesterov keep their
    defaults (static settings); a grid over a static setting or over bools is one line."""
    adamw = optimizers.optimizer(optax.adamw)
    assert {"learning_rate", "b1", "b2", "eps", "weight_decay"} <= set(adamw.hparams)
    assert {"mu_dtype", "mask", "nesterov"} <= set(adamw.static)
    members = lrlab.grid(optax.adamw, learning_rate=[1e-3, 1e-2], weight_decay=[1e-4])
    assert members.size == 2 and members.hparams["weight_decay"].tolist() == pytest.approx([1e-4, 1e-4])
    with pytest.raises(ValueError, match="nesterov is a static setting of adamw"):
        lrlab.grid(optax.adamw, learning_rate=[1e-3], nesterov=[True, False])
    with pytest.raises(ValueError, match="weight_decay: hyperparameter values are numbers, got bool"):
        lrlab.grid(optax.adamw, learning_rate=[1e-3], weight_decay=[True])
    nesterov = optimizers.optimizer(optax.adamw, nesterov=True)
    assert nesterov.static["nesterov"] is True and nesterov.factory.keywords == {"nesterov": True}


def test_a_factory_that_returns_no_transformation_is_one_line():
    bad = optimizers.optimizer(lambda learning_rate: learning_rate * 2, name="bad")
    with pytest.raises(ValueError, match="bad: the factory returned float, not an optax.GradientTransformation"):
        bad.init_state({"w": np.zeros((1, 3), np.float32)}, {"learning_rate": np.ones(1, np.float32)})
