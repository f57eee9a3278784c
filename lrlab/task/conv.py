"""Convolution formulations, and 2x2 max-pooling as reshape + max.

`lax.conv_general_dilated` is what Flax's `nn.Conv` and `nnx.Conv` call ("xla": as written). Two
other formulations compute the same function of the same parameters and lower differently:
  matmul     one matmul over the kernel's shifted slices (im2col): a vmap of it stays a batched
             matmul, where XLA:CPU runs a vmapped convolution as a grouped convolution.
  canonical  XLA's convolution, with its gradients written as convolutions in the NHWC/HWIO form
             XLA:CPU hands to its fast kernels. Inside `lax.scan` XLA:CPU leaves the weight and
             input gradients of an autodiffed convolution in other layouts and emits them as plain
             loops, 14x slower than the same step outside a loop (jax issue 12868); this one runs
             inside a loop as fast as outside (benchmarks/own_model.py).
Which is fastest depends on the backend, the model and the member mapping: the engine chooses by
measuring (`lrlab.engine.lowering`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

XLA, MATMUL, CANONICAL = "xla", "matmul", "canonical"
FORMULATIONS = (XLA, MATMUL, CANONICAL)  # XLA: the convolution as the model writes it
NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _dimension_numbers(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> Any:
    if dimension_numbers is None:
        return None
    return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)


def unsupported(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                       lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                       dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                       **options: Any) -> str | None:
    """Why the matmul and canonical formulations would run these arguments as XLA's convolution
    as written (None: they compute them themselves): they cover 2-D NHWC/HWIO convolutions with
    any strides and padding, without dilation or feature groups."""
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
    [kh*kw*c_in, c_out]. Arguments it does not cover (`unsupported`) go to XLA's convolution.
    Padding may be negative (a crop), as lax's; `options` are lax's newer keyword arguments
    (`out_sharding`), left to XLA's convolution when set."""
    if unsupported(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
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


def _pads(lhs_shape: Sequence[int], rhs_shape: Sequence[int], strides: Sequence[int], padding: Any
          ) -> tuple[tuple[int, int], ...]:
    """Explicit (low, high) padding of the two spatial axes."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(tuple(lhs_shape[1:3]), tuple(rhs_shape[:2]), tuple(strides), padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_canonical(lhs, rhs, strides, pads, precision):
    return lax.conv_general_dilated(lhs, rhs, strides, pads, dimension_numbers=NHWC, precision=precision)


def _conv_canonical_fwd(lhs, rhs, strides, pads, precision):
    return _conv_canonical(lhs, rhs, strides, pads, precision), (lhs, rhs)


def _conv_canonical_bwd(strides, pads, precision, residuals, dy_BHWO):
    """The input gradient as the flipped kernel (I and O swapped) over the stride-dilated output
    gradient, and the weight gradient with the batch as the contracted feature axis: both
    convolutions in NHWC/HWIO form."""
    x_BHWI, w_HWIO = residuals
    kh, kw = w_HWIO.shape[:2]
    (top, bottom), (left, right) = pads
    h, w = x_BHWI.shape[1:3]
    oh, ow = dy_BHWO.shape[1:3]
    sh, sw = strides
    low_h, low_w = kh - 1 - top, kw - 1 - left
    high_h = h + kh - 1 - (low_h + (oh - 1) * sh + 1)
    high_w = w + kw - 1 - (low_w + (ow - 1) * sw + 1)
    dx = lax.conv_general_dilated(dy_BHWO, jnp.flip(w_HWIO, (0, 1)).transpose(0, 1, 3, 2), (1, 1),
                                  ((low_h, high_h), (low_w, high_w)), lhs_dilation=strides, dimension_numbers=NHWC,
                                  precision=precision)
    x_pad = lax.pad(x_BHWI, jnp.zeros((), x_BHWI.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    dw_IHWO = lax.conv_general_dilated(x_pad.transpose(3, 1, 2, 0), dy_BHWO.transpose(1, 2, 0, 3), (1, 1), "VALID",
                                       rhs_dilation=strides, dimension_numbers=NHWC, precision=precision)
    return dx, dw_IHWO[:, :kh, :kw, :].transpose(1, 2, 0, 3)


_conv_canonical.defvjp(_conv_canonical_fwd, _conv_canonical_bwd)


def conv_general_dilated_canonical(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                                   lhs_dilation: Sequence[int] | None = None,
                                   rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                                   feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                                   preferred_element_type: Any = None, **options: Any) -> jax.Array:
    """`lax.conv_general_dilated` with its gradients as NHWC/HWIO convolutions (see the module
    docstring). Arguments it does not cover (`unsupported`) go to XLA's convolution as written."""
    if unsupported(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count, **options) or preferred_element_type is not None:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, **options)
    return _conv_canonical(lhs, rhs, tuple(int(s) for s in window_strides),
                           _pads(lhs.shape, rhs.shape, window_strides, padding), precision)


def explain_unsupported(*args: Any, **kwargs: Any) -> str | None:
    """`unsupported` of a call's arguments, given as `lax.conv_general_dilated` takes them."""
    bound = inspect.signature(conv_general_dilated_matmul).bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    for name in ("precision", "preferred_element_type"):
        arguments.pop(name)
    return unsupported(**{k: v for k, v in arguments.items() if k != "options"}, **arguments["options"])


CONV_GENERAL_DILATED: dict[str, Callable[..., jax.Array]] = {
    XLA: lax.conv_general_dilated,
    MATMUL: conv_general_dilated_matmul,
    CANONICAL: conv_general_dilated_canonical,
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
