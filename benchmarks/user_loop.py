"""The loop a Flax user writes without lrlab: plain Flax + Optax + JAX, no lrlab import.

The study's two networks with `nn.Conv` and `nn.max_pool` (the same parameter tree and initial
values as lrlab.models' small_cnn and tutorial_cnn, tested in tests/test_user_loop.py), a jitted
Adam train step called from a Python loop as the Flax MNIST example does, an evaluation on a fixed
training subset every `eval_every` steps, each run stopped at the target, the rates one after
another. The learning rate is injected (optax.inject_hyperparams), so one compiled step serves every
rate: the careful user's loop, not one that recompiles per rate.

The caller supplies the data and the keys, so batches, dropout masks and initial weights can be
the ones an lrlab run uses (and the two tables compared row by row).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

glorot = nn.initializers.glorot_uniform()  # tf.layers' default kernel initializer, as the study's TF1 code


def pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class SmallCNN(nn.Module):
    """2x2 max-pool of the input, conv 5x5x8, pool, conv 3x3x20, pool, dense 10 (3,478 weights)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = pool(x)
        x = pool(nn.relu(nn.Conv(8, (5, 5), padding="SAME", kernel_init=glorot)(x)))
        x = pool(nn.relu(nn.Conv(20, (3, 3), padding="SAME", kernel_init=glorot)(x)))
        return nn.Dense(10, kernel_init=glorot)(x.reshape(x.shape[0], -1))


class TutorialCNN(nn.Module):
    """TensorFlow's MNIST tutorial network (the study's): conv 32, pool, conv 64, pool, dense 1024,
    dropout 0.4, dense 10."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = pool(nn.relu(nn.Conv(32, (5, 5), padding="SAME", kernel_init=glorot)(x)))
        x = pool(nn.relu(nn.Conv(64, (5, 5), padding="SAME", kernel_init=glorot)(x)))
        x = nn.relu(nn.Dense(1024, kernel_init=glorot)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.4, deterministic=not train)(x)
        return nn.Dense(10, kernel_init=glorot)(x)


MODELS: dict[str, Callable[[], nn.Module]] = {"small_cnn": SmallCNN, "tutorial_cnn": TutorialCNN}


@dataclasses.dataclass
class RunResult:
    """One rate's run: steps to target (None if missed), steps trained, last accuracy, seconds."""

    learning_rate: float
    reached: bool
    diverged: bool
    steps_to_target: int | None
    steps_trained: int
    final_accuracy: float
    seconds: float


class UserLoop:
    """Compiled once per model: a train step, an accuracy, an epoch's batch order."""

    def __init__(self, model: nn.Module, batch_size: int = 100):
        self.model, self.batch_size = model, batch_size
        # TF1 Adam's defaults; the rate is injected so a new one never recompiles.
        self.tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8)
        to_float = lambda images_u8: images_u8.astype(jnp.float32) * (1.0 / 255.0)

        @jax.jit
        def train_step(params, opt_state, images, labels, order, offset, dropout_key):
            idx = jax.lax.dynamic_slice_in_dim(order, offset * batch_size, batch_size)

            def loss_fn(p):
                logits = model.apply({"params": p}, to_float(images[idx]), train=True, rngs={"dropout": dropout_key})
                return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        @jax.jit
        def accuracy(params, images, labels):
            logits = model.apply({"params": params}, to_float(images), train=False)
            return jnp.mean(jnp.argmax(logits, -1) == labels)

        @jax.jit
        def epoch_order(data_key, epoch, n):
            """This epoch's order of the training examples: argsort of random bits."""
            bits = jax.random.bits(jax.random.fold_in(data_key, epoch), (n.shape[0],), jnp.uint32)
            return jnp.argsort(bits).astype(jnp.int32)

        self.train_step, self.accuracy, self.epoch_order = train_step, accuracy, epoch_order

    def run(self, lr: float, data: dict[str, Any], keys: dict[str, jax.Array], max_steps: int, eval_every: int,
            target: float) -> RunResult:
        """One rate: init, then steps until the accuracy on data['eval_*'] reaches `target` at an
        evaluation (every `eval_every` steps), the loss turns non-finite, or `max_steps` pass.

        data: train_image (uint8 NHWC), train_label, eval_image, eval_label, on the device.
        keys: init, data (the batch order), dropout (folded with the step).
        """
        start = time.perf_counter()
        images, labels = data["train_image"], data["train_label"]
        n = labels.shape[0]
        steps_per_epoch = n // self.batch_size
        params = self.model.init(keys["init"], jnp.zeros((1,) + images.shape[1:], jnp.float32))["params"]
        opt_state = self.tx.init(params)
        opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
        shape_n = jnp.zeros((n,), jnp.uint8)  # n as a shape, so the order compiles once per dataset size
        order, epoch, acc, loss = None, -1, 0.0, jnp.float32(0)
        for step in range(max_steps):
            if step // steps_per_epoch != epoch:
                epoch = step // steps_per_epoch
                order = self.epoch_order(keys["data"], epoch, shape_n)
            params, opt_state, loss = self.train_step(params, opt_state, images, labels, order,
                                                      step % steps_per_epoch, jax.random.fold_in(keys["dropout"], step))
            if (step + 1) % eval_every == 0:
                if not np.isfinite(float(loss)):
                    return RunResult(lr, False, True, None, step + 1, acc, time.perf_counter() - start)
                acc = float(self.accuracy(params, data["eval_image"], data["eval_label"]))
                if acc >= target:
                    return RunResult(lr, True, False, step + 1, step + 1, acc, time.perf_counter() - start)
        return RunResult(lr, False, False, None, max_steps, acc, time.perf_counter() - start)


def valley(model_name: str, rates: list[float], data: dict[str, Any], keys: dict[str, jax.Array], max_steps: int,
           eval_every: int = 50, target: float = 0.97, batch_size: int = 100) -> list[RunResult]:
    """The whole valley as a user runs it: the rates one after another, compilation included."""
    loop = UserLoop(MODELS[model_name](), batch_size)
    return [loop.run(lr, data, keys, max_steps, eval_every, target) for lr in rates]
