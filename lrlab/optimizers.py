"""Optimizers as Optax factories of named float hyperparameters, each of them per-member data.

Any function `f(learning_rate, other_float, ...) -> optax.GradientTransformation` is an optimizer
(`optimizer(f)`): every argument becomes a hyperparameter injected with `optax.inject_hyperparams`,
so it lives in the optimizer state as an array on the population axis. A new value never
recompiles, and population-based methods can overwrite it between segments. Hyperparameters used
only at initialisation (Adagrad's initial accumulator) are per member too: the state is
initialised under `vmap` with each member's values.

The study's six (Mack 2018) are registry entries with TensorFlow 1's defaults, which it used:
  sgd       tf.train.GradientDescentOptimizer    w -= lr * g
  momentum  tf.train.MomentumOptimizer(lr, 0.5)  a = 0.5 a + g; w -= lr * a (no Nesterov)
  adam      tf.train.AdamOptimizer               b1 0.9, b2 0.999, eps 1e-8 (TF adds eps to the
            uncorrected sqrt(v); Optax to the bias-corrected one: the two differ by a factor
            sqrt(1 - b2^t) on eps alone, immaterial at 1e-8)
  adagrad   tf.train.AdagradOptimizer            accumulator starts at 0.1, no epsilon
  adadelta  tf.train.AdadeltaOptimizer           rho 0.95, eps 1e-8
  rmsprop   tf.train.RMSPropOptimizer            decay 0.9, eps 1e-10 inside the sqrt, mean
            square starts at 1.0 (TF1 initialises it to ones), no momentum, not centred
Each hyperparameter's default, valid range, search range and help live once, in its `HParam`:
the command-line flags, the searches and PBT read them from here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

from lrlab import errors
from lrlab.lr_schedules import ScheduleSpec, factor_schedule

LEARNING_RATE = "learning_rate"


@dataclasses.dataclass(frozen=True)
class HParam:
    """One float hyperparameter: its default, where it is valid, and where a search looks.

    Valid: low..high, each end closed unless `open_low` / `open_high`. Search: the range a random
    or Bayesian search and PBT use when none is given ((low, high, log-scale)).
    """

    default: float | None = None  # None: every population must give it (the learning rate)
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    search: tuple[float, float, bool] | None = None
    help: str = ""

    def describe_range(self) -> str:
        low = f"{'(' if self.open_low else '['}{self.low:g}"
        high = f"{self.high:g}{')' if self.open_high else ']'}"
        return f"{low}, {high}"

    def check(self, name: str, value: float) -> float:
        """`value` as a float, or ValueError naming `name` and its valid range."""
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        ok = (math.isfinite(value) and (value > self.low if self.open_low else value >= self.low)
              and (value < self.high if self.open_high else value <= self.high))
        if not ok:
            raise ValueError(f"{name} must be finite and in {self.describe_range()}, got {value:g}")
        return value


RATE = HParam(None, 0.0, math.inf, open_low=True, search=(1e-6, 100.0, True), help="Learning rate.")
UNIT = dict(low=0.0, high=1.0, open_high=True)  # averaging coefficients: 1 would stop them averaging
POSITIVE = dict(low=0.0, high=math.inf)


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
    """An optimizer family: an Optax factory whose arguments are all float hyperparameters."""

    name: str
    factory: Callable[..., optax.GradientTransformation]
    hparams: Mapping[str, HParam]  # every argument of `factory`, the learning rate first

    def __post_init__(self):
        if LEARNING_RATE not in self.hparams:
            raise ValueError(f"optimizer {self.name}: its factory must take a `learning_rate` argument")
        if self.hparams[LEARNING_RATE].default is not None:
            raise ValueError(f"optimizer {self.name}: the learning rate has no default (each member gives its own)")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.hparams)

    def defaults(self) -> dict[str, float]:
        """The hyperparameters that have a default (all but the learning rate, for the registry)."""
        return {k: h.default for k, h in self.hparams.items() if h.default is not None}

    def check(self, values: Mapping[str, float]) -> dict[str, float]:
        """`values` checked against this optimizer: known names, valid values; ValueError otherwise."""
        unknown = sorted(set(values) - set(self.hparams))
        if unknown:
            raise ValueError(f"{self.name} has no hyperparameter {', '.join(unknown)} "
                             f"(it has {', '.join(self.hparams)})")
        return {k: self.hparams[k].check(k, v) for k, v in values.items()}

    def _injected(self, schedule: ScheduleSpec | None):
        factory = self.factory
        if schedule is not None and (schedule.name != "constant" or schedule.warmup_steps):
            factory = _scheduled(factory, factor_schedule(schedule))
        return optax.inject_hyperparams(factory)

    def make_tx(self, schedule: ScheduleSpec | None = None) -> optax.GradientTransformation:
        """The transformation whose update reads every hyperparameter from the state (the values
        given here are placeholders), the learning rate (the peak, with a schedule) multiplied by
        the schedule's factor of the member's own step count."""
        placeholders = {k: (0.0 if h.default is None else h.default) for k, h in self.hparams.items()}
        return self._injected(schedule)(**placeholders)

    def init_state(self, params_K: Any, hparams_K: Mapping[str, Any],
                   schedule: ScheduleSpec | None = None) -> optax.OptState:
        """Each member's optimizer state from its own hyperparameters (vmapped init: values used
        only at initialisation, such as an initial accumulator, are per member too)."""
        missing = [k for k in self.hparams if k not in hparams_K]
        if missing:
            raise KeyError(f"{self.name}: no values for {', '.join(missing)}")
        hparams_K = {k: np.asarray(hparams_K[k], np.float32) for k in self.hparams}
        injected = self._injected(schedule)
        return jax.vmap(lambda p, h: injected(**h).init(p))(params_K, hparams_K)


def _scheduled(factory: Callable[..., optax.GradientTransformation],
               factor: optax.Schedule) -> Callable[..., optax.GradientTransformation]:
    """`factory` whose learning rate becomes the schedule `learning_rate * factor(count)` (so the
    factory's learning_rate must accept an Optax schedule, as every Optax optimizer's does).

    The signature is kept (functools.wraps), so inject_hyperparams still injects `learning_rate`:
    the peak stays per-member state, the schedule counts each member's own steps.
    """
    @functools.wraps(factory)
    def build(learning_rate, **kwargs):
        return factory(learning_rate=lambda count: learning_rate * factor(count), **kwargs)

    return build


def optimizer(factory: Callable[..., optax.GradientTransformation], name: str | None = None,
              **hparams: float | HParam) -> Optimizer:
    """An `Optimizer` of any factory of named float hyperparameters, for example
    `optimizer(lambda learning_rate, weight_decay: optax.adamw(learning_rate, weight_decay=weight_decay))`.

    Every argument of the factory is a hyperparameter; its default is the factory's own default,
    or the value (or `HParam`) given here; one without either must be given by every population.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise ValueError(f"cannot read the arguments of {factory!r}") from None
    specs: dict[str, HParam] = {}
    for arg in signature.parameters.values():
        if arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD):
            raise ValueError(f"{getattr(factory, '__name__', factory)}: name every hyperparameter "
                             f"(no *{arg.name} / **{arg.name})")
        given = hparams.pop(arg.name, None)
        if arg.name == LEARNING_RATE:
            specs[arg.name] = given if isinstance(given, HParam) else RATE
        elif isinstance(given, HParam):
            specs[arg.name] = given
        else:
            default = given if given is not None else (None if arg.default is arg.empty else arg.default)
            if default is not None and not isinstance(default, (int, float)):
                raise ValueError(f"{arg.name}: hyperparameters are floats; close over other arguments "
                                 f"(got a default of type {type(default).__name__})")
            specs[arg.name] = HParam(None if default is None else float(default))
    if hparams:
        raise ValueError(f"the factory has no argument {', '.join(hparams)}")
    label = name or getattr(factory, "__name__", "optimizer")
    if label == "<lambda>":
        label = "custom"
    if LEARNING_RATE not in specs:
        raise ValueError(f"{label}: the factory must take a `learning_rate` argument")
    return Optimizer(label, factory, {LEARNING_RATE: specs.pop(LEARNING_RATE), **specs})


