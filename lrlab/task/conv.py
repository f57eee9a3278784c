"""Convolution formulations, and 2x2 max-pooling as reshape + max.

`lax.conv_general_dilated` is what Flax's `nn.Conv` and `nnx.Conv` call. `conv_general_dilated_matmul`
computes the same function (same arguments, same parameters) as one matmul over the kernel's shifted
slices (im2col). The two lower differently, and which is faster depends on the backend and on how the
members are mapped: XLA:CPU runs a vmapped convolution as a grouped convolution and a convolution
inside `lax.scan` far slower than outside (jax issue 12868), where the matmul stays a (batched)
matmul. The engine chooses between them by measuring (`lrlab.engine.lowering`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

XLA, MATMUL = "xla", "matmul"
FORMULATIONS = (XLA, MATMUL)  # XLA: the convolution as the model writes it
NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _dimension_numbers(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> Any:
    if dimension_numbers is None:
        return None
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)


def matmul_unsupported(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                       lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                       dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                       **options: Any) -> str | None:
    """Why `conv_general_dilated_matmul` would run these arguments as XLA's convolution (None: it
    computes them itself): it covers 2-D NHWC/HWIO convolutions with any strides and padding,
    without dilation or feature groups."""
    if lhs.ndim != 4:
        return f"{lhs.ndim - 2}-D convolution"
    given = sorted(name for name, value in options.items() if value is not None)
    if given:
        return f"{', '.join(given)} given"
    if _dimension_numbers(lhs, rhs, dimension_numbers) != NHWC:
        return "layout other than NHWC/HWIO"
    if feature_group_count != 1 or batch_group_count != 1:
        return f"feature_group_count={feature_group_count}" if feature_group_count != 1 else "batch groups"
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return "dilation"
    if isinstance(padding, str) and padding.upper() not in ("SAME", "VALID", "SAME_LOWER"):
        return f"padding {padding}"
    return None


def conv_general_dilated_matmul(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                                lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                                dimension_numbers: Any = None, feature_group_count: int = 1,
                                batch_group_count: int = 1, precision: Any = None,
                                preferred_element_type: Any = None, **options: Any) -> jax.Array:
    """`lax.conv_general_dilated` as im2col: pad, take the kh*kw strided slices, concatenate them on
    the channel axis (ordered (i, j, c) like an HWIO kernel) and multiply by the kernel reshaped to
    [kh*kw*c_in, c_out]. Arguments it does not cover (`matmul_unsupported`) go to XLA's convolution.
    Padding may be negative (a crop), as lax's; `options` are lax's newer keyword arguments
    (`out_sharding`), left to XLA's convolution when set."""
    if matmul_unsupported(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                          feature_group_count, batch_group_count, **options):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, **options)
    kh, kw, c_in, c_out = rhs.shape
    b, h, w, c = lhs.shape
    sh, sw = window_strides
    pads = lax.padtype_to_pads((h, w), (kh, kw), (sh, sw), padding) if isinstance(padding, str) else padding
    (top, bottom), (left, right) = pads
    x_BHWC = lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    hp, wp = x_BHWC.shape[1:3]
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    slices = [lax.slice(x_BHWC, (0, i, j, 0), (b, i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, c), (1, sh, sw, 1))
              for i in range(kh) for j in range(kw)]
    patches_BHWP = jnp.concatenate(slices, axis=-1) if len(slices) > 1 else slices[0]
    return jnp.matmul(patches_BHWP, rhs.reshape(kh * kw * c_in, c_out), precision=precision,
                      preferred_element_type=preferred_element_type)


def explain_unsupported(*args: Any, **kwargs: Any) -> str | None:
    """`matmul_unsupported` of a call's arguments, given as `lax.conv_general_dilated` takes them."""
    bound = inspect.signature(conv_general_dilated_matmul).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name in ("precision", "preferred_element_type"):
        arguments.pop(name)
    return matmul_unsupported(**{k: v for k, v in arguments.items() if k != "options"}, **arguments["options"])


CONV_GENERAL_DILATED: dict[str, Callable[..., jax.Array]] = {
    XLA: lax.conv_general_dilated,
    MATMUL: conv_general_dilated_matmul,
}


def same_padding(kernel_hw: tuple[int, int], in_hw: tuple[int, int], out_hw: tuple[int, int]
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The padding of a 'same' stride-1 convolution that keeps only its top-left `out_hw` outputs
    (those a following 'valid' pool reads): the bottom and right padding negative where it crops."""
    return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2 - (n - o)) for k, n, o in zip(kernel_hw, in_hw, out_hw))


def conv2d_same(x_BHWC: jax.Array, kernel_HWIO: jax.Array, formulation: str = MATMUL,
                out_hw: tuple[int, int] | None = None) -> jax.Array:
    """A 'same' stride-1 2-D convolution in `formulation`, keeping its top-left `out_hw` outputs."""
    in_hw = x_BHWC.shape[1:3]
    padding = same_padding(kernel_HWIO.shape[:2], in_hw, out_hw or in_hw)
    return CONV_GENERAL_DILATED[formulation](x_BHWC, kernel_HWIO, (1, 1), padding, dimension_numbers=NHWC)


def max_pool_2x2(x_BHWC: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2 ('valid', as tf.layers.max_pooling2d), as reshape + max."""
    b, h, w, c = x_BHWC.shape
    x = x_BHWC[:, : h // 2 * 2, : w // 2 * 2, :]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
