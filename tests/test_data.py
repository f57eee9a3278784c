"""The shipped MNIST loads verified; corrupt files are refused; batches are pure in (key, step)."""

import gzip
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrlab.task import dataset, datasets, sampling
from lrlab.task import mnist as mnist_lib


def test_mnist_shapes_and_dtypes(mnist):
    assert mnist.train_images.shape == (60000, 28, 28, 1) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 28, 28, 1) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.dtype == np.int32 and set(np.unique(mnist.train_labels)) == set(range(10))
    assert mnist.num_classes == 10


@pytest.fixture
def mnist_copy(tmp_path):
    for f in mnist_lib.mnist_dir().iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_altered_file_fails_checksum(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    with gzip.open(path) as f:
        raw = bytearray(f.read())
    raw[100] ^= 1  # one flipped bit, still a well-formed gzip and IDX file
    with gzip.open(path, "wb") as f:
        f.write(bytes(raw))
    with pytest.raises(dataset.DatasetError, match="checksum mismatch.*t10k-labels"):
        mnist_lib.load_mnist(mnist_copy)


def test_truncated_file_is_refused(mnist_copy):
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(dataset.DatasetError, match="corrupt dataset file .*train-labels"):
        mnist_lib.load_mnist(mnist_copy)


def test_corrupt_compressed_data_is_refused(mnist_copy):
    """Bytes flipped inside the deflate stream: zlib's error becomes the one-line DatasetError."""
    path = mnist_copy / "train-labels-idx1-ubyte.gz"
    raw = bytearray(path.read_bytes())
    for i in range(200, 264):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(dataset.DatasetError, match="corrupt dataset file .*train-labels"):
        mnist_lib.load_mnist(mnist_copy)


def test_missing_file_is_refused(mnist_copy):
    (mnist_copy / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(dataset.DatasetError, match="missing dataset file .*train-images"):
        mnist_lib.load_mnist(mnist_copy)


def test_unknown_dataset_spec():
    with pytest.raises(dataset.DatasetError, match="unknown dataset 'cifar'"):
        datasets.load_dataset("cifar")


def test_segment_indices_equal_per_step_indices():
    key = jax.random.PRNGKey(3)
    for step0, n in [(0, 7), (25, 10), (58, 30)]:  # 30 steps per epoch: segments cross epochs
        seg = sampling.segment_batch_indices(key, jnp.int32(step0), n, 300, 10)
        each = jnp.stack([sampling.batch_indices(key, jnp.int32(step0 + i), 300, 10) for i in range(n)])
        np.testing.assert_array_equal(seg, each)


def test_an_epoch_visits_every_example_once():
    idx = sampling.segment_batch_indices(jax.random.PRNGKey(0), jnp.int32(30), 30, 300, 10)
    assert sorted(np.asarray(idx).ravel().tolist()) == list(range(300))


def test_eval_subset_is_fixed_by_seed():
    a, b = sampling.eval_subset_indices(1000, 100, 0), sampling.eval_subset_indices(1000, 100, 0)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 100
    assert not np.array_equal(a, sampling.eval_subset_indices(1000, 100, 1))
