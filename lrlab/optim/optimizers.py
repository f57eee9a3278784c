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

The learning-rate-free family (`lr_free.py`: prodigy, dog, momo, the schedule-free methods, ...) are
registry entries too, their learning rate a multiplier of the method's own step size (default 1).
An optimizer may need each member's loss in its update (`needs_value`) or evaluate other
parameters than it trains (`eval_params`): the engine reads both from here.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrlab.by_name import load_callable
from lrlab.optim import lr_free
from lrlab.optim.hparams import LEARNING_RATE, POSITIVE, RATE, UNIT, HParam
from lrlab.optim.schedules import ScheduleSpec, factor_schedule


@dataclasses.dataclass(frozen=True, eq=False)
class Optimizer:
    """An optimizer family: an Optax factory, its float arguments the hyperparameters (per member),
    its other arguments static settings at their values in `static` (the same for every member)."""

    name: str
    factory: Callable[..., optax.GradientTransformation]
    hparams: Mapping[str, HParam]  # every float argument of `factory`, the learning rate first
    static: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the others: argument -> its value
    needs_value: bool = False  # the update reads each member's loss: update(..., value=loss)
    eval_params: Callable[[Any, Any], Any] | None = None  # (the factory's state, params) -> what evaluation reads
    takes_schedule: bool = True  # False: a learning-rate schedule is refused (schedule-free methods)
    lr_free: bool = False  # the learning rate is a multiplier of the method's own step size (default 1)

    def __post_init__(self):
        if LEARNING_RATE not in self.hparams:
            raise ValueError(f"optimizer {self.name}: its factory must take a `learning_rate` argument")
        if self.hparams[LEARNING_RATE].default is not None and not self.lr_free:
            raise ValueError(f"optimizer {self.name}: the learning rate has no default (each member gives its own)")

    def evaluated_params(self, opt_state_K: Any, params_K: Any) -> Any:
        """The parameters evaluation reads, per member: `params_K` itself, or the optimizer's own
        evaluation point (`eval_params` of the injected factory's state)."""
        if self.eval_params is None:
            return params_K
        return jax.vmap(lambda state, params: self.eval_params(state.inner_state, params))(opt_state_K, params_K)

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
            if not self.takes_schedule:
                raise ValueError(f"{self.name} takes no learning-rate schedule (it is schedule-free): leave the "
                                 "schedule constant")
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
        first = {k: float(v[0]) for k, v in hparams_K.items()}
        try:
            made = self.factory(**first)
        except Exception as e:  # noqa: BLE001 - the user's factory: one line
            raise ValueError(f"{self.name}: the factory failed ({type(e).__name__}: {e})") from None
        if not isinstance(made, optax.GradientTransformation):
            raise ValueError(f"{self.name}: the factory returned {type(made).__name__}, not an "
                             "optax.GradientTransformation")
        injected = self._injected(schedule)
        if not self.needs_value:
            self._check_update(made, jax.tree_util.tree_map(lambda x: x[0], params_K))
        state = jax.vmap(lambda p, h: injected(**h).init(p))(params_K, hparams_K)
        # one buffer per leaf: an init may give two fields the same array (prodigy), and the engine donates each
        return jax.tree_util.tree_map(jnp.copy, state)


    def _check_update(self, tx: optax.GradientTransformation, params: Any) -> None:
        """Traces one update without running it: a transformation that needs the loss, not declared
        so, is one line here instead of an error inside the compiled step."""
        try:
            jax.eval_shape(lambda p: tx.update(p, tx.init(p), p), params)
        except TypeError as e:
            if "value" in str(e):
                raise ValueError(f"{self.name}: its update needs each step's loss (value=): declare it with "
                                 f"lrlab.optimizer(factory, needs_value=True)") from None
            raise


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


