"""Flax models: the study's CNN (with a width multiplier), a ~3.4k-weight CNN, and an MLP.

Convolutions go through `conv2d`, one small function per backend: on CPU a 5x5 "same" convolution
is written as a matmul over the shifted slices (im2col), because XLA:CPU runs a vmapped
`lax.conv` as a slow grouped convolution and runs convolutions inside `lax.scan` far slower than
outside (jax issue 12868). Elsewhere `lax.conv_general_dilated` is used. Both give the same
numbers (tests check it) and the same parameters, so checkpoints move between backends.
Each conv block pools before adding its bias and rectifying, which is equal and cheaper
(`ConvReluPool`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "matmul", "xla")

# tf.layers defaults, which the study's TensorFlow 1 code used: Glorot-uniform kernels, zero biases.
kernel_init = nn.initializers.glorot_uniform()
bias_init = nn.initializers.zeros


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' -> the formulation that measured fastest on this backend ('matmul' on CPU)."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    if conv_impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


def conv2d_matmul(x_BHWC: jax.Array, kernel_hwio: jax.Array, out_hw: tuple[int, int] | None = None) -> jax.Array:
    """'Same' stride-1 convolution as one matmul over the kh*kw shifted slices (im2col).

    `out_hw` keeps only the top-left out_hw outputs (those a following 'valid' pool reads).
    """
    kh, kw, c_in, c_out = kernel_hwio.shape
    _, h, w, _ = x_BHWC.shape
    oh, ow = out_hw or (h, w)
    pad_h, pad_w = (kh - 1) // 2, (kw - 1) // 2
    x_pad = jnp.pad(x_BHWC, ((0, 0), (pad_h, kh - 1 - pad_h), (pad_w, kw - 1 - pad_w), (0, 0)))
    slices = [x_pad[:, i : i + oh, j : j + ow, :] for i in range(kh) for j in range(kw)]
    patches_BHWP = jnp.concatenate(slices, axis=-1)  # P = kh*kw*c_in, ordered (i, j, c) like HWIO
    return patches_BHWP @ kernel_hwio.reshape(kh * kw * c_in, c_out)


def conv2d_xla(x_BHWC: jax.Array, kernel_hwio: jax.Array, out_hw: tuple[int, int] | None = None) -> jax.Array:
    """'Same' stride-1 convolution with XLA's native convolution (top-left `out_hw` outputs)."""
    kh, kw = kernel_hwio.shape[:2]
    _, h, w, _ = x_BHWC.shape
    oh, ow = out_hw or (h, w)
    pad_h, pad_w = (kh - 1) // 2, (kw - 1) // 2
    padding = ((pad_h, kh - 1 - pad_h - (h - oh)), (pad_w, kw - 1 - pad_w - (w - ow)))
    return jax.lax.conv_general_dilated(
        x_BHWC, kernel_hwio, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


CONV_FNS: dict[str, Callable[..., jax.Array]] = {
    "matmul": conv2d_matmul,
    "xla": conv2d_xla,
}


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2 ('valid', as tf.layers.max_pooling2d), as reshape + max."""
    b, h, w, c = x_BHWC.shape
    x = x_BHWC[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def conv_max_pool_matmul(x_BHWC: jax.Array, kernel_hwio: jax.Array) -> jax.Array:
    """max_pool_2x2('same' conv(x)), the conv as im2col matmul over only the outputs the pool reads.

    (Tried and measured slower on CPU: computing the conv at the 4 pool phases and taking an
    elementwise max, and a custom first-argmax pool gradient; XLA:CPU adds layout copies to both.)
    """
    _, h, w, _ = x_BHWC.shape
    return max_pool_2x2(conv2d_matmul(x_BHWC, kernel_hwio, (h // 2 * 2, w // 2 * 2)))


def conv_max_pool_xla(x_BHWC: jax.Array, kernel_hwio: jax.Array) -> jax.Array:
    """max_pool_2x2('same' conv(x)) with XLA's convolution, computing only the outputs the pool reads."""
    _, h, w, _ = x_BHWC.shape
    return max_pool_2x2(conv2d_xla(x_BHWC, kernel_hwio, (h // 2 * 2, w // 2 * 2)))


CONV_MAX_POOL_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "matmul": conv_max_pool_matmul,
    "xla": conv_max_pool_xla,
}


class ConvReluPool(nn.Module):
    """maxpool2x2(relu(conv(x) + bias)), computed as relu(maxpool2x2(conv(x)) + bias).

    The two are equal (max commutes with adding a per-channel constant and with ReLU), but the
    second adds, rectifies and back-propagates through 4x fewer values, and the convolution
    computes only the outputs the 'valid' pool reads (6x6 of 7x7 on small_cnn's second layer).
    Parameters: an HWIO kernel and a bias, as tf.layers.conv2d.

    With `batch_norm`: maxpool2x2(relu(BatchNorm(conv(x)))), the BatchNorm's offset replacing the
    bias (its scale may be negative, so the pool stays last); statistics over the batch while
    training (each member its own under vmap), the running averages at evaluation.
    """

    features: int
    kernel_size: int = 5
    conv_impl: str = "auto"
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x_BHWC: jax.Array, train: bool = False) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", kernel_init, (k, k, x_BHWC.shape[-1], self.features))
        impl = resolve_conv_impl(self.conv_impl)
        if self.batch_norm:
            _, h, w, _ = x_BHWC.shape
            y = CONV_FNS[impl](x_BHWC, kernel, (h // 2 * 2, w // 2 * 2))
            y = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(y)
            return max_pool_2x2(nn.relu(y))
        bias = self.param("bias", bias_init, (self.features,))
        return nn.relu(CONV_MAX_POOL_FNS[impl](x_BHWC, kernel) + bias)


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
        x = max_pool_2x2(x_BHWC) if self.pool_input else x_BHWC
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
