"""Shared by the benchmarks: benchmark data, machine description, JSON output, timed programs."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lrlab.engine import config, lowering, placement, population
from lrlab.optim import members, optimizers
from lrlab.task import augment, classification, mnist, task

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def mnist_task(model) -> task.Task:
    """`model` classifying the shipped MNIST (the benchmarks' task)."""
    return classification.image_classification(model, mnist.load_mnist())


def engine_config(model, **kw: Any) -> config.EngineConfig:
    """Adam on `mnist_task(model)`, evaluating in chunks of 250, in the prior's loop order (the
    benchmarks' program: what a run too small to measure its lowering trains with)."""
    kw.setdefault("loop_order", lowering.PRIOR_LOOP_ORDER)
    return config.EngineConfig(task=mnist_task(model), optimizer=optimizers.get("adam"), eval_chunk=250, **kw)


def benchmark_data(eval_examples: int = 250) -> population.TrainData:
    """MNIST on the device, with a fixed evaluation subset of `eval_examples` training images."""
    ds = mnist.load_mnist()
    train = {"image": ds.train_images, "label": ds.train_labels}
    return population.make_train_data(train, task.take(train, np.arange(eval_examples)), min(250, eval_examples))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind,
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__}


def write_results(name: str, payload: dict[str, Any], out: str | None) -> pathlib.Path:
    """Writes benchmarks/results/<name>-<backend>.json (or `out`) with the machine description."""
    path = pathlib.Path(out or RESULTS / f"{name}-{jax.default_backend()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**machine(), **payload}, indent=1))
    return path


def prepare_adam_segment(cfg: config.EngineConfig, k: int, data: population.TrainData,
                         steps: int) -> tuple[float, Callable[[], float], Any]:
    """(compile seconds, run-once timer, compiled program) for a segment of K Adam members.

    The target (2.0) is out of reach, so every member trains through every timed segment, which
    ends with an evaluation. The timer runs one segment (state carried from call to call) and
    returns its seconds.
    """
    hparams = members.population_hparams("adam", np.geomspace(1e-4, 1e-1, k))
    state = [population.init_population(cfg, hparams, 0)]
    args = (jnp.int32(0), jax.random.PRNGKey(1), jnp.float32(2.0), jnp.int32(10**9), jnp.bool_(True))
    start = time.perf_counter()
    compiled = placement.make_segment_fn(cfg, steps).lower(state[0], data, *args).compile()
    compile_s = time.perf_counter() - start

    def run_once() -> float:
        start = time.perf_counter()
        pop, acc = compiled(state[0], data, *args)
        jax.block_until_ready((pop, acc))
        state[0] = pop
        return time.perf_counter() - start

    run_once()  # warm-up
    return compile_s, run_once, compiled


def time_adam_segment(cfg: config.EngineConfig, k: int, data: population.TrainData, steps: int,
                      repeats: int) -> tuple[float, float, Any]:
    """(compile seconds, median seconds per segment, compiled program) for K Adam members."""
    compile_s, run_once, compiled = prepare_adam_segment(cfg, k, data, steps)
    return compile_s, statistics.median(run_once() for _ in range(repeats)), compiled


def make_user_step(model, batch_size: int = 100) -> Callable:
    """A single-member Adam train step as a user would write it: jit, no vmap, no scan."""
    tx = optimizers.get("adam").make_tx()

    @jax.jit
    def step(params, opt_state, images, labels, step):
        idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(1), step), (batch_size,), 0,
                                 labels.shape[0])

        def loss_fn(p):
            logits = model.apply({"params": p}, augment.to_float(images[idx]), train=True,
                                 rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(2), step)})
            return classification.cross_entropy(logits, labels[idx]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def user_run(model, data: population.TrainData, lr: float, steps: int, step_fn: Callable) -> float:
    """One user-style run: init, then a Python loop of jitted steps; returns its seconds."""
    tx = optimizers.get("adam").make_tx()
    images, labels = data.train["image"], data.train["label"]
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + images.shape[1:]))["params"]
    opt_state = tx.init(params)
    opt_state.hyperparams["learning_rate"] = jnp.float32(lr)
    start = time.perf_counter()
    for step in range(steps):
        params, opt_state, loss = step_fn(params, opt_state, images, labels, step)
    jax.block_until_ready(params)
    return time.perf_counter() - start


def step_flops(model, data: population.TrainData, batch_size: int = 100) -> float:
    """FLOPs of one single-member training step, from XLA's cost analysis of the compiled step."""
    step = make_user_step(model, batch_size)
    tx = optimizers.get("adam").make_tx()
    images, labels = data.train["image"], data.train["label"]
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + images.shape[1:]))["params"]
    compiled = step.lower(params, tx.init(params), images, labels, 0).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"])


def memory_bytes(compiled) -> int | None:
    """XLA's estimate of a program's argument + temporary + output bytes, when it provides one."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None