# The study's six optimizers, with TF1's defaults.

def _momentum(learning_rate, momentum):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=False)


def _adam(learning_rate, b1, b2, eps):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _adagrad(learning_rate, initial_accumulator):
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator, eps=0.0)


def _adadelta(learning_rate, rho, eps):
    return optax.adadelta(learning_rate, rho=rho, eps=eps)


def _rmsprop(learning_rate, decay, eps, initial_scale):
    return optax.rmsprop(learning_rate, decay=decay, eps=eps, initial_scale=initial_scale)


def _sgd(learning_rate):
    return optax.sgd(learning_rate)


REGISTRY: dict[str, Optimizer] = {
    "sgd": Optimizer("sgd", _sgd, {LEARNING_RATE: RATE}),
    "momentum": Optimizer("momentum", _momentum, {LEARNING_RATE: RATE, "momentum": HParam(
        0.5, **UNIT, search=(0.0, 0.99, False),
        help="Momentum coefficient (TF1 MomentumOptimizer as the study used: 0.5).")}),
    "adam": Optimizer("adam", _adam, {
        LEARNING_RATE: RATE,
        "b1": HParam(0.9, **UNIT, search=(0.0, 0.99, False), help="Adam beta1 (TF1 default 0.9)."),
        "b2": HParam(0.999, **UNIT, search=(0.9, 0.9999, False),
                     help="Adam beta2 (TF1 default 0.999)."),
        "eps": HParam(1e-8, **POSITIVE, search=(1e-10, 1e-4, True), help="Adam epsilon (TF1 default 1e-8).")}),
    "adagrad": Optimizer("adagrad", _adagrad, {LEARNING_RATE: RATE, "initial_accumulator": HParam(
        0.1, **POSITIVE, search=(1e-3, 1.0, True), help="Adagrad initial accumulator (TF1 default 0.1).")}),
    "adadelta": Optimizer("adadelta", _adadelta, {
        LEARNING_RATE: RATE,
        "rho": HParam(0.95, **UNIT, search=(0.5, 0.999, False), help="Adadelta rho (TF1 default 0.95)."),
        "eps": HParam(1e-8, **POSITIVE, search=(1e-10, 1e-4, True), help="Adadelta epsilon (TF1 default 1e-8).")}),
    "rmsprop": Optimizer("rmsprop", _rmsprop, {
        LEARNING_RATE: RATE,
        "decay": HParam(0.9, **UNIT, search=(0.5, 0.999, False), help="RMSProp decay (TF1 default 0.9)."),
        "eps": HParam(1e-10, **POSITIVE, search=(1e-10, 1e-4, True),
                      help="RMSProp epsilon, inside the sqrt (TF1 default 1e-10)."),
        "initial_scale": HParam(1.0, **POSITIVE, search=(0.0, 1.0, False),
                                help="RMSProp initial mean square (TF1 initialises it to 1.0).")}),
}
OPTIMIZERS = tuple(REGISTRY)


