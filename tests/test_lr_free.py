"""The learning-rate-free family (optim/lr_free.py) on the engine: a population of two members equals
two plain Flax + Optax runs written here (the loss passed as `value` where the method reads it), and
a schedule-free method is evaluated at its averaged point."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import hparams, image_task, small_data  # noqa: F401 - small_data: a fixture

from lrlab.engine import config, loop, population
from lrlab.optim import lr_free, optimizers
from lrlab.task import models, sampling

STEPS, BATCH = 12, 32
MULTIPLIERS = [1.0, 0.3]
# The methods as a user writes them with Optax, at a multiplier m of their own step size.
PLAIN = {
    "prodigy": lambda m: optax.contrib.prodigy(m),
    "dadapt_adamw": lambda m: optax.contrib.dadapt_adamw(m),
    "dog": lambda m: optax.contrib.dog(m),
    "dowg": lambda m: optax.contrib.dowg(m),
    "cocob": lambda m: optax.contrib.cocob(m),
    "mechanize": lambda m: optax.contrib.mechanize(optax.adam(m)),
    "momo": lambda m: optax.contrib.momo(m),
    "momo_adam": lambda m: optax.contrib.momo_adam(0.01 * m),
    "polyak_sgd": lambda m: optax.polyak_sgd(scaling=m),
    "schedule_free_adamw": lambda m: optax.contrib.schedule_free_adamw(0.0025 * m),
    "schedule_free_sgd": lambda m: optax.contrib.schedule_free_sgd(m),
}
TAKES_VALUE = {"momo", "momo_adam", "polyak_sgd"}


def test_every_method_is_a_registry_entry_with_its_properties():
    assert set(PLAIN) == set(lr_free.METHODS) and set(PLAIN) <= set(optimizers.REGISTRY)
    for name in PLAIN:
        opt = optimizers.get(name)
        assert opt.lr_free and opt.hparams["learning_rate"].default == 1.0
        assert opt.needs_value == (name in TAKES_VALUE)
        assert (opt.eval_params is not None) == name.startswith("schedule_free")
    assert optimizers.parse_optimizer_list("all") == list(optimizers.STUDY_OPTIMIZERS)
    assert optimizers.optimizer(optax.contrib.momo).needs_value  # an Optax function passed as it is
    assert optimizers.optimizer(optax.contrib.schedule_free_adamw).eval_params is not None


def batch_order(key, step, n):
    """The shared batch order, written out: epochs of argsort(random bits) of the examples."""
    epoch, offset = jnp.divmod(step, n // BATCH)
    perm = jnp.argsort(jax.random.bits(jax.random.fold_in(key, epoch), (n,), jnp.uint32))
    return jax.lax.dynamic_slice_in_dim(perm, offset * BATCH, BATCH)


def plain_run(name, multiplier, params0, train):
    """The loop a user writes without lrlab: the MLP, cross-entropy, the method from Optax."""
    module = models.make_model("mlp")
    tx = PLAIN[name](multiplier)
    images, labels, n = jnp.asarray(train["image"]), jnp.asarray(train["label"]), len(train["label"])
    key = sampling.data_key(0)

    def loss_fn(params, idx):
        logits = module.apply({"params": params}, images[idx].astype(jnp.float32) / 255.0)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx].astype(jnp.int32)).mean()

    @jax.jit
    def step(params, state, t):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch_order(key, t, n))
        extra = {"value": loss} if name in TAKES_VALUE else {}
        updates, state = tx.update(grads, state, params, **extra)
        return optax.apply_updates(params, updates), state

    params, state = params0, tx.init(params0)
    for t in range(STEPS):
        params, state = step(params, state, t)
    return params, state


FAST = ("prodigy", "momo", "schedule_free_sgd")  # one of each kind: plain, reads the loss, evaluates elsewhere


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in PLAIN])
def test_a_population_equals_plain_optax_runs(name, small_data):  # noqa: F811
    task = image_task(models.make_model("mlp"))
    cfg = config.EngineConfig(task=task, optimizer=optimizers.get(name), batch_size=BATCH, eval_chunk=100)
    pop = population.init_population(cfg, hparams(name, MULTIPLIERS), 0)
    params0 = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], pop.params)
    out = loop.train(pop, small_data, loop.Budget(max_steps=STEPS, eval_every=STEPS), sampling.data_key(0),
                     loop.Programs(cfg), progress=False)
    for i, m in enumerate(MULTIPLIERS):
        want, _ = plain_run(name, m, params0, task.train)
        got = jax.tree_util.tree_map(lambda x: np.asarray(x)[i], out.final.params)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), got, want)
    first = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], out.final.params)
    second = jax.tree_util.tree_map(lambda x: np.asarray(x)[1], out.final.params)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                                       jax.tree_util.tree_leaves(second)))  # the multiplier acts


def test_schedule_free_is_evaluated_at_its_averaged_point(small_data):  # noqa: F811
    """schedule_free_sgd at a large step: the accuracy the engine records (the target's) is the model's
    at optax's schedule_free_eval_params, not at the trained iterate, and the two differ here."""
    task = image_task(models.make_model("mlp"))
    cfg = config.EngineConfig(task=task, optimizer=optimizers.get("schedule_free_sgd"), batch_size=BATCH,
                              eval_chunk=100)
    pop = population.init_population(cfg, hparams("schedule_free_sgd", [1.0]), 0)
    out = loop.train(pop, small_data, loop.Budget(max_steps=30, eval_every=30), sampling.data_key(0),
                     loop.Programs(cfg), progress=False)
    final = out.final
    inner = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], final.opt_state.inner_state)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x)[0], final.params)
    module = models.make_model("mlp")
    eval_images = jnp.asarray(task.train["image"][:200]).astype(jnp.float32) / 255.0
    labels = np.asarray(task.train["label"][:200])

    def accuracy(p):
        return float(np.mean(np.argmax(np.asarray(module.apply({"params": p}, eval_images)), -1) == labels))

    at_eval_point = accuracy(optax.contrib.schedule_free_eval_params(inner, params))
    at_iterate = accuracy(params)
    assert at_eval_point != at_iterate  # the check can fail
    assert out.curves[0]["train_accuracy"][-1] == pytest.approx(at_eval_point, abs=1e-6)


def test_a_schedule_free_method_refuses_a_schedule():
    from lrlab.optim import schedules

    with pytest.raises(ValueError, match="schedule_free_adamw takes no learning-rate schedule"):
        optimizers.get("schedule_free_adamw").make_tx(schedules.ScheduleSpec("exponential", decay_factor=0.1, total_steps=100))


def test_a_factory_that_needs_the_loss_undeclared_is_one_line_before_any_work():
    """A user's chain around momo needs `value`, which lrlab passes only when told: refused at init,
    naming the fix; declared, it trains."""
    def clipped_momo(learning_rate):
        return optax.chain(optax.clip_by_global_norm(1.0), optax.contrib.momo(learning_rate))

    params_K = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=r"clipped_momo: its update needs each step's loss \(value=\): declare it"):
        optimizers.optimizer(clipped_momo).init_state(params_K, {"learning_rate": [1.0, 0.5]})
    declared = optimizers.optimizer(clipped_momo, needs_value=True)
    assert declared.needs_value
    declared.init_state(params_K, {"learning_rate": [1.0, 0.5]})
