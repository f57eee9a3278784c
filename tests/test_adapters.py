"""Linen and NNX models behind one interface; their convolutions lowered as matmuls compute the plain
model's function (values and gradients), and the layers that cannot be lowered run as written and
are named."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lrlab.task import adapters, conv

# The nn.Conv configurations the Flax examples use: strides, SAME / VALID / explicit padding, kernel
# sizes 1 to 7, with and without bias.
CONVS = [dict(features=6, kernel_size=(7, 7), strides=(2, 2)),
         dict(features=5, kernel_size=(3, 3), padding="VALID", use_bias=False),
         dict(features=4, kernel_size=(1, 1)),
         dict(features=4, kernel_size=(5, 5), padding=((2, 1), (0, 2))),
         dict(features=3, kernel_size=(2, 2), strides=(2, 1), padding="SAME")]


class LinenNet(nn.Module):
    """nn.Conv layers of every covered configuration, batch norm and dropout between them."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for spec in CONVS:
            x = nn.relu(nn.Conv(**spec)(x))
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dropout(0.3, deterministic=not train)(x.mean(axis=(1, 2)))
        return nn.Dense(10)(x)


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        channels = [1] + [spec["features"] for spec in CONVS]
        self.convs = nnx.List([nnx.Conv(c_in, spec["features"], rngs=rngs,
                                        **{k: v for k, v in spec.items() if k != "features"})
                               for c_in, spec in zip(channels, CONVS)])
        self.norm = nnx.BatchNorm(channels[-1], rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.dense = nnx.Linear(channels[-1], 10, rngs=rngs)

    def __call__(self, x):
        for layer in self.convs:
            x = nnx.relu(layer(x))
        return self.dense(self.dropout(self.norm(x).mean(axis=(1, 2))))


def _outputs_and_grads(model, variables, x, train, formulation):
    @jax.jit
    def run(variables, x):
        def loss(params):
            out, state = model.apply({**variables, "params": params}, x, train, jax.random.PRNGKey(7), formulation)
            return jnp.sum(jnp.sin(out)), (out, state)

        (_, (out, state)), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return out, state, grads

    return run(variables, x)


@pytest.mark.parametrize("make,train,formulation", [(LinenNet, True, conv.MATMUL), (LinenNet, False, conv.CANONICAL),
                                                    (lambda: (lambda rngs: NNXNet(rngs)), True, conv.CANONICAL),
                                                    (lambda: (lambda rngs: NNXNet(rngs)), False, conv.MATMUL)],
                         ids=["linen-train-matmul", "linen-eval-canonical", "nnx-train-canonical", "nnx-eval-matmul"])
def test_lowered_model_equals_plain_model(make, train, formulation):
    model = adapters.as_model(make())
    x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
    variables = model.init(jax.random.PRNGKey(1), x)
    assert set(adapters.conv_layers(model, x).values()) == {adapters.LOWERED}
    plain, lowered = (_outputs_and_grads(model, variables, x, train, f) for f in (conv.XLA, formulation))
    for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(lowered)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    program = str(jax.make_jaxpr(lambda v: model.apply(v, x, train, jax.random.PRNGKey(7), formulation)[0])(variables))
    if formulation == conv.MATMUL:
        assert "conv_general_dilated" not in program  # every convolution became a matmul
    else:
        assert "custom_vjp_call" in program  # every convolution has its canonical gradient
    assert "conv_general_dilated" in str(jax.make_jaxpr(lambda v: model.apply(v, x, train, jax.random.PRNGKey(7))[0])(
        variables))


class Unsupported(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), name="plain")(x)
        x = nn.Conv(4, (3, 3), kernel_dilation=2, name="dilated")(x)
        x = nn.Conv(4, (3, 3), feature_group_count=2, name="grouped")(x)
        x = nn.Conv(4, (3,), name="one_d")(x.reshape(x.shape[0], -1, 4))
        return x.reshape(x.shape[0], -1)


def test_unsupported_layers_run_as_written_and_say_so():
    model = adapters.as_model(Unsupported())
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    assert adapters.conv_layers(model, x) == {"plain": adapters.LOWERED, "dilated": "as written (dilation)",
                                              "grouped": "as written (feature_group_count=2)",
                                              "one_d": "as written (1-D convolution)"}
    variables = model.init(jax.random.PRNGKey(1), x)
    np.testing.assert_allclose(model.apply(variables, x, False, conv=conv.MATMUL)[0],
                               model.apply(variables, x, False)[0], rtol=1e-5, atol=1e-5)
    program = str(jax.make_jaxpr(lambda v: model.apply(v, x, False, conv=conv.MATMUL)[0])(variables))
    assert program.count("conv_general_dilated") == 3  # all but the plain one


def test_a_conv_of_its_own_is_left_alone():
    """A layer given its own conv_general_dilated keeps it: lrlab lowers only lax's."""
    calls = []

    def own(*args, **kwargs):
        calls.append(1)
        return jax.lax.conv_general_dilated(*args, **kwargs)

    class Own(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(2, (3, 3), conv_general_dilated=own)(x)

    model = adapters.as_model(Own())
    x = jnp.ones((1, 5, 5, 1))
    assert adapters.conv_layers(model, x) == {}
    model.apply(model.init(jax.random.PRNGKey(0), x), x, False, conv=conv.MATMUL)
    assert calls


def test_linen_and_nnx_modes_and_state():
    """Training updates batch statistics and draws dropout from the key; evaluation does neither."""
    for model in (adapters.as_model(LinenNet()), adapters.as_model(lambda rngs: NNXNet(rngs))):
        x = jax.random.uniform(jax.random.PRNGKey(0), (4, 28, 28, 1))
        variables = model.init(jax.random.PRNGKey(1), x)
        state = {k: v for k, v in variables.items() if k != "params"}
        _, trained_state = model.apply(variables, x, True, jax.random.PRNGKey(2))
        _, eval_state = model.apply(variables, x, False)
        changed = lambda a, b: any(not np.array_equal(p, q) for p, q in zip(jax.tree_util.tree_leaves(a),  # noqa: E731
                                                                            jax.tree_util.tree_leaves(b)))
        assert changed(trained_state, state) and not changed(eval_state, state)
        a, _ = model.apply(variables, x, True, jax.random.PRNGKey(2))
        b, _ = model.apply(variables, x, True, jax.random.PRNGKey(3))
        assert not np.allclose(a, b)  # dropout follows the key
