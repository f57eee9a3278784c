"""A character-level language model on text every machine has offline: the Python standard
library's own source files. The target is a validation loss in nats per character.

  python -m lrlab.experiments.lr_valley --task=lrlab.examples.char_lm:task --optimizer=adam \\
      --lr_min=1e-5 --lr_max=10 --num_lrs=12 --max_steps=1500 --eval_every=100

The text: the top-level modules of the standard library (`os.path.dirname(os.__file__)`, sorted by
name), concatenated as bytes; the first TRAIN_BYTES train, the next VAL_BYTES validate. Tokens are
bytes (256 symbols). The model predicts the next byte from the previous CONTEXT with an embedding
and a two-layer MLP (Bengio et al. 2003's shape).
"""

from __future__ import annotations

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import lrlab
from lrlab.task import classification

CONTEXT, TRAIN_BYTES, VAL_BYTES = 16, 1_000_000, 5_000
GOAL_NATS = 2.0  # validation cross-entropy per character counted as trained


def stdlib_text(num_bytes: int) -> bytes:
    """The first `num_bytes` of the standard library's top-level modules, concatenated in name order."""
    folder = pathlib.Path(os.path.dirname(os.__file__))
    chunks, size = [], 0
    for path in sorted(folder.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= num_bytes:
            break
    text = b"".join(chunks)[:num_bytes]
    if len(text) < num_bytes:
        raise ValueError(f"the standard library in {folder} holds only {len(text):,} bytes of top-level modules")
    return text


def windows(tokens_N: np.ndarray, context: int) -> dict[str, np.ndarray]:
    """Every (previous `context` bytes, next byte) pair of a byte sequence."""
    view = np.lib.stride_tricks.sliding_window_view(tokens_N, context + 1)
    return {"context": np.ascontiguousarray(view[:, :context]), "next": np.ascontiguousarray(view[:, context])}


class CharMLP(nn.Module):
    """Embedding of each context byte, concatenated, a hidden ReLU layer, logits over 256 bytes."""

    vocab: int = 256
    embed: int = 24
    hidden: int = 256

    @nn.compact
    def __call__(self, context_BT: jax.Array) -> jax.Array:
        x = nn.Embed(self.vocab, self.embed)(context_BT)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.vocab)(x)


def task(goal_nats: float = GOAL_NATS, context: int = CONTEXT, train_bytes: int = TRAIN_BYTES,
         val_bytes: int = VAL_BYTES) -> lrlab.Task:
    """The task: windows of the text, the model, cross-entropy in nats, the target validation loss."""
    tokens = np.frombuffer(stdlib_text(train_bytes + val_bytes + context), np.uint8)
    train, val = windows(tokens[:train_bytes + context], context), windows(tokens[train_bytes:], context)
    xent = lambda logits, batch: classification.cross_entropy(logits, batch["next"].astype(jnp.int32))
    return lrlab.Task(
        model=CharMLP(), train=train, eval=val, name="stdlib-chars",
        inputs=lambda batch: batch["context"].astype(jnp.int32),
        loss=xent, metrics={"loss": xent, "accuracy": lambda logits, batch: classification.correct(logits, batch["next"])},
        target=lrlab.Target("loss", goal_nats, "min"), chance=lambda arrays: classification.label_chance(arrays["next"]),
        info={"model_name": "CharMLP", "text": f"{train_bytes:,} + {val_bytes:,} bytes of the standard library"})
