"""Flax models: the study's CNN (with a width multiplier), a ~3.4k-weight CNN, and an MLP.

Each conv block (`ConvReluPool`) calls a `conv_general_dilated` as `nn.Conv` does, so the engine
lowers it as it lowers a user's `nn.Conv` (`lrlab.engine.lowering` measures XLA's convolution against
the im2col matmul of `conv.py`): both give the same numbers (tests check it) and the same
parameters, so checkpoints move between formulations and backends. Each block pools before adding
its bias and rectifying, which is equal and cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from lrlab.task import conv

CONV_IMPLS = ("auto",) + conv.FORMULATIONS  # auto: the engine's choice (measured)

# tf.layers defaults, which the study's TensorFlow 1 code used: Glorot-uniform kernels, zero biases.
kernel_init = nn.initializers.glorot_uniform()
bias_init = nn.initializers.zeros


class ConvReluPool(nn.Module):
    """maxpool2x2(relu(conv(x) + bias)), computed as relu(maxpool2x2(conv(x)) + bias).

    The two are equal (max commutes with adding a per-channel constant and with ReLU), but the
    second adds, rectifies and back-propagates through 4x fewer values, and the convolution
    computes only the outputs the 'valid' pool reads (6x6 of 7x7 on small_cnn's second layer).
    Parameters: an HWIO kernel and a bias, as tf.layers.conv2d.

    With `batch_norm`: maxpool2x2(relu(BatchNorm(conv(x)))), the BatchNorm's offset replacing the
    bias (its scale may be negative, so the pool stays last); statistics over the batch while
    training (each member its own under vmap), the running averages at evaluation. (Tried and
    measured slower on CPU: the conv at the 4 pool phases with an elementwise max, and a custom
    first-argmax pool gradient; XLA:CPU adds layout copies to both.)
    """

    # Written for the im2col formulation (the pool before the bias, the 'valid' outputs only), and
    # measured fastest in it alone and vmapped (benchmarks/member_chunking.py): the engine's prior.
    preferred_conv: ClassVar[str] = conv.MATMUL

    features: int
    kernel_size: int = 5
    conv_impl: str = "auto"  # a formulation of conv.FORMULATIONS, or auto: `conv_general_dilated`'s
    batch_norm: bool = False
    conv_general_dilated: Callable[..., Any] | None = None  # set by the engine's lowering (None: XLA's)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}")
        k = self.kernel_size
        kernel = self.param("kernel", kernel_init, (k, k, x_BHWC.shape[-1], self.features))
        convolve = (conv.CONV_GENERAL_DILATED[self.conv_impl] if self.conv_impl != "auto"
                    else self.conv_general_dilated or conv.CONV_GENERAL_DILATED[conv.XLA])
        _, h, w, _ = x_BHWC.shape
        out_hw = (h // 2 * 2, w // 2 * 2)  # only the outputs the 'valid' pool reads
        y = convolve(x_BHWC, kernel, (1, 1), conv.same_padding((k, k), (h, w), out_hw),
                     dimension_numbers=conv.NHWC)
        if self.batch_norm:
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(y)
            return conv.max_pool_2x2(nn.relu(y))
        bias = self.param("bias", bias_init, (self.features,))
        return nn.relu(conv.max_pool_2x2(y) + bias)


class CNN(nn.Module):
    """[2x2 max-pool of the input] -> (conv -> ReLU -> 2x2 max-pool) per conv layer -> [dense] -> logits.

    Each conv block is a `ConvReluPool` named Conv_i, so parameter trees read Conv_0, Conv_1, ...
    """

    conv_features: Sequence[int]
    dense_features: int | None
    num_classes: int = 10
    dropout_rate: float = 0.0
    kernel_sizes: Sequence[int] | None = None  # default 5x5 everywhere
    pool_input: bool = False
    conv_impl: str = "auto"
    batch_norm: bool = False  # batch normalization in each conv block (see ConvReluPool)

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
        x = conv.max_pool_2x2(x_BHWC) if self.pool_input else x_BHWC
        kernel_sizes = self.kernel_sizes or (5,) * len(self.conv_features)
        for i, (features, k) in enumerate(zip(self.conv_features, kernel_sizes)):
            x = ConvReluPool(features, k, conv_impl=self.conv_impl, batch_norm=self.batch_norm,
                             name=f"Conv_{i}")(x, train)
        x = x.reshape(x.shape[0], -1)
        if self.dense_features:
            x = nn.relu(nn.Dense(self.dense_features, kernel_init=kernel_init)(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=kernel_init)(x)


class MLP(nn.Module):
    """Flatten -> hidden ReLU layers -> logits: a convolution-free baseline."""

    hidden: Sequence[int] = (128,)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
        x = x_BHWC.reshape(x_BHWC.shape[0], -1)
        for features in self.hidden:
            x = nn.relu(nn.Dense(features, kernel_init=kernel_init)(x))
        return nn.Dense(self.num_classes, kernel_init=kernel_init)(x)


MODELS = ("tutorial_cnn", "small_cnn", "mlp")


def make_model(name: str, width: float = 1.0, num_classes: int = 10, conv_impl: str = "auto",
               batch_norm: bool = False) -> nn.Module:
    """Builds a model by name.

    tutorial_cnn: the study's network (TensorFlow's MNIST tutorial): conv 32w, pool, conv 64w, pool,
        dense 1024w, dropout 0.4, dense; round(n * w) units each, as the study's train.py scales every
        layer. 3,274,634 weights at width 1 on 28x28x1, 13,074,186 at width 2.
    small_cnn: 2x2 max-pool of the input, conv 5x5 8w, pool, conv 3x3 20w, pool, dense: 3,478
        weights at width 1 on MNIST, the ~3.4k the article's text gives. Shaped for speed on a CPU
        (14x14 feature maps, ~9x fewer FLOPs per weight than the study's CNN).
    mlp: one hidden layer of 128w units.
    batch_norm: batch normalization in every conv block (the CNNs; the MLP has none to give).
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    scaled = lambda n: max(1, round(n * width))
    if name == "tutorial_cnn":
        return CNN((scaled(32), scaled(64)), scaled(1024), num_classes, dropout_rate=0.4, conv_impl=conv_impl,
                   batch_norm=batch_norm)
    if name == "small_cnn":
        return CNN((scaled(8), scaled(20)), None, num_classes, kernel_sizes=(5, 3), pool_input=True,
                   conv_impl=conv_impl, batch_norm=batch_norm)
    if batch_norm:
        raise ValueError(f"batch_norm needs a CNN ({name} has no conv blocks)")
    if name == "mlp":
        return MLP((scaled(128),), num_classes)
    raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def param_count(params) -> int:
    """Number of scalar weights in one member's parameter pytree."""
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


def count_parameters(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Weights of one member of `model` on images of `image_shape` (shapes only, nothing computed)."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1,) + tuple(image_shape)))
    return param_count(shapes["params"])
