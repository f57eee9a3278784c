"""What each training technique costs per step: 16-bit compute, batch norm, augmentation, early stopping.

  python benchmarks/techniques.py [--model=small_cnn] [--members=48] [--steps=50] [--repeats=3]

Compiles one population segment per variant (the same K Adam members, --steps steps and one
evaluation), then times them interleaved (variant A, B, ..., A, B, ...) so machine drift hits all
alike, and reports the median model-steps/s, the ratio to float32, and XLA's memory estimate of
the program. Prints a table and writes benchmarks/results/techniques-<backend>.json.
"""

from __future__ import annotations

import dataclasses
import statistics

import jax
from _common import (
    benchmark_data,
    engine_config,
    memory_bytes,
    prepare_adam_segment,
    write_results,
)
from absl import app, flags

from lrlab.engine import config, population
from lrlab.task import mnist, models

flags.DEFINE_string("model", "small_cnn", "Model name.")
flags.DEFINE_integer("members", 48, "Population size K.")
flags.DEFINE_integer("steps", 50, "Steps per timed segment.")
flags.DEFINE_integer("repeats", 3, "Timed rounds (median reported).")
flags.DEFINE_list("variants", ["float32", "bfloat16", "float16", "batch_norm", "augment", "early_stopping"],
                  "Variants to time (float32 is the baseline).")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/techniques-<backend>.json).")
FLAGS = flags.FLAGS


def variant_config(name: str, base: config.EngineConfig) -> config.EngineConfig:
    """The engine configuration of one variant."""
    if name in config.COMPUTE_DTYPES:
        return dataclasses.replace(base, dtype=name)
    if name == "batch_norm":
        return engine_config(models.make_model(FLAGS.model, batch_norm=True))
    if name == "augment":
        return dataclasses.replace(base, augment=True)
    if name == "early_stopping":
        return dataclasses.replace(base, patience=5)
    raise ValueError(f"unknown variant {name!r}")


def main(argv):
    del argv
    data = benchmark_data(250)
    ds = mnist.load_mnist()
    val, val_weight = population.pad_to_chunks({"image": ds.train_images[-2000:], "label": ds.train_labels[-2000:]}, 250)
    base = engine_config(models.make_model(FLAGS.model))
    k, steps = FLAGS.members, FLAGS.steps
    timers, rows = {}, []
    for name in FLAGS.variants:
        cfg = variant_config(name, base)
        variant_data = data._replace(val=val, val_weight=val_weight) if cfg.patience else data
        compile_s, run_once, compiled = prepare_adam_segment(cfg, k, variant_data, steps)
        timers[name] = run_once
        rows.append({"variant": name, "compile_seconds": compile_s, "memory_bytes": memory_bytes(compiled)})
    times = {name: [] for name in timers}
    for _ in range(FLAGS.repeats):
        for name, run_once in timers.items():
            times[name].append(run_once())
    for row in rows:
        seconds = statistics.median(times[row["variant"]])
        row["model_steps_per_second"] = k * steps / seconds
        row["seconds_per_segment"] = seconds
    baseline = next((r for r in rows if r["variant"] == "float32"), rows[0])
    for row in rows:
        row["speed_vs_float32"] = row["model_steps_per_second"] / baseline["model_steps_per_second"]
        mem = row["memory_bytes"]
        row["memory_vs_float32"] = mem / baseline["memory_bytes"] if mem and baseline["memory_bytes"] else None
    print(f"{FLAGS.model}, Adam, K={k}, batch 100, {steps}-step segment + one evaluation of 250 images, "
          f"{FLAGS.repeats} interleaved rounds; {jax.default_backend()} ({jax.devices()[0].device_kind})")
    print(f"{'variant':<15} {'model-steps/s':>14} {'vs float32':>11} {'XLA memory':>12} {'vs float32':>11} {'compile s':>10}")
    for r in rows:
        mem = f"{r['memory_bytes'] / 2**20:.1f} MiB" if r["memory_bytes"] else "-"
        mem_ratio = f"{r['memory_vs_float32']:.2f}x" if r["memory_vs_float32"] else "-"
        print(f"{r['variant']:<15} {r['model_steps_per_second']:>14.1f} {r['speed_vs_float32']:>10.2f}x "
              f"{mem:>12} {mem_ratio:>11} {r['compile_seconds']:>10.1f}")
    path = write_results("techniques", {"model": FLAGS.model, "members": k, "steps": steps,
                                        "repeats": FLAGS.repeats, "rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
