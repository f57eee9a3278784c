"""Datasets as uint8 arrays, batch indices drawn from PRNG keys.

Images stay uint8 (NHWC) all the way to the device; they are scaled to [0, 1] inside the compiled
step. Batches are never materialised on the host: each step derives its indices from a key, so the
data path is one gather on the device.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import pathlib
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np

DATA_KEY_SALT = 2**20  # the shared batch order's key: fold_in(PRNGKey(seed), DATA_KEY_SALT)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class DatasetError(Exception):
    """A dataset that is missing, corrupt or unreadable; the message says which file and why."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """An image classification dataset held as host numpy arrays (uint8 images, int32 labels)."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    test_images: np.ndarray  # uint8 [M, H, W, C]
    test_labels: np.ndarray  # int32 [M]
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def mnist_dir() -> pathlib.Path:
    """The folder of the MNIST IDX files shipped as package data."""
    return pathlib.Path(str(importlib.resources.files("lrlab") / "data" / "mnist"))


def _read_checksums(directory: pathlib.Path) -> dict[str, str]:
    path = directory / "SHA256SUMS"
    try:
        text = path.read_text()
    except OSError as e:
        raise DatasetError(f"cannot read the checksum list {path}: {e.strerror or e}") from None
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            sums[parts[1]] = parts[0].lower()
    return sums


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Decodes one IDX file (the MNIST container: magic, dims, then uint8 data)."""
    if len(raw) < 4:
        raise DatasetError(f"{source}: too short to be an IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DatasetError(f"{source}: not a uint8 IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{source}: truncated header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) + header
    if len(raw) != expected:
        raise DatasetError(f"{source}: {len(raw)} bytes, the header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_verified(directory: pathlib.Path, stem: str, checksums: dict[str, str]) -> bytes:
    path = directory / f"{stem}.gz"
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"missing dataset file {path}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"corrupt dataset file {path}: {e}") from None
    want = checksums.get(stem)
    if want is None:
        raise DatasetError(f"{directory / 'SHA256SUMS'} has no checksum for {stem}")
    got = hashlib.sha256(raw).hexdigest()
    if got != want:
        raise DatasetError(f"checksum mismatch for {path}: sha256 {got}, expected {want}")
    return raw


def load_mnist(directory: str | os.PathLike | None = None) -> Dataset:
    """Loads MNIST from gzipped IDX files, verifying each against SHA256SUMS."""
    directory = pathlib.Path(directory) if directory is not None else mnist_dir()
    checksums = _read_checksums(directory)
    arrays = {
        key: parse_idx(_read_verified(directory, stem, checksums), str(directory / stem))
        for key, stem in MNIST_FILES.items()
    }
    return Dataset(
        name="mnist",
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        num_classes=10,
    )


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a prepared TFDS image classification dataset (train/test splits) without TensorFlow."""
    from lrlab import tfds_source  # optional dependency: tensorflow-datasets

    return tfds_source.load(name, data_dir)


def load_dataset(spec: str, data_dir: str | None = None) -> Dataset:
    """`mnist` (the shipped copy) or `tfds:NAME` (a TFDS dataset prepared under `data_dir`)."""
    if spec == "mnist":
        return load_mnist(data_dir)
    if spec.startswith("tfds:") and len(spec) > len("tfds:"):
        return load_tfds(spec[len("tfds:"):], data_dir)
    raise DatasetError(f"unknown dataset {spec!r}: use 'mnist' or 'tfds:NAME'")


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