def optimizer(factory: Callable[..., optax.GradientTransformation], name: str | None = None, *,
              needs_value: bool | None = None, eval_params: Callable[[Any, Any], Any] | None = None,
              **hparams: float | HParam) -> Optimizer:
    """An `Optimizer` of any factory of named float hyperparameters, for example
    `optimizer(lambda learning_rate, weight_decay: optax.adamw(learning_rate, weight_decay=weight_decay))`.

    Every float argument of the factory (a float or int default, or none) is a hyperparameter; its
    default is the factory's own default, or the value (or `HParam`) given here; one without either
    must be given by every population. An argument whose default is not a number (None, a bool, a
    dtype, a mask: `optax.adamw`'s `mu_dtype`, `nesterov`) is a static setting: the factory's default,
    or the value given here, for every member. So an Optax factory passes as it is.

    `needs_value`: the update reads each step's loss (`update(..., value=loss)`, as momo's);
    `eval_params(state, params)`: what evaluation reads instead of the trained parameters (as the
    schedule-free methods' `schedule_free_eval_params`). Optax's own such functions are known.
    """
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        raise ValueError(f"cannot read the arguments of {factory!r}") from None
    specs: dict[str, HParam] = {}
    static: dict[str, Any] = {}
    for arg in signature.parameters.values():
        if arg.kind in (arg.VAR_POSITIONAL, arg.VAR_KEYWORD):
            raise ValueError(f"{getattr(factory, '__name__', factory)}: name every hyperparameter "
                             f"(no *{arg.name} / **{arg.name})")
        given = hparams.pop(arg.name, None)
        if arg.name == LEARNING_RATE:
            specs[arg.name] = given if isinstance(given, HParam) else RATE
        elif isinstance(given, HParam):
            specs[arg.name] = given
        elif _is_static(arg.default) and (given is None or _is_static(given)):
            static[arg.name] = arg.default if given is None else given
        else:
            default = given if given is not None else (None if arg.default is arg.empty else arg.default)
            if default is not None and _is_static(default):
                raise ValueError(f"{arg.name}: a float hyperparameter, got {default!r}")
            specs[arg.name] = HParam(None if default is None else float(default))
    if hparams:
        raise ValueError(f"the factory has no argument {', '.join(hparams)}")
    label = name or getattr(factory, "__name__", "optimizer")
    if label == "<lambda>":
        label = "custom"
    if LEARNING_RATE not in specs:
        raise ValueError(f"{label}: the factory must take a `learning_rate` argument")
    given_static = {k: v for k, v in static.items() if signature.parameters[k].default is not v}
    properties = dict(lr_free.PROPERTIES.get(factory, {}))  # an Optax function that needs the loss, or evaluates elsewhere
    if needs_value is not None:
        properties["needs_value"] = needs_value
    if eval_params is not None:
        properties["eval_params"] = eval_params
    if given_static:  # static values given here: the factory called with them
        factory = functools.partial(factory, **given_static)
    return Optimizer(label, factory, {LEARNING_RATE: specs.pop(LEARNING_RATE), **specs}, static, **properties)


def _is_static(value: Any) -> bool:
    """Whether an argument's default (or given value) makes it a static setting, not a float
    hyperparameter: anything but an int or a float (a bool, None, a dtype, a callable...)."""
    return value is not inspect.Parameter.empty and (isinstance(value, bool) or not isinstance(value, (int, float)))


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
STUDY_OPTIMIZERS = tuple(REGISTRY)  # the study's six: what 'all' names
REGISTRY.update({name: Optimizer(name, method.factory, {LEARNING_RATE: lr_free.MULTIPLIER}, lr_free=True,
                                 **method.properties)
                 for name, method in lr_free.METHODS.items()})
OPTIMIZERS = tuple(REGISTRY)


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
    """'adam', 'sgd,adam', 'all' (the study's six) or MODULE:NAME entries -> names, in registry order
    for 'all'; ValueError if unknown or listed twice."""
    if text.strip() == "all":
        return list(STUDY_OPTIMIZERS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY and ":" not in n]
    if not names or unknown:
        raise ValueError(f"unknown optimizer {', '.join(unknown) or repr(text)}: "
                         f"choose from {', '.join(OPTIMIZERS)} or 'all'")
    if len(set(names)) != len(names):
        raise ValueError(f"optimizer listed twice in {text!r}")
    return names
