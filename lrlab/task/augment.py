"""On-device image transforms drawn inside the compiled step: uint8 to float, and random shifts and
rotations per example from a key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_float(images_u8: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1], inside the compiled step."""
    return images_u8.astype(jnp.float32) * (1.0 / 255.0)


def augment_batch(key: jax.Array, images_BHWC: jax.Array, max_shift: float, max_degrees: float) -> jax.Array:
    """Random shifts (up to `max_shift` pixels each way) and rotations (up to `max_degrees`) of a
    float batch, one draw per example from `key`, by bilinear resampling with zero fill.

    Pure in `key`, so the engine derives it from (member seed, step): the same seed gives the same
    augmented batches, and by default every member sees the same ones (a fair comparison).
    """
    b, h, w, c = images_BHWC.shape
    angle_key, shift_key = jax.random.split(key)
    angle_B = jax.random.uniform(angle_key, (b,), minval=-1.0, maxval=1.0) * jnp.deg2rad(max_degrees)
    shift_B2 = jax.random.uniform(shift_key, (b, 2), minval=-1.0, maxval=1.0) * max_shift
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")

    def one(image_HWC, angle, shift):
        # output pixel p reads the input at R(-angle) (p - centre - shift) + centre
        y, x = yy - cy - shift[0], xx - cx - shift[1]
        cos, sin = jnp.cos(angle), jnp.sin(angle)
        src = jnp.stack([cos * y + sin * x + cy, -sin * y + cos * x + cx])
        channel = lambda img_HW: jax.scipy.ndimage.map_coordinates(img_HW, list(src), order=1, mode="constant")
        return jax.vmap(channel, in_axes=-1, out_axes=-1)(image_HWC)

    return jax.vmap(one)(images_BHWC, angle_B, shift_B2)
