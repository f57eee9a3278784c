"""Classification tasks: softmax cross-entropy and accuracy per example, the best constant
predictor's scores (retirement's chance), and the one-line helper `image_classification`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrlab.task import augment as augment_lib
from lrlab.task import dataset as dataset_lib
from lrlab.task import datasets
from lrlab.task.target import Target
from lrlab.task.task import Arrays, Task, _default_inputs


def cross_entropy(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Softmax cross-entropy per example (nats)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BC.astype(jnp.float32), labels_B)


def correct(logits_BC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """1.0 where the arg-max class is the label."""
    return (jnp.argmax(logits_BC, -1) == labels_B).astype(jnp.float32)


def label_chance(labels: np.ndarray) -> dict[str, float]:
    """Accuracy and cross-entropy (nats) of the best constant predictor of `labels`: the most
    frequent class, and the label frequencies."""
    freq = np.bincount(np.asarray(labels).astype(np.int64).ravel()) / np.size(labels)
    p = freq[freq > 0]
    return {"accuracy": float(freq.max()), "loss": float(-(p * np.log(p)).sum())}


def classification(model: Any, train: Arrays, *, label: str = "label", inputs: Callable[[Any], Any] = _default_inputs,
                   target: Target | None = None, **kwargs: Any) -> Task:
    """A classification task: cross-entropy loss, accuracy and loss as metrics, a 97% accuracy
    target by default; `label` names the array of integer classes (one per example, from 0 to the
    model's outputs - 1: checked here, in one line)."""
    for split, arrays in (("training", train), ("eval", kwargs.get("eval")), ("test", kwargs.get("test"))):
        if arrays is not None:
            check_labels(np.asarray(arrays[label]) if label in arrays else None, label, split)
    task = Task(model=model, train=train, inputs=inputs,
                loss=lambda logits, batch: cross_entropy(logits, batch[label]),
                metrics={"accuracy": lambda logits, batch: correct(logits, batch[label]),
                         "loss": lambda logits, batch: cross_entropy(logits, batch[label])},
                target=target or Target("accuracy", 0.97, "max"),
                **{"chance": lambda arrays: label_chance(arrays[label]), **kwargs})
    variables = jax.eval_shape(task.model.init, jax.random.PRNGKey(0), task.example_input())
    logits = jax.eval_shape(lambda v: task.model.apply(v, task.example_input(), False, None)[0], variables)
    if len(getattr(logits, "shape", ())) != 2:
        raise ValueError(f"a classifier's output must be [batch, classes] logits, got shape {getattr(logits, 'shape', None)}")
    top = max(int(a[label].max()) for a in (task.train, task.eval, task.test) if a is not None)
    if top >= logits.shape[-1]:
        raise ValueError(f"label {top} needs at least {top + 1} outputs; the model gives {logits.shape[-1]}")
    return task


def check_labels(labels: np.ndarray | None, label: str, split: str) -> None:
    """ValueError in one line unless `labels` are one non-negative integer class per example."""
    if labels is None:
        raise ValueError(f"the {split} arrays have no {label!r} array (name it with label=)")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{split} labels {label!r} must be integer classes, got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"{split} labels {label!r} must be one class per example (shape [N]), got {list(labels.shape)}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{split} labels {label!r} must be 0 or positive, got {labels.min()}")


def image_inputs(batch: Mapping[str, Any]) -> jax.Array:
    """uint8 images -> float32 in [0, 1] (inside the compiled step)."""
    return augment_lib.to_float(batch["image"])


def image_classification(model: Any, dataset: str | dataset_lib.Dataset = "mnist", *, target_accuracy: float = 0.97,
                         data_dir: str | None = None, augment: tuple[float, float] = (2.0, 10.0),
                         name: str | None = None, info: Mapping[str, Any] | None = None) -> Task:
    """The one-line helper: `image_classification(my_flax_cnn, "mnist")`.

    `dataset` is "mnist" (shipped with lrlab), "tfds:NAME" (prepared under `data_dir`) or a loaded
    `data.Dataset`; the target is accuracy on a fixed training subset; `augment` gives the largest
    shift (pixels) and rotation (degrees) a run with augmentation draws per example on the device.
    """
    ds = datasets.load_dataset(dataset, data_dir) if isinstance(dataset, str) else dataset
    shift, degrees = augment
    return classification(
        model, {"image": ds.train_images, "label": ds.train_labels}, inputs=image_inputs,
        target=Target("accuracy", target_accuracy, "max"),
        test={"image": ds.test_images, "label": ds.test_labels},
        augment=lambda key, x: augment_lib.augment_batch(key, x, shift, degrees),
        name=name or ds.name, info={"dataset": ds.name, **(info or {})})
