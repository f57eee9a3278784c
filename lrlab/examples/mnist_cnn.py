"""A user's own Flax CNN (nn.Conv, batch norm, dropout) on MNIST, trained with an Optax chain whose
learning rate AND weight decay vary per member: a 2-D grid in one population.

  python -m lrlab.experiments.lr_valley --task=lrlab.examples.mnist_cnn:task \\
      --optimizer=lrlab.examples.mnist_cnn:adamw --hparam=weight_decay=1e-4,1e-2 --num_lrs=8

From Python: `lrlab.lr_valley(task(), lrlab.grid(adamw, learning_rate=..., weight_decay=...))`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import optax

import lrlab


class CNN(nn.Module):
    """Two strided 3x3 convolutions with batch norm, dropout, a dense classifier (9,146 weights)."""

    num_classes: int = 10
    dropout_rate: float = 0.2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for features in (8, 16):
            x = nn.Conv(features, (3, 3), strides=(2, 2))(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes)(x)


def adamw(learning_rate, weight_decay):
    """Gradient clipping then AdamW: both floats are per-member hyperparameters."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=weight_decay))


def task(target_accuracy: float = 0.97) -> lrlab.Task:
    """The CNN on the shipped MNIST, accuracy on a fixed training subset as the target."""
    return lrlab.image_classification(CNN(), "mnist", target_accuracy=target_accuracy, name="mnist",
                                      info={"model_name": "user CNN (nn.Conv, batch norm, dropout)"})
