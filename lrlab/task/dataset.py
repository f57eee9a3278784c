"""A loaded image-classification dataset (uint8 NHWC images, integer labels), and the error a
dataset that cannot be loaded raises.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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
