"""Populations: an optimizer and every member's hyperparameters (float32[K] each), and the grids
that build them (`grid`: the product of the given values, defaults for the rest).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lrlab.optim.hparams import LEARNING_RATE
from lrlab.optim.optimizers import Optimizer, get


@dataclasses.dataclass(frozen=True, eq=False)
class Members:
    """One population to train: an optimizer and every member's hyperparameters (float32[K] each)."""

    optimizer: Optimizer
    hparams: Mapping[str, np.ndarray]
    name: str = ""  # the population's label in results (default: the optimizer's name)

    def __post_init__(self):
        object.__setattr__(self, "name", self.name or self.optimizer.name)
        sizes = {np.shape(v) for v in self.hparams.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1 or next(iter(sizes))[0] < 1:
            raise ValueError(f"{self.name}: every hyperparameter needs one value per member (1-D, same length)")
        missing = [k for k in self.optimizer.hparams if k not in self.hparams]
        if missing:
            raise ValueError(f"{self.name}: give {', '.join(missing)}")
        unknown = sorted(set(self.hparams) - set(self.optimizer.hparams))
        if unknown:
            raise ValueError(f"{self.name} has no hyperparameter {', '.join(unknown)}")
        for k, values in self.hparams.items():
            for v in np.asarray(values).tolist():
                self.optimizer.hparams[k].check(k, v)

    @property
    def size(self) -> int:
        return len(self.hparams[LEARNING_RATE])

    @property
    def learning_rates(self) -> np.ndarray:
        return np.asarray(self.hparams[LEARNING_RATE], np.float32)

    def varying(self) -> list[str]:
        """The hyperparameters whose values differ between members."""
        return [k for k, v in self.hparams.items() if len(np.unique(np.asarray(v))) > 1]

    def subset(self, idx: Sequence[int]) -> Members:
        idx = np.asarray(idx, np.int64)
        return Members(self.optimizer, {k: np.asarray(v)[idx] for k, v in self.hparams.items()}, self.name)

    def to_json(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in np.asarray(v)] for k, v in self.hparams.items()}


def grid(optimizer_spec: str | Optimizer | Callable, name: str = "", **values: float | Sequence[float]) -> Members:
    """The members of a grid: each hyperparameter given a sequence is an axis, a scalar a fixed
    value; the population is the product of the axes in the order given (the last varies
    fastest), the other hyperparameters at the optimizer's defaults.

    `grid("adam", learning_rate=np.geomspace(1e-6, 100, 48))`;
    `grid(adamw, learning_rate=[1e-3, 1e-2], weight_decay=[1e-4, 1e-2])` (4 members).
    """
    opt = get(optimizer_spec)
    static = sorted(set(values) & set(opt.static))
    if static:
        name_ = static[0]
        raise ValueError(f"{name_} is a static setting of {opt.name} (now {opt.static[name_]!r}), not a float "
                         f"hyperparameter: give it with lrlab.optimizer({opt.name}, {name_}=...), one population per "
                         "value")
    unknown = sorted(set(values) - set(opt.hparams))
    if unknown:
        raise ValueError(f"{opt.name} has no hyperparameter {', '.join(unknown)} (it has {', '.join(opt.hparams)})")
    for k, v in values.items():
        kinds = {np.asarray(v).dtype.kind}
        if not kinds <= set("iuf"):
            raise ValueError(f"{k}: hyperparameter values are numbers, got {np.asarray(v).dtype} ({v!r})")
    axes = {k: [float(x) for x in np.ravel(np.asarray(v, np.float64))] for k, v in values.items()}
    for k, v in axes.items():
        if not v:
            raise ValueError(f"{k}: no values given")
    fixed = {k: [float(h.default)] for k, h in opt.hparams.items() if k not in axes and h.default is not None}
    missing = [k for k in opt.hparams if k not in axes and k not in fixed]
    if missing:
        raise ValueError(f"{opt.name}: give {', '.join(missing)}")
    ordered = {**{k: axes[k] for k in axes}, **fixed}
    rows = list(itertools.product(*ordered.values()))
    hparams = {k: np.asarray([row[i] for row in rows], np.float32) for i, k in enumerate(ordered)}
    return Members(opt, {k: hparams[k] for k in opt.hparams}, name)


def population_hparams(optimizer_spec: str | Optimizer, learning_rates: Any,
                       overrides: Mapping[str, float] | None = None) -> dict[str, np.ndarray]:
    """Per-member hyperparameters of a population of one member per learning rate, the others
    (defaults, then the `overrides` that this optimizer has) the same for all, float32[K] each."""
    opt = get(optimizer_spec)
    lr_K = np.asarray(learning_rates, np.float32).reshape(-1)
    values = {**opt.defaults(), **{k: float(v) for k, v in (overrides or {}).items() if k in opt.hparams}}
    return {LEARNING_RATE: lr_K, **{k: np.full(lr_K.shape, values[k], np.float32)
                                    for k in opt.hparams if k != LEARNING_RATE}}
