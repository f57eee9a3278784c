"""Datasets by name: 'mnist' (shipped with lrlab) or 'tfds:NAME' (prepared TFDS data)."""

from __future__ import annotations

from lrlab.task.dataset import Dataset, DatasetError
from lrlab.task.mnist import load_mnist


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a prepared TFDS image classification dataset (train/test splits) without TensorFlow."""
    from lrlab.task import tfds  # optional dependency: tensorflow-datasets

    return tfds.load(name, data_dir)


def load_dataset(spec: str, data_dir: str | None = None) -> Dataset:
    """`mnist` (the shipped copy) or `tfds:NAME` (a TFDS dataset prepared under `data_dir`)."""
    if spec == "mnist":
        return load_mnist(data_dir)
    if spec.startswith("tfds:") and len(spec) > len("tfds:"):
        return load_tfds(spec[len("tfds:"):], data_dir)
    raise DatasetError(f"unknown dataset {spec!r}: use 'mnist' or 'tfds:NAME'")
