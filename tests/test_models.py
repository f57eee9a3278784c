"""lrlab's models: the same logits in either convolution formulation, the documented sizes, the
reordered conv block equal to the textbook one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrlab.task import conv, models


def test_models_give_same_logits_with_either_lowering():
    x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
    a, b = models.make_model("small_cnn", conv_impl="matmul"), models.make_model("small_cnn", conv_impl="xla")
    params = a.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(a.apply(params, x), b.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,width,expected", [
    ("small_cnn", 1.0, 3478),
    ("tutorial_cnn", 1.0, 3_274_634),  # 832 + 51,264 + 3,212,288 + 10,250
    ("tutorial_cnn", 2.0, 13_074_186),  # 1,664 + 204,928 + 12,847,104 + 20,490: the dense layer scales too
    ("mlp", 1.0, 101_770),
])
def test_parameter_counts(name, width, expected):
    model = models.make_model(name, width)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert models.param_count(params) == expected


def test_width_scales_conv_filters_and_dense_units():
    """As the study's train.py: round(32w), round(64w) filters and round(1024w) dense units."""
    model = models.make_model("tutorial_cnn", 2.0)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert params["Conv_0"]["kernel"].shape == (5, 5, 1, 64)
    assert params["Conv_1"]["kernel"].shape == (5, 5, 64, 128)
    assert params["Dense_0"]["kernel"].shape == (7 * 7 * 128, 2048)
    assert models.make_model("tutorial_cnn", 1.25).dense_features == 1280


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        models.make_model("resnet")
    with pytest.raises(ValueError, match="width must be positive"):
        models.make_model("small_cnn", 0.0)


@pytest.mark.parametrize("conv_impl", ["matmul", "xla"])
@pytest.mark.parametrize("size,kernel", [(14, 5), (7, 3)])
def test_conv_relu_pool_equals_pool_of_relu_of_conv(conv_impl, size, kernel):
    """The reordered block (crop, pool, bias, ReLU) gives the textbook block's values and gradients."""
    x = jax.random.normal(jax.random.PRNGKey(3), (3, size, size, 4))
    block = models.ConvReluPool(6, kernel, conv_impl=conv_impl)
    params = block.init(jax.random.PRNGKey(4), x)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a nonzero bias

    def reference(params, x):
        p = params["params"]
        return conv.max_pool_2x2(jax.nn.relu(conv.conv2d_same(x, p["kernel"], conv.XLA) + p["bias"]))

    np.testing.assert_allclose(block.apply(params, x), reference(params, x), rtol=1e-5, atol=1e-5)
    loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p, x)))
    g_block, g_ref = jax.grad(loss(block.apply))(params), jax.grad(loss(reference))(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_block), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
