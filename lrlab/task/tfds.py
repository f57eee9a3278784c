"""Reads a TFDS image classification dataset that is already prepared on disk, without TensorFlow.

The route is files only: `read_only_builder.builder_from_files` rebuilds the builder from the
prepared `dataset_info.json`/`features.json` (no dataset code, no network), and
`builder.as_data_source(split)` reads the ArrayRecord shards with random access, decoding each
example to numpy (PNG/JPEG via OpenCV or PIL). Only `file_format='array_record'` datasets qualify:
the TFRecord format needs TensorFlow to read.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from lrlab.task.dataset import Dataset, DatasetError

SPLITS = ("train", "test")
_BATCH = 4096  # records per `__getitems__` call: one array_record read per batch, not per example


def _one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, so every DatasetError stays one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _require_tfds() -> None:
    """A DatasetError saying how to install tensorflow-datasets (an optional extra) if absent."""
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError as e:
        raise DatasetError(
            f"tensorflow-datasets is not installed ({_one_line(e)}): pip install 'lrlab[tfds]'"
        ) from None


def _builder(name: str, data_dir: str | None) -> Any:
    """The read-only builder of `name` as prepared under `data_dir`; never downloads or prepares."""
    _require_tfds()
    from tensorflow_datasets.core import constants, read_only_builder, registered

    where = os.path.expanduser(data_dir) if data_dir is not None else None
    shown = where if where is not None else constants.DATA_DIR
    try:
        return read_only_builder.builder_from_files(name, data_dir=where)
    except registered.DatasetNotFoundError:
        raise DatasetError(
            f"TFDS dataset {name!r} is not prepared under data_dir {shown}; lrlab never "
            f"downloads: prepare it first, e.g. "
            f"`tfds build {name} --data_dir={shown} --file_format=array_record`"
        ) from None
    except Exception as e:  # unreadable or corrupt dataset_info.json / features.json
        raise DatasetError(
            f"cannot read TFDS dataset {name!r} under {shown}: {_one_line(e)}"
        ) from None


def _check_features(name: str, builder: Any) -> int:
    """The class count, after checking that 'image' is a uint8 Image and 'label' a ClassLabel."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    keys = set(features.keys()) if hasattr(features, "keys") else set()
    if not {"image", "label"} <= keys:
        raise DatasetError(
            f"TFDS dataset {name!r} needs features 'image' and 'label', has {sorted(keys)}"
        )
    image, label = features["image"], features["label"]
    if not isinstance(image, tfds.features.Image) or np.dtype(image.np_dtype) != np.uint8:
        raise DatasetError(f"TFDS dataset {name!r}: 'image' must be a uint8 Image, got {image!r}")
    if not isinstance(label, tfds.features.ClassLabel) or not label.num_classes:
        raise DatasetError(f"TFDS dataset {name!r}: 'label' must be a ClassLabel, got {label!r}")
    return int(label.num_classes)


def _read_split(name: str, builder: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One whole split as (uint8 NHWC images, int32 labels), read in batches of records."""
    if split not in builder.info.splits:
        raise DatasetError(
            f"TFDS dataset {name!r} at {builder.data_dir} has no {split!r} split "
            f"(splits: {sorted(builder.info.splits)})"
        )
    try:
        source = builder.as_data_source(split)
    except NotImplementedError:
        raise DatasetError(
            f"TFDS dataset {name!r} at {builder.data_dir} is stored as "
            f"{builder.info.file_format.value}, which needs TensorFlow to read: "
            f"re-prepare it with file_format='array_record'"
        ) from None
    except Exception as e:
        raise DatasetError(
            f"cannot open split {split!r} of {builder.data_dir}: {_one_line(e)}"
        ) from None
    n = len(source)
    if n == 0:
        raise DatasetError(f"split {split!r} of {builder.data_dir} is empty")
    logging.info("tfds %s/%s: reading %d examples from %s", name, split, n, builder.data_dir)
    images: np.ndarray | None = None
    labels = np.empty((n,), np.int32)
    for start in range(0, n, _BATCH):
        try:
            batch = source.__getitems__(list(range(start, min(start + _BATCH, n))))
        except Exception as e:
            raise DatasetError(
                f"cannot read split {split!r} of {builder.data_dir}: {_one_line(e)}"
            ) from None
        for i, example in enumerate(batch, start):
            image = np.asarray(example["image"])
            if image.ndim == 2:
                image = image[..., None]
            if images is None:
                images = np.empty((n, *image.shape), np.uint8)
            if image.dtype != np.uint8 or image.shape != images.shape[1:]:
                raise DatasetError(
                    f"split {split!r} of {builder.data_dir}: example {i} is a {image.dtype} "
                    f"image of shape {image.shape}, expected uint8 {images.shape[1:]} "
                    f"(images must share one shape)"
                )
            images[i] = image
            labels[i] = example["label"]
        logging.info("tfds %s/%s: %d/%d examples", name, split, min(start + _BATCH, n), n)
    assert images is not None
    return images, labels


def load(name: str, data_dir: str | None) -> Dataset:
    """Splits 'train' and 'test' of TFDS dataset `name`, prepared as array_record in `data_dir`."""
    builder = _builder(name, data_dir)
    num_classes = _check_features(name, builder)
    (train_x, train_y), (test_x, test_y) = (_read_split(name, builder, s) for s in SPLITS)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DatasetError(
            f"TFDS dataset {name!r}: train images {train_x.shape[1:]} "
            f"and test images {test_x.shape[1:]} differ"
        )
    for split, y in (("train", train_y), ("test", test_y)):
        if y.min() < 0 or y.max() >= num_classes:
            raise DatasetError(f"TFDS dataset {name!r}: {split} labels outside [0, {num_classes})")
    return Dataset(
        name=name,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=num_classes,
    )
