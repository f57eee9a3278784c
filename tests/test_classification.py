"""Classification tasks (task/classification.py) and the task probe (Task.probe): bad labels, a model
with too few outputs, non-finite inputs and metrics that are not per example are refused in one line
before anything compiles."""

import flax.linen as nn
import numpy as np
import pytest

from lrlab.task import classification
from lrlab.task.target import Target
from lrlab.task.task import Task


class Linear(nn.Module):
    classes: int = 10

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.classes)(x.reshape(x.shape[0], -1))


def arrays(labels=None, features=None):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(20, 4)).astype(np.float32) if features is None else features,
            "label": rng.integers(0, 10, 20).astype(np.int32) if labels is None else labels}


def build(model=None, **kw):
    return classification.classification(model or Linear(), arrays(**kw), inputs=lambda b: b["x"])


@pytest.mark.parametrize("labels, match", [
    (np.full(20, 1.0, np.float32), "must be integer classes, got dtype float32"),
    (np.array(["a"] * 20), "must be integer classes"),
    (np.zeros((20, 1), np.int32), r"one class per example \(shape \[N\]\), got \[20, 1\]"),
    (np.full(20, -1, np.int32), "must be 0 or positive, got -1"),
    (np.full(20, 12, np.int32), "label 12 needs at least 13 outputs; the model gives 10"),
])
def test_bad_labels_are_one_line(labels, match):
    with pytest.raises(ValueError, match=match):
        build(labels=labels)


def test_a_model_with_too_few_outputs_or_the_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="needs at least 10 outputs; the model gives 5"):
        build(model=Linear(classes=5), labels=np.arange(20) % 10)

    class Flat(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(10)(x).reshape(-1)

    with pytest.raises(ValueError, match=r"must be \[batch, classes\] logits"):
        build(model=Flat())


def test_the_probe_refuses_non_finite_inputs_and_non_per_example_metrics():
    features = np.zeros((20, 4), np.float32)
    features[3, 1] = np.nan
    with pytest.raises(ValueError, match="'x' holds NaN or infinite values"):
        build(features=features).probe()
    good = build()
    good.probe()
    xent = lambda logits, batch: classification.cross_entropy(logits, batch["label"])
    scalar = Task(model=Linear(), train=arrays(), inputs=lambda b: b["x"], loss=xent,
                  metrics={"loss": lambda logits, batch: xent(logits, batch).mean()}, target=Target("loss", 1.0))
    with pytest.raises(ValueError, match=r"metric 'loss' must give one value per example: shape \(2,\)"):
        scalar.probe()
