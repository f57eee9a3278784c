"""How members are batched inside the program: whole-population vmap vs chunks looped by lax.map.

  python benchmarks/member_chunking.py [--model=small_cnn] [--members=48] [--steps=50] [--repeats=3]

Times the training segment (lax.scan over --steps steps, then one evaluation) of one
population for each --member_chunk, and one single-member population, side by side in one process.
Prints a table and writes benchmarks/results/member_chunking-<backend>.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform

import jax
from _common import benchmark_data, engine_config, time_adam_segment
from absl import app, flags

from lrlab.task import models

flags.DEFINE_string("model", "small_cnn", "Model name.")
flags.DEFINE_integer("members", 48, "Population size K.")
flags.DEFINE_integer("steps", 50, "Steps per timed segment.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions (median reported).")
flags.DEFINE_list("chunks", ["1", "2", "4", "8", "0"], "member_chunk values (0: whole population).")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/member_chunking-<backend>.json).")
FLAGS = flags.FLAGS


def time_segment(model, k: int, chunk: int, data, steps: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, median seconds per segment) for a K-member Adam population."""
    cfg = engine_config(model, member_chunk=chunk or k)
    compile_s, seconds, _ = time_adam_segment(cfg, k, data, steps, repeats)
    return compile_s, seconds


def main(argv):
    del argv
    data = benchmark_data()
    model = models.make_model(FLAGS.model)
    k, steps = FLAGS.members, FLAGS.steps
    rows = []
    _, single = time_segment(model, 1, 1, data, steps, FLAGS.repeats)
    base = single / steps * 1000  # ms per member-step, one member alone
    rows.append({"members": 1, "member_chunk": 1, "ms_per_member_step": base, "vs_single": 1.0})
    for chunk in (int(c) for c in FLAGS.chunks):
        compile_s, seconds = time_segment(model, k, chunk, data, steps, FLAGS.repeats)
        per = seconds / steps / k * 1000
        rows.append({"members": k, "member_chunk": chunk or k, "ms_per_member_step": per,
                     "vs_single": base / per, "compile_seconds": compile_s})
    print(f"{FLAGS.model}, Adam, batch 100, {steps}-step segment incl. one evaluation of 250 images; "
          f"{jax.default_backend()} ({platform.processor() or platform.machine()}, {jax.device_count()} device)")
    print(f"{'K':>4} {'chunk':>6} {'ms/member-step':>15} {'speed vs K=1':>13}")
    for r in rows:
        print(f"{r['members']:>4} {r['member_chunk']:>6} {r['ms_per_member_step']:>15.2f} {r['vs_single']:>12.2f}x")
    out = pathlib.Path(FLAGS.out or f"benchmarks/results/member_chunking-{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": FLAGS.model, "steps": steps, "backend": jax.default_backend(),
                               "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count(),
                               "jax": jax.__version__, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
