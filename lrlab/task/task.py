"""What is trained: a task is a Flax model, a loss, the metrics to evaluate, a target, and data.

Data are in-memory arrays: a dict of numpy arrays of any shape and dtype with one leading example
axis (`{"image": uint8[N, 28, 28, 1], "label": int32[N]}`, `{"context": int32[N, T], "next": int32[N]}`).
A batch is the same dict at some example indices; `inputs(batch)` makes the model's input from it
(inside the compiled step: scale uint8 images there, not on the host); `loss(outputs, batch)` and
each metric `(outputs, batch)` give one value per example, averaged by the engine.

The target is a metric with a direction (`Target("accuracy", 0.97)`, `Target("loss", 1.5, "min")`),
measured on the task's evaluation set: `eval` when given (a validation set), otherwise a fixed
subset of the training set drawn by the seed (the study's "training accuracy"). Its results are
named `<eval_name>_<metric>`: `train_accuracy`, `validation_loss`.

`image_classification(model, "mnist")` is the one-line helper for images and labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrlab import digests, errors
from lrlab.task import adapters, sampling
from lrlab.task.target import Target

Arrays = Mapping[str, np.ndarray]
PerExample = Callable[[Any, Any], jax.Array]  # (outputs, batch) -> float[B]


def num_examples(arrays: Arrays) -> int:
    """The leading (example) axis shared by every array; ValueError if they disagree."""
    sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in arrays.items()}
    lengths = set(sizes.values())
    if not arrays or None in lengths or len(lengths) != 1:
        raise ValueError(f"data arrays must share one leading example axis, got {sizes}")
    return int(lengths.pop())


def take(arrays: Arrays, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The examples at `idx` of every array."""
    return {k: np.asarray(v)[idx] for k, v in arrays.items()}


