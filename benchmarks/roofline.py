"""How close the population gets to the device's dense-matmul rate.

  python benchmarks/roofline.py [--models=small_cnn,tutorial_cnn] [--members=1,8,48,288]

FLOPs per model-step come from XLA's cost analysis of one compiled single-member training step
(batch 100, Adam). The population's FLOP/s is that times K times the steps of a timed segment over
its seconds (the segment's one 250-image evaluation, under 1% of its FLOPs, is not counted). The
ceiling is a square float32 matmul (--matmul_size) timed in the same process. Prints a table and
writes benchmarks/results/roofline-<backend>.json.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
from _common import (
    benchmark_data,
    engine_config,
    step_flops,
    time_adam_segment,
    write_results,
)
from absl import app, flags

from lrlab.task import models

flags.DEFINE_list("models", ["small_cnn", "tutorial_cnn"], "Models to measure.")
flags.DEFINE_list("members", ["1", "8", "48", "288"], "Population sizes K.")
flags.DEFINE_integer("steps", 20, "Steps per timed segment.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median).")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square matmul that measures the ceiling.")
flags.DEFINE_float("skip_over_seconds", 300.0, "Skip a population whose estimated time exceeds this.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/roofline-<backend>.json).")
FLAGS = flags.FLAGS


def matmul_flops_per_s(n: int, repeats: int = 5) -> float:
    """Dense float32 n x n matmul rate on the default device, median of `repeats`."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main(argv):
    del argv
    data = benchmark_data()
    ceiling = matmul_flops_per_s(FLAGS.matmul_size)
    print(f"dense f32 matmul {FLAGS.matmul_size}^2: {ceiling / 1e9:.1f} GFLOP/s on {jax.devices()[0].device_kind}")
    print(f"{'model':<13} {'K':>4} {'MFLOP/step':>11} {'GFLOP/s':>9} {'of matmul':>10}")
    rows = []
    for name in FLAGS.models:
        model = models.make_model(name)
        flops = step_flops(model, data)
        cfg = engine_config(model)
        seconds_per_member_step = None
        for k in (int(v) for v in FLAGS.members):
            row = {"model": name, "members": k, "flops_per_model_step": flops}
            estimate = k * FLAGS.steps * (FLAGS.repeats + 1) * (seconds_per_member_step or 0.0)
            if estimate > FLAGS.skip_over_seconds:
                rows.append({**row, "skipped": "estimated time > --skip_over_seconds"})
                print(f"{name:<13} {k:>4} {flops / 1e6:>11.1f}  skipped (estimated time > --skip_over_seconds)")
                continue
            _, seconds, _ = time_adam_segment(cfg, k, data, FLAGS.steps, FLAGS.repeats)
            seconds_per_member_step = seconds / (k * FLAGS.steps)
            rate = flops / seconds_per_member_step
            rows.append({**row, "flops_per_s": rate, "fraction_of_matmul": rate / ceiling})
            print(f"{name:<13} {k:>4} {flops / 1e6:>11.1f} {rate / 1e9:>9.2f} {rate / ceiling:>9.1%}", flush=True)
    path = write_results("roofline", {"matmul_size": FLAGS.matmul_size, "matmul_flops_per_s": ceiling,
                                      "steps": FLAGS.steps, "rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