def load_callable(spec: str, what: str) -> Any:
    """`module.path:attribute` imported by name (big_vision's convention for configs); ValueError
    with a one-line reason."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:NAME (a {what} importable by name, e.g. my_pkg.tasks:cifar)")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module: any import error is theirs
        raise ValueError(f"cannot import {module_name} ({errors.one_line(e)})") from None
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ValueError(f"{module_name} has no {attr}") from None


def get(spec: str | Optimizer | Callable) -> Optimizer:
    """A registry name, an `Optimizer`, a factory (wrapped by `optimizer`), or `module:name`
    naming either; ValueError if unknown."""
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str):
        if spec in REGISTRY:
            return REGISTRY[spec]
        if ":" not in spec:
            raise ValueError(f"unknown optimizer {spec}: choose from {', '.join(OPTIMIZERS)}, or name a "
                             "factory as MODULE:NAME")
        obj = load_callable(spec, "optimizer factory")
        return obj if isinstance(obj, Optimizer) else optimizer(obj, name=spec.rpartition(":")[2])
    if callable(spec):
        return optimizer(spec)
    raise ValueError(f"not an optimizer: {spec!r}")


def parse_optimizer_list(text: str) -> list[str]:
    """'adam', 'sgd,adam', 'all' or MODULE:NAME entries -> names, in registry order for 'all';
    ValueError if unknown or listed twice."""
    if text.strip() == "all":
        return list(OPTIMIZERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY and ":" not in n]
    if not names or unknown:
        raise ValueError(f"unknown optimizer {', '.join(unknown) or repr(text)}: "
                         f"choose from {', '.join(OPTIMIZERS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"optimizer listed twice in {text!r}")
    return names


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

    def subset(self, idx: Sequence[int]) -> "Members":
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
    unknown = sorted(set(values) - set(opt.hparams))
    if unknown:
        raise ValueError(f"{opt.name} has no hyperparameter {', '.join(unknown)} (it has {', '.join(opt.hparams)})")
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


def default_hparams(name: str, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """The per-member hyperparameters of `name` besides the learning rate (defaults, then the
    `overrides` that apply to it)."""
    opt = get(name)
    return {k: float((overrides or {}).get(k, v)) for k, v in opt.defaults().items()}
