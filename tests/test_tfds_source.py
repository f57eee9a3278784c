"""lrlab.tfds_source: a TFDS dataset prepared here (offline, no TensorFlow) reads back exactly."""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")  # tfds encodes/decodes PNG with PIL when TF is absent

from lrlab.task.dataset import DatasetError  # noqa: E402
from lrlab.task.datasets import load_dataset  # noqa: E402

NAME = "lrlab_tiny_images"
SIZES = {"train": 36, "test": 12}
NUM_CLASSES = 3


def _arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels written for `split`: random 8x8x1 uint8 pixels, 3 classes."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = rng.integers(0, 256, (SIZES[split], 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, SIZES[split]).astype(np.int32)
    return images, labels


def _png(image: np.ndarray) -> bytes:
    """PNG bytes of one HxWx1 image (tfds' own numpy->PNG encoder needs TensorFlow)."""
    buf = io.BytesIO()
    PIL_Image.fromarray(image[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


def _prepare(
    data_dir: pathlib.Path, name: str = NAME, splits=("train", "test"), image_feature=None
) -> None:
    """Prepares dataset `name` as array_record under `data_dir` with tfds' own builder/writer."""

    class Tiny(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(8, 8, 1)) if image_feature is None else image_feature
            label = tfds.features.ClassLabel(num_classes=NUM_CLASSES)
            features = {"image": image, "label": label}
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            images, labels = _arrays(split)
            for i, (image, label) in enumerate(zip(images, labels)):
                pixels = _png(image) if image_feature is None else image.astype(np.float32)
                yield i, {"image": pixels, "label": int(label)}

    Tiny.name = name
    Tiny(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tfds")
    _prepare(path)
    return path


def _assert_one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(e.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


def test_loads_exact_arrays(data_dir):
    tf_loaded_before = "tensorflow" in sys.modules
    ds = load_dataset(f"tfds:{NAME}", str(data_dir))
    if not tf_loaded_before:
        assert "tensorflow" not in sys.modules, "reading must not import TensorFlow"
    assert ds.num_classes == NUM_CLASSES
    assert ds.image_shape == (8, 8, 1)
    for split in ("train", "test"):
        want_images, want_labels = _arrays(split)
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        assert images.shape == (SIZES[split], 8, 8, 1) and labels.shape == (SIZES[split],)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_missing_dataset(data_dir):
    with pytest.raises(DatasetError) as e:
        load_dataset("tfds:no_such_dataset", str(data_dir))
    _assert_one_line(e, "no_such_dataset", str(data_dir), "never downloads")


def test_wrong_data_dir(tmp_path):
    with pytest.raises(DatasetError) as e:
        load_dataset(f"tfds:{NAME}", str(tmp_path))
    _assert_one_line(e, NAME, str(tmp_path), "never downloads")


def test_missing_split(tmp_path):
    _prepare(tmp_path, name="lrlab_tiny_train_only", splits=("train",))
    with pytest.raises(DatasetError) as e:
        load_dataset("tfds:lrlab_tiny_train_only", str(tmp_path))
    _assert_one_line(e, "'test' split", "train")


def test_non_uint8_images(tmp_path):
    floats = tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32)
    _prepare(tmp_path, name="lrlab_tiny_float", image_feature=floats)
    with pytest.raises(DatasetError) as e:
        load_dataset("tfds:lrlab_tiny_float", str(tmp_path))
    _assert_one_line(e, "'image' must be a uint8 Image", "float32")


def test_tfrecord_needs_reprepare(data_dir, tmp_path):
    copy = tmp_path / NAME
    shutil.copytree(data_dir / NAME, copy)
    info_path = copy / "1.0.0" / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(DatasetError) as e:
        load_dataset(f"tfds:{NAME}", str(tmp_path))
    _assert_one_line(e, "tfrecord", "file_format='array_record'")


def test_tfds_not_installed(monkeypatch, data_dir):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # the import now raises
    with pytest.raises(DatasetError) as e:
        load_dataset(f"tfds:{NAME}", str(data_dir))
    _assert_one_line(e, "tensorflow-datasets is not installed", "pip install 'lrlab[tfds]'")
