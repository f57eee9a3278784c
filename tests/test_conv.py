"""The im2col and canonical convolutions are lax's convolution: values and gradients, every stride,
padding and kernel size they cover; what they do not cover goes to XLA's convolution as written."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lrlab.task import conv

# kernel size, strides, padding: every kernel size 1 to 7, strides 1 and 2 (and unequal), SAME, VALID,
# explicit and negative (a crop) padding, each at least once.
CASES = [(1, (1, 1), "SAME"), (2, (2, 2), "SAME"), (3, (1, 1), "VALID"), (3, (2, 2), ((1, 2), (0, 3))),
         (4, (1, 3), "SAME"), (5, (1, 1), ((2, -1), (0, -2))), (6, (2, 1), "VALID"), (7, (2, 2), "SAME")]


@pytest.mark.parametrize("formulation", [conv.MATMUL, conv.CANONICAL])
@pytest.mark.parametrize("kernel,strides,padding", CASES)
def test_formulation_equals_lax(formulation, kernel, strides, padding):
    kx, kw = jax.random.split(jax.random.PRNGKey(kernel))
    x = jax.random.normal(kx, (2, 13, 11, 3))
    w = jax.random.normal(kw, (kernel, kernel, 3, 4))
    args = (strides, padding)

    def both(f):
        loss = lambda x, w: jnp.sum(jnp.sin(f(x, w, *args, dimension_numbers=conv.NHWC)))  # noqa: E731
        return jax.jit(lambda x, w: (f(x, w, *args, dimension_numbers=conv.NHWC), jax.grad(loss, (0, 1))(x, w)))(x, w)

    (y_mm, g_mm), (y_xla, g_xla) = both(conv.CONV_GENERAL_DILATED[formulation]), both(lax.conv_general_dilated)
    assert conv.explain_unsupported(x, w, *args, dimension_numbers=conv.NHWC) is None
    np.testing.assert_allclose(y_mm, y_xla, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_mm, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs,kernel_shape,why", [
    ({"rhs_dilation": (2, 2)}, (3, 3, 6, 6), "dilation"),
    ({"lhs_dilation": (2, 1)}, (3, 3, 6, 6), "dilation"),
    ({"feature_group_count": 3}, (3, 3, 2, 6), "feature_group_count=3"),
    ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, (6, 6, 3, 3), "layout other than NHWC/HWIO"),
])
@pytest.mark.parametrize("formulation", [conv.MATMUL, conv.CANONICAL])
def test_what_a_formulation_does_not_cover_runs_as_lax(formulation, kwargs, kernel_shape, why):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 6))
    w = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
    kwargs = {"dimension_numbers": conv.NHWC, **kwargs}
    padding = ((1, 1), (1, 1))
    assert conv.explain_unsupported(x, w, (1, 1), padding, **kwargs) == why
    np.testing.assert_array_equal(conv.CONV_GENERAL_DILATED[formulation](x, w, (1, 1), padding, **kwargs),
                                  lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs))


def test_conv2d_same_keeps_the_top_left_outputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 7, 7, 2))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 5))
    full = conv.conv2d_same(x, w, conv.XLA)
    for formulation in conv.FORMULATIONS:
        np.testing.assert_allclose(conv.conv2d_same(x, w, formulation, (6, 6)), full[:, :6, :6], rtol=1e-5,
                                   atol=1e-5)


def test_max_pool_matches_reduce_window():
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 7, 6, 3))
    ref = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(conv.max_pool_2x2(x), ref)
