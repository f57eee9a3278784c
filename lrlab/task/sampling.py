"""Datasets as uint8 arrays, batch indices drawn from PRNG keys.

Images stay uint8 (NHWC) all the way to the device; they are scaled to [0, 1] inside the compiled
step. Batches are never materialised on the host: each step derives its indices from a key, so the
data path is one gather on the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

DATA_KEY_SALT = 2**20  # the shared batch order's key: fold_in(PRNGKey(seed), DATA_KEY_SALT)


def eval_subset_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """The fixed training subset on which "training accuracy" (the target) is measured."""
    size = min(size, num_train)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=size, replace=False)).astype(np.int32)


def split_validation(num_train: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): `size` examples drawn by `seed` are held out."""
    if not 0 < size < num_train:
        raise ValueError(f"validation_examples must be in [1, {num_train - 1}], got {size}")
    rng = np.random.default_rng([seed, 1])
    val = np.sort(rng.choice(num_train, size=size, replace=False)).astype(np.int32)
    return np.setdiff1d(np.arange(num_train, dtype=np.int32), val), val


def data_key(seed: int) -> jax.Array:
    """The key of the batch order every member shares (with shared seeds) for `seed`."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), DATA_KEY_SALT)


def epoch_permutation(key: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order of the training examples in `epoch`: argsort of random bits (a permutation even
    with ties; 2.4x cheaper than jax.random.permutation's repeated sorts: 17 ms against 42 ms for
    60k examples on a 2-core CPU)."""
    bits = jax.random.bits(jax.random.fold_in(key, epoch), (num_examples,), jnp.uint32)
    return jnp.argsort(bits).astype(jnp.int32)


def batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Indices of the batch for `step`: epochs of a key-derived permutation, without replacement.

    Pure in (key, step), so any member, any resume and the sequential baseline see the same batch.
    """
    steps_per_epoch = num_examples // batch_size
    epoch, offset = jnp.divmod(step, steps_per_epoch)
    perm = epoch_permutation(key, epoch, num_examples)
    return jax.lax.dynamic_slice_in_dim(perm, offset * batch_size, batch_size)


def segment_batch_indices(
    key: jax.Array, step0: jax.Array, num_steps: int, num_examples: int, batch_size: int
) -> jax.Array:
    """`batch_indices` for steps step0 .. step0+num_steps-1 as int32[num_steps, batch_size].

    Same values, but each epoch's permutation (far more than a small model's step on a CPU) is
    drawn once per segment instead of once per step, and only for the epochs the segment touches.
    """
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    max_epochs = num_steps // steps_per_epoch + 2  # epochs a segment can touch
    first_epoch = step0 // steps_per_epoch
    last_epoch = (step0 + num_steps - 1) // steps_per_epoch

    def perm_if_touched(e):
        return jax.lax.cond(e <= last_epoch, lambda: epoch_permutation(key, e, num_examples),
                            lambda: jnp.zeros((num_examples,), jnp.int32))

    perms_EN = jax.lax.map(perm_if_touched, first_epoch + jnp.arange(max_epochs))
    steps = step0 + jnp.arange(num_steps)
    epoch, offset = jnp.divmod(steps, steps_per_epoch)
    cols = offset[:, None] * batch_size + jnp.arange(batch_size)[None, :]
    return perms_EN[(epoch - first_epoch)[:, None], cols]
