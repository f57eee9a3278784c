"""K members trained as one population against K runs one after another, side by side in one process.

  python benchmarks/population_vs_sequential.py [--models=small_cnn,tutorial_cnn] [--members=1,8,48,288]

(a) sequential: what a user's Python loop does: for each member, a jit-compiled single-member
    train step called once per step (compiled once, reused for every member since the learning rate
    is an argument). Timed with both convolution lowerings (im2col matmul and XLA's convolution);
    the faster is the baseline. Timed over --repeats members and scaled to K (each run costs
    the same). User runs and population segments alternate, --repeats times; medians.
(b) population: lrlab's segment program (lax.scan over --steps steps of the member-mapped step, then
    one evaluation of 250 images, which (a) does not do).
Reports model-steps per second, the ratio (b)/(a), compile seconds, XLA's memory estimate per
member, and the share of a default run's time (an evaluation of 2000 images every 50 steps) spent
evaluating. Prints a table and writes benchmarks/results/population_vs_sequential-<backend>.json.
"""

from __future__ import annotations

import statistics
import time

import jax
import numpy as np
from _common import (benchmark_data, engine_config, make_user_step, memory_bytes, prepare_adam_segment, user_run,
                     write_results)
from absl import app, flags

from lrlab import models, optimizers
from lrlab import population as pop_lib

flags.DEFINE_list("models", ["small_cnn", "tutorial_cnn"], "Models to measure.")
flags.DEFINE_list("members", ["1", "8", "48", "288"], "Population sizes K.")
flags.DEFINE_integer("steps", 50, "Steps per timed segment / per sequential run.")
flags.DEFINE_integer("repeats", 3, "Interleaved repetitions: one user run per lowering, then one population segment.")
flags.DEFINE_float("skip_over_seconds", 300.0, "Skip a population whose estimated time exceeds this.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/population_vs_sequential-<backend>.json).")
FLAGS = flags.FLAGS

LOWERINGS = ("matmul", "xla")


def user_loops(model_name: str, data: pop_lib.TrainData) -> dict[str, tuple]:
    """Per lowering: (model, compiled user step, compile seconds)."""
    out = {}
    for impl in LOWERINGS:
        model = models.make_model(model_name, conv_impl=impl)
        user_step = make_user_step(model)
        start = time.perf_counter()
        user_run(model, data, 1e-3, 1, user_step)  # compiles
        out[impl] = (model, user_step, time.perf_counter() - start)
    return out


def eval_seconds(cfg: pop_lib.EngineConfig, k: int, data: pop_lib.TrainData) -> float:
    """Seconds to evaluate K members on 2000 images (the default --eval_examples), compiled, median of 3."""
    hparams = optimizers.population_hparams("adam", np.geomspace(1e-4, 1e-1, k))
    pop = pop_lib.init_population(cfg, hparams, 0)
    arrays, weight = pop_lib.pad_to_chunks({name: np.asarray(v[:2000]) for name, v in data.train.items()},
                                           cfg.eval_chunk)
    evaluate = jax.jit(pop_lib.make_metrics_fn(cfg))
    jax.block_until_ready(evaluate(pop.variables, arrays, weight))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(evaluate(pop.variables, arrays, weight))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model_name: str, k: int, loops: dict, data: pop_lib.TrainData, steps: int,
            seq_steps_per_s: dict[str, float]) -> dict:
    """One row: the population's segments interleaved with user-loop runs, medians of each.

    Interleaving keeps the ratio honest on a machine whose speed drifts (shared VMs drift 2x).
    """
    lrs = np.geomspace(1e-4, 1e-1, FLAGS.repeats)
    row = {"model": model_name, "members": k, "steps": steps}
    best_known = max(seq_steps_per_s.values(), default=None)
    if best_known and k * steps * (FLAGS.repeats + 1) / best_known > FLAGS.skip_over_seconds:
        return {**row, "skipped": "estimated time > --skip_over_seconds"}
    cfg = engine_config(models.make_model(model_name))
    pop_compile, run_segment, compiled = prepare_adam_segment(cfg, k, data, steps)
    seq_times = {impl: [] for impl in LOWERINGS}
    pop_times = []
    for lr in lrs:
        for impl, (model, user_step, _) in loops.items():
            seq_times[impl].append(user_run(model, data, lr, steps, user_step))
        pop_times.append(run_segment())
    for impl in LOWERINGS:
        seq_steps_per_s[impl] = steps / statistics.median(seq_times[impl])
    best = max(LOWERINGS, key=lambda impl: seq_steps_per_s[impl])
    pop_steps_per_s = k * steps / statistics.median(pop_times)
    mem = memory_bytes(compiled)
    eval_s = eval_seconds(cfg, k, data)
    train_s_per_50 = 50 * k / pop_steps_per_s
    return {**row, "sequential_lowering": best, "sequential_model_steps_per_s": seq_steps_per_s[best],
            **{f"sequential_{impl}_model_steps_per_s": seq_steps_per_s[impl] for impl in LOWERINGS},
            "sequential_compile_s": loops[best][2], "population_model_steps_per_s": pop_steps_per_s,
            "ratio": pop_steps_per_s / seq_steps_per_s[best], "population_compile_s": pop_compile,
            "population_bytes_per_member": None if mem is None else mem / k,
            "eval_2000_seconds": eval_s, "eval_share": eval_s / (eval_s + train_s_per_50)}


def main(argv):
    del argv
    data = benchmark_data()
    rows = []
    print(f"{'model':<13} {'K':>4} {'seq steps/s':>16} {'pop steps/s':>12} {'ratio':>7} "
          f"{'compile seq/pop s':>18} {'MB/member':>10} {'eval share':>10}")
    for name in FLAGS.models:
        loops, seq_steps_per_s = user_loops(name, data), {}
        for k in (int(v) for v in FLAGS.members):
            r = measure(name, k, loops, data, FLAGS.steps, seq_steps_per_s)
            rows.append(r)
            if "skipped" in r:
                print(f"{name:<13} {k:>4}  skipped: {r['skipped']}", flush=True)
                continue
            seq_txt = f"{r['sequential_model_steps_per_s']:.1f} ({r['sequential_lowering']})"
            mb = "-" if r["population_bytes_per_member"] is None else f"{r['population_bytes_per_member'] / 2**20:.1f}"
            print(f"{name:<13} {k:>4} {seq_txt:>16} {r['population_model_steps_per_s']:>12.1f} "
                  f"{r['ratio']:>6.2f}x {r['sequential_compile_s']:>8.1f} / {r['population_compile_s']:<7.1f} "
                  f"{mb:>10} {r['eval_share']:>9.1%}", flush=True)
    path = write_results("population_vs_sequential", {"steps": FLAGS.steps, "repeats": FLAGS.repeats,
                                                      "rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
