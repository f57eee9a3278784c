"""K members trained as one population against K runs one after another, side by side in one process.

  python benchmarks/population_vs_sequential.py --models=small_cnn --members=1,8,48 --steps=50

(a) sequential: what a user's Python loop does: for each member, a jit-compiled single-member
    train step called once per step (compiled once, reused for every member since the learning rate
    is an argument). Timed over --seq_members members and scaled to K (each run costs the same).
(b) population: lrlab's segment program (lax.scan over --steps steps of the member-mapped step, then
    one evaluation of 250 images, which (a) does not do).
Reports model-steps per second, the ratio (b)/(a), compile seconds, and XLA's memory estimate per
member. Prints a table and writes benchmarks/results/population_vs_sequential-<backend>.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import time_adam_segment
from absl import app, flags

from lrlab import data as data_lib
from lrlab import models, optimizers
from lrlab import population as pop_lib

flags.DEFINE_list("models", ["small_cnn", "tutorial_cnn"], "Models to measure.")
flags.DEFINE_list("members", ["1", "8", "48", "288"], "Population sizes K.")
flags.DEFINE_integer("steps", 50, "Steps per timed segment / per sequential run.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions of the population segment (median).")
flags.DEFINE_integer("seq_members", 3, "Sequential runs actually timed per K (the rest extrapolated).")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/population_vs_sequential-<backend>.json).")
FLAGS = flags.FLAGS


def memory_bytes(compiled) -> int | None:
    """XLA's estimate of the program's argument + temporary + output bytes, when it provides one."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # not every backend reports it
        return None


def sequential_run(model, data: pop_lib.TrainData, lr: float, steps: int, step_fn) -> float:
    """One user-style run: init, then a Python loop of jitted steps; returns its seconds."""
    tx = optimizers.make_optimizer("adam")
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + data.train_images.shape[1:]))["params"]
    opt_state = tx.init(params)
    opt_state.hyperparams["learning_rate"] = jnp.float32(lr)
    start = time.perf_counter()
    for step in range(steps):
        params, opt_state, loss = step_fn(params, opt_state, data.train_images, data.train_labels, step)
    jax.block_until_ready(params)
    return time.perf_counter() - start


def make_user_step(model):
    """A single-member train step as a user would write it (jit, no vmap, no scan)."""
    tx = optimizers.make_optimizer("adam")

    @jax.jit
    def step(params, opt_state, images, labels, step):
        idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(1), step), (100,), 0, labels.shape[0])

        def loss_fn(p):
            logits = model.apply({"params": p}, data_lib.to_float(images[idx]), train=True,
                                 rngs={"dropout": jax.random.fold_in(jax.random.PRNGKey(2), step)})
            return pop_lib.cross_entropy(logits, labels[idx])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def measure(model_name: str, k: int, data: pop_lib.TrainData, steps: int) -> dict:
    model = models.make_model(model_name)
    # (a) sequential
    user_step = make_user_step(model)
    start = time.perf_counter()
    sequential_run(model, data, 1e-3, 1, user_step)  # compiles
    seq_compile = time.perf_counter() - start
    timed = min(k, FLAGS.seq_members)
    per_run = statistics.median(sequential_run(model, data, lr, steps, user_step)
                                for lr in np.geomspace(1e-4, 1e-1, timed))
    seq_steps_per_s = steps / per_run
    # (b) population
    cfg = pop_lib.EngineConfig(model=model, optimizer="adam", eval_chunk=250)
    pop_compile, pop_seconds, compiled = time_adam_segment(cfg, k, data, steps, FLAGS.repeats)
    pop_steps_per_s = k * steps / pop_seconds
    mem = memory_bytes(compiled)
    return {"model": model_name, "members": k, "steps": steps,
            "sequential_model_steps_per_s": seq_steps_per_s, "population_model_steps_per_s": pop_steps_per_s,
            "ratio": pop_steps_per_s / seq_steps_per_s, "sequential_compile_s": seq_compile,
            "population_compile_s": pop_compile, "sequential_runs_timed": timed,
            "population_bytes_per_member": None if mem is None else mem / k}


def main(argv):
    del argv
    ds = data_lib.load_mnist()
    data = pop_lib.make_train_data(ds.train_images, ds.train_labels, np.arange(250, dtype=np.int32), 250)
    rows = []
    print(f"{'model':<13} {'K':>4} {'seq steps/s':>12} {'pop steps/s':>12} {'ratio':>7} "
          f"{'compile seq/pop s':>18} {'MB/member':>10}")
    for name in FLAGS.models:
        for k in (int(v) for v in FLAGS.members):
            r = measure(name, k, data, FLAGS.steps)
            rows.append(r)
            mb = "-" if r["population_bytes_per_member"] is None else f"{r['population_bytes_per_member'] / 2**20:.1f}"
            print(f"{name:<13} {k:>4} {r['sequential_model_steps_per_s']:>12.1f} "
                  f"{r['population_model_steps_per_s']:>12.1f} {r['ratio']:>6.2f}x "
                  f"{r['sequential_compile_s']:>8.1f} / {r['population_compile_s']:<7.1f} {mb:>10}", flush=True)
    meta = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "steps": FLAGS.steps, "repeats": FLAGS.repeats}
    out = pathlib.Path(FLAGS.out or f"benchmarks/results/population_vs_sequential-{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
