"""MNIST from its canonical IDX files (the copy shipped with lrlab, or a folder), each file checked
against its SHA-256 before it is parsed.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import pathlib
import struct
import zlib

import numpy as np

from lrlab.task.dataset import Dataset, DatasetError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


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