def _default_inputs(batch: Mapping[str, Any]) -> Any:
    if "x" not in batch:
        raise ValueError("the task's data have no 'x' array: give the task an `inputs` function")
    return batch["x"]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """A Flax model with its loss, metrics, target and data (see the module docstring).

    model: a linen Module, an NNX module or constructor (rngs -> module), or a modules adapter.
    augment: optional `(key, inputs) -> inputs`, applied to training batches when a run asks for it.
    """

    model: Any
    train: Arrays
    loss: PerExample
    metrics: Mapping[str, PerExample]
    target: Target
    inputs: Callable[[Any], Any] = _default_inputs
    eval: Arrays | None = None
    test: Arrays | None = None
    augment: Callable[[jax.Array, Any], Any] | None = None
    name: str = "task"
    eval_name: str = ""  # default: "train" (a subset of the training set) or "validation" (`eval`)
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # saved in results.json
    # evaluation arrays -> {metric: its value for the best constant predictor} (retirement's "chance")
    chance: Callable[[Arrays], Mapping[str, float]] | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", adapters.as_model(self.model))
        object.__setattr__(self, "train", {k: np.asarray(v) for k, v in self.train.items()})
        num_examples(self.train)
        for split in ("eval", "test"):
            arrays = getattr(self, split)
            if arrays is not None:
                arrays = {k: np.asarray(v) for k, v in arrays.items()}
                num_examples(arrays)
                if set(arrays) != set(self.train):
                    raise ValueError(f"the task's {split} arrays ({', '.join(arrays)}) must be the training "
                                     f"arrays' ({', '.join(self.train)})")
                object.__setattr__(self, split, arrays)
        if not self.metrics:
            raise ValueError("give the task at least one metric")
        if self.target.metric not in self.metrics:
            raise ValueError(f"the target's metric {self.target.metric!r} is not among the task's metrics "
                             f"({', '.join(self.metrics)})")
        object.__setattr__(self, "metrics", dict(self.metrics))
        if not self.eval_name:
            object.__setattr__(self, "eval_name", "train" if self.eval is None else "validation")

    @property
    def num_train(self) -> int:
        return num_examples(self.train)

    def probe(self) -> None:
        """Checks, before anything compiles, what would otherwise train nonsense or fail deep in a
        traced step: non-finite float inputs, and the model's outputs against the loss and metrics
        (each must give one value per example). ValueError in one line; shapes only, nothing run.
        Once per task: every sweep of a run calls it, and the answer cannot change."""
        if getattr(self, "_probed", False):
            return
        for split, arrays in (("training", self.train), ("eval", self.eval), ("test", self.test)):
            for key, values in (arrays or {}).items():
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise ValueError(f"the {split} array {key!r} holds NaN or infinite values")
        batch = take(self.train, np.arange(min(2, self.num_train)))
        b = num_examples(batch)
        try:
            variables = jax.eval_shape(self.model.init, jax.random.PRNGKey(0), self.example_input())

            def outputs(v: Any, arrays: Any) -> Any:
                out, _ = self.model.apply(v, self.inputs(arrays), False, None)
                return self.loss(out, arrays), {name: fn(out, arrays) for name, fn in self.metrics.items()}

            loss, metrics = jax.eval_shape(outputs, variables, batch)
        except Exception as e:  # noqa: BLE001 - the user's model, loss or metrics: one line
            raise ValueError(f"the model, loss and metrics do not fit the data ({errors.one_line(e)})") from None
        for name, value in (("the loss", loss), *((f"metric {m!r}", v) for m, v in metrics.items())):
            if getattr(value, "shape", None) != (b,):
                raise ValueError(f"{name} must give one value per example: shape ({b},) for a batch of {b}, got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
        object.__setattr__(self, "_probed", True)

    @property
    def target_key(self) -> str:
        """The name of the target metric in records and curves: `<eval_name>_<metric>`."""
        return f"{self.eval_name}_{self.target.metric}"

    def metric_keys(self, prefix: str | None = None) -> list[str]:
        prefix = self.eval_name if prefix is None else prefix
        return [f"{prefix}_{m}" for m in self.metrics]

    def example_input(self) -> Any:
        """Zeros shaped like one example's model input (what initialisation traces)."""
        one = {k: jnp.zeros((1,) + v.shape[1:], v.dtype) for k, v in self.train.items()}
        return jax.tree_util.tree_map(jnp.zeros_like, self.inputs(one))

    def count_parameters(self) -> int:
        return adapters.count_parameters(self.model, self.example_input())

    def chance_value(self, arrays: Arrays) -> float | None:
        """The target metric's value for the best constant predictor on `arrays` (an evaluation
        set); None when the task does not say (its members are never retired)."""
        if self.chance is None:
            return None
        value = self.chance(arrays).get(self.target.metric)
        return None if value is None else float(value)

    def with_target(self, goal: float) -> Task:
        return dataclasses.replace(self, target=self.target.with_goal(goal))

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this task must match: the model and the data's shapes."""
        def shapes(arrays):
            return None if arrays is None else {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
        return {"task": self.name, "model": self.model.describe(), "train": shapes(self.train),
                "eval": shapes(self.eval), "target": self.target.describe()}

    def fingerprint(self) -> dict[str, Any]:
        """What the task holds, by content: digests of its data (training, evaluation and test sets) and
        of its model's code. A rerun on a workdir must match it, so that relabelled data or a rewritten
        model body is never taken for the run the workdir holds."""
        return {"data": {name: digests.arrays_digest(arrays) for name, arrays in
                         (("train", self.train), ("eval", self.eval), ("test", self.test))},
                "model_code": self.model.code_digest(self.example_input())}

    def describe(self) -> dict[str, Any]:
        """results.json's `task`: name, model, weights, data sizes, the target and where it is measured."""
        return {"name": self.name, "model": self.model.describe(), "parameters": self.count_parameters(),
                "train_examples": self.num_train, "eval": self.eval_name,
                "eval_examples": None if self.eval is None else num_examples(self.eval),
                "test_examples": None if self.test is None else num_examples(self.test),
                "target": dataclasses.asdict(self.target), "target_key": self.target_key, **self.info}


def load_task(spec: str) -> Task:
    """`module:callable` imported by name (big_vision's convention), called with no arguments; it
    must return a Task. ValueError with a one-line reason otherwise."""
    from lrlab import by_name

    build = by_name.load_callable(spec, "task builder")
    try:
        task = build() if callable(build) and not isinstance(build, Task) else build
    except Exception as e:  # noqa: BLE001 - the user's code: report it in one line
        raise ValueError(f"{spec} failed ({errors.one_line(e)})") from None
    if not isinstance(task, Task):
        raise ValueError(f"{spec} returned {type(task).__name__}, not an lrlab Task")
    return task


@dataclasses.dataclass(frozen=True)
class Splits:
    """A run's host arrays: what trains, where the target is measured, and early stopping's
    held-out validation set (or None)."""

    train: dict[str, np.ndarray]
    eval: dict[str, np.ndarray]
    val: dict[str, np.ndarray] | None


def split(task: Task, eval_examples: int, seed: int, validation_examples: int = 0) -> Splits:
    """The run's data: with `validation_examples`, that many training examples (drawn by `seed`)
    are held out for early stopping; the evaluation set is the task's `eval`, or a fixed subset of
    `eval_examples` of the (remaining) training examples drawn by `seed`."""
    train, val = task.train, None
    n = task.num_train
    if validation_examples:
        train_idx, val_idx = sampling.split_validation(n, validation_examples, seed)
        train, val = take(task.train, train_idx), take(task.train, val_idx)
    if task.eval is not None:
        evaluation = dict(task.eval)
    else:
        evaluation = take(train, sampling.eval_subset_indices(num_examples(train), eval_examples, seed))
    return Splits(dict(train), evaluation, val)
