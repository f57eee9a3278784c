"""Flax models behind one functional interface: Linen modules and NNX modules (through
`nnx.split` / `nnx.merge`) alike become `init(key, x) -> variables` and
`apply(variables, x, train, key, conv) -> (outputs, model state)` over plain pytrees of arrays.

variables = {"params": what the optimizer trains, **model state (batch statistics, ...)}: the
engine stacks them on the member axis, checkpoints them with Orbax and never looks inside.

`conv` is the formulation of the model's convolutions (`conv.FORMULATIONS`). With "matmul", every
layer that calls a `conv_general_dilated` (Linen's `nn.Conv` through `nn.intercept_methods`, NNX's
`nnx.Conv` on the merged module, lrlab's own conv blocks) gets `conv.conv_general_dilated_matmul` in
its place: the same function of the same parameters, lowered as a matmul, and XLA's convolution for
what it does not cover. With "xla" the model runs as written. `conv_layers` says which layers are
lowered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lrlab import digests
from lrlab.task import conv as conv_lib

# How a Linen module is told it trains, by the name of its __call__ argument (inverted: True means
# "not training").
TRAIN_ARGS = {"train": False, "training": False, "is_training": False, "deterministic": True}


LOWERED = "lowered"
_ABSENT = object()
Layers = dict[str, str]  # a conv layer's path -> LOWERED, or "as written (why)"


def _convolution(formulation: str, path: str, layers: Layers | None) -> Callable[..., jax.Array]:
    """The `conv_general_dilated` a layer at `path` gets: `formulation`'s, noting in `layers` (when
    given) whether the layer is lowered or runs as written, and why."""
    fn = conv_lib.CONV_GENERAL_DILATED[formulation]
    if layers is None:
        return fn

    def noted(*args: Any, **kwargs: Any) -> jax.Array:
        why = conv_lib.explain_unsupported(*args, **kwargs)
        layers[path] = LOWERED if why is None else f"as written ({why})"
        return fn(*args, **kwargs)

    return noted


def _linen_lowering(formulation: str, layers: Layers | None):
    """`nn.intercept_methods` giving each Linen module whose `conv_general_dilated` is unset (nn.Conv,
    lrlab's conv blocks) the formulation's for the duration of its call."""
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (context.method_name != "__call__" or getattr(module, "conv_general_dilated", _ABSENT) is not None
                or getattr(module, "conv_general_dilated_cls", None) is not None):
            return next_fun(*args, **kwargs)
        object.__setattr__(module, "conv_general_dilated", _convolution(formulation, "/".join(module.path), layers))
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(module, "conv_general_dilated", None)

    return nn.intercept_methods(intercept)


@dataclasses.dataclass(frozen=True, eq=False)
class LinenModel:
    """A `flax.linen` module. `train_arg` is the __call__ argument that switches training on
    (detected: train, training, is_training or deterministic; None: the module has none);
    `rng_names` the random streams it draws while training (dropout's first)."""

    module: nn.Module
    train_arg: str | None = "auto"
    rng_names: tuple[str, ...] = ("dropout",)
    reseedable: bool = True  # initialised from the key given: each member can have its own

    def __post_init__(self):
        if self.train_arg == "auto":
            params = inspect.signature(type(self.module).__call__).parameters
            object.__setattr__(self, "train_arg", next((a for a in TRAIN_ARGS if a in params), None))

    def _mode(self, train: bool) -> dict[str, bool]:
        if self.train_arg is None:
            return {}
        return {self.train_arg: (not train) if TRAIN_ARGS[self.train_arg] else train}

    def init(self, key: jax.Array, x: Any) -> dict[str, Any]:
        return dict(self.module.init(key, x, **self._mode(False)))

    def apply(self, variables: dict[str, Any], x: Any, train: bool, key: jax.Array | None = None,
              conv: str = conv_lib.XLA, layers: Layers | None = None) -> tuple[Any, dict[str, Any]]:
        """The outputs and the new model state, the convolutions in formulation `conv` (see the
        module docstring; `layers`, when given, records each conv layer's lowering)."""
        state = {k: v for k, v in variables.items() if k != "params"}
        lowering = _linen_lowering(conv, layers) if conv != conv_lib.XLA or layers is not None else None
        with lowering or contextlib.nullcontext():
            if not train:
                return self.module.apply(variables, x, **self._mode(False)), state
            rngs = {name: key if i == 0 else jax.random.fold_in(key, i) for i, name in enumerate(self.rng_names)}
            outputs, new_state = self.module.apply(variables, x, rngs=rngs, mutable=list(state),
                                                   **self._mode(True))
        return outputs, dict(new_state)

    @property
    def name(self) -> str:
        return type(self.module).__name__

    def describe(self) -> str:
        """A short description and a digest of the whole configuration (checkpoint identity)."""
        return f"{self.name} (linen, config {digests.text_digest(repr(self.module))})"

    def modules_called(self, x: Any) -> list[tuple[str, str, nn.Module]]:
        """(path, method name, module) of every module method call the initialisation on `x` makes,
        in call order (shapes only, nothing computed; the modules' fields stay readable)."""
        called: list[tuple[str, str, nn.Module]] = []

        def record(next_fun, args, kwargs, context):
            called.append(("/".join(context.module.path), context.method_name, context.module))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            jax.eval_shape(lambda k: self.module.init(k, x, **self._mode(False)), jax.random.PRNGKey(0))
        return called

    def code_digest(self, x: Any) -> str:
        """A digest of the model's code: the source of every module class its initialisation on `x`
        calls."""
        classes = {type(module) for _, _, module in self.modules_called(x)}
        ordered = sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")
        return digests.text_digest("\n".join(digests.source_of(c) for c in ordered))


@dataclasses.dataclass(frozen=True, eq=False)
class NNXModel:
    """A `flax.nnx` module, from a constructor `make(rngs) -> module` (each member initialised from
    its own key) or from a module instance (every member starts from its values). Parameters are
    the `nnx.Param` variables; other variables but the random streams (batch statistics, ...) are
    model state. The random streams are made afresh at every step from the member's step key, so
    dropout is reproducible and per member. `train()` / `eval()` set the mode."""

    make: Callable[..., Any] | None = None
    instance: Any = None

    def __post_init__(self):
        from flax import nnx

        if (self.make is None) == (self.instance is None):
            raise ValueError("give NNXModel a constructor (rngs -> module) or a module instance")
        module = self.instance if self.instance is not None else nnx.eval_shape(lambda: self.make(nnx.Rngs(0)))
        graphdef, params, rngs, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
        abstract = lambda s: jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), s)
        object.__setattr__(self, "_name", type(module).__name__)
        object.__setattr__(self, "_classes", sorted({type(m) for _, m in nnx.iter_modules(module)},
                                                    key=lambda c: f"{c.__module__}.{c.__qualname__}"))
        object.__setattr__(self, "_graphdef", graphdef)
        object.__setattr__(self, "_params", abstract(params))
        object.__setattr__(self, "_rngs", abstract(rngs))
        object.__setattr__(self, "_rest", abstract(rest))
        if self.instance is not None:
            object.__setattr__(self, "_values", {"params": nnx.to_pure_dict(params), "nnx": nnx.to_pure_dict(rest)})

    @property
    def reseedable(self) -> bool:
        return self.make is not None

    def init(self, key: jax.Array, x: Any) -> dict[str, Any]:
        from flax import nnx

        del x  # NNX modules know their shapes at construction
        if self.make is None:
            return jax.tree_util.tree_map(jnp.asarray, self._values)
        _, params, _, rest = nnx.split(self.make(nnx.Rngs(key)), nnx.Param, nnx.RngState, ...)
        return {"params": nnx.to_pure_dict(params), "nnx": nnx.to_pure_dict(rest)}

    def _rng_state(self, key: jax.Array) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(self._rngs)
        fresh = [jax.random.wrap_key_data(jax.random.fold_in(key, i)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
                 else jnp.zeros(x.shape, x.dtype) for i, x in enumerate(leaves)]
        return jax.tree_util.tree_unflatten(treedef, fresh)

    def apply(self, variables: dict[str, Any], x: Any, train: bool, key: jax.Array | None = None,
              conv: str = conv_lib.XLA, layers: Layers | None = None) -> tuple[Any, dict[str, Any]]:
        """The outputs and the new model state, the convolutions in formulation `conv` (see the
        module docstring; `layers`, when given, records each conv layer's lowering)."""
        from flax import nnx

        def state(abstract, pure):
            s = jax.tree_util.tree_map(lambda a: a, abstract)
            nnx.replace_by_pure_dict(s, pure)
            return s

        key = jax.random.PRNGKey(0) if key is None else key
        module = nnx.merge(self._graphdef, state(self._params, variables["params"]), self._rng_state(key),
                           state(self._rest, variables.get("nnx", {})))
        if conv != conv_lib.XLA or layers is not None:
            for path, layer in nnx.iter_modules(module):
                if getattr(layer, "conv_general_dilated", None) is lax.conv_general_dilated:
                    layer.conv_general_dilated = _convolution(conv, "/".join(map(str, path)), layers)
        if train:
            module.train()
        else:
            module.eval()
        outputs = module(x)
        if not train:
            return outputs, {"nnx": variables.get("nnx", {})}
        _, _, _, rest = nnx.split(module, nnx.Param, nnx.RngState, ...)
        return outputs, {"nnx": nnx.to_pure_dict(rest)}

    @property
    def name(self) -> str:
        return self._name

    def describe(self) -> str:
        return f"{self.name} (nnx, config {digests.text_digest(repr(self._graphdef))})"

    def code_digest(self, x: Any) -> str:
        """A digest of the model's code: its constructor's and every module class's source."""
        del x
        parts = ([digests.source_of(self.make)] if self.make is not None else []) + \
            [digests.source_of(c) for c in self._classes]
        return digests.text_digest("\n".join(parts))


Model = LinenModel | NNXModel


def as_model(model: Any) -> Model:
    """A Linen module, an NNX module (instance), an NNX constructor (rngs -> module), or an adapter
    already, as an adapter."""
    if isinstance(model, (LinenModel, NNXModel)):
        return model
    if isinstance(model, nn.Module):
        return LinenModel(model)
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax always ships nnx at the versions we require
        nnx = None
    if nnx is not None and isinstance(model, nnx.Module):
        return NNXModel(instance=model)
    if callable(model):
        return NNXModel(make=model)
    raise ValueError(f"not a Flax model: {model!r} (give a linen Module, an nnx Module, or rngs -> nnx Module)")


def conv_preferences(model: Model, x: Any) -> dict[str, str | None]:
    """Each lowerable conv module of `model` on `x` -> the formulation it says it was written for
    (`preferred_conv`: lrlab's conv blocks, matmul), or None (nn.Conv, nnx.Conv: as written)."""
    if not isinstance(model, LinenModel):
        return {path: None for path in conv_layers(model, x)}
    return {path: getattr(type(module), "preferred_conv", None) for path, method, module in model.modules_called(x)
            if method == "__call__" and getattr(module, "conv_general_dilated", _ABSENT) is None}


def conv_layers(model: Model, x: Any) -> Layers:
    """Each conv layer of `model` on input `x` (its path) -> whether the matmul formulation lowers it
    (LOWERED) or it runs as written, and why (shapes only, nothing computed)."""
    layers: Layers = {}
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    jax.eval_shape(lambda v: model.apply(v, x, False, None, conv_lib.MATMUL, layers)[0], variables)
    return layers


def forward_flops(model: Model, x: Any) -> float:
    """Floating-point operations of one forward pass on `x`, as XLA counts them (lowered, not run)."""
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    lowered = jax.jit(lambda v, x: model.apply(v, x, False, None, conv_lib.XLA, None)[0]).lower(variables, x)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def count_parameters(model: Model, x: Any) -> int:
    """Weights of one member (shapes only, nothing computed)."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return sum(int(v.size) for v in jax.tree_util.tree_leaves(shapes["params"]))
