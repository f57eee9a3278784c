"""Where a population's training segment spends its time, per XLA operation (jax.profiler).

  python benchmarks/profile_segment.py [--model=small_cnn] [--members=48] [--steps=20] [--top=20]

Compiles one segment, runs it once to warm up, then once under `jax.profiler.trace`, and sums the
trace's events per compiled HLO instruction. Each instruction is shown with the JAX operation it
came from (its HLO metadata) and its shape, so "vmap(transpose(jvp(CNN)))/Conv_1/dot_general" reads
as: the second conv layer's matmul in the backward pass. Prints a table and writes
benchmarks/results/profile_segment-<model>-<backend>.json.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax
from _common import benchmark_data, engine_config, prepare_adam_segment, write_results
from absl import app, flags

from lrlab.task import models

flags.DEFINE_string("model", "small_cnn", "Model name.")
flags.DEFINE_integer("members", 48, "Population size K.")
flags.DEFINE_integer("steps", 20, "Steps in the profiled segment.")
flags.DEFINE_integer("top", 20, "Operations to print.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/profile_segment-<model>-<backend>.json).")
FLAGS = flags.FLAGS

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (\S+) .*?(?:op_name=\"([^\"]*)\")?")


def hlo_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (result shape, originating JAX op name) from compiled HLO text."""
    out = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(2), op.group(1).split("closed_call/")[-1] if op else "")
    return out


def main(argv):
    del argv
    data = benchmark_data()
    cfg = engine_config(models.make_model(FLAGS.model))
    _, run_segment, compiled = prepare_adam_segment(cfg, FLAGS.members, data, FLAGS.steps)
    instructions = hlo_instructions(compiled.as_text())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            segment_seconds = run_segment()
        trace = json.load(gzip.open(next(pathlib.Path(tmp).rglob("*.trace.json.gz"))))
    total_us, calls = collections.Counter(), collections.Counter()
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and event["name"] in instructions:
            total_us[event["name"]] += event["dur"]
            calls[event["name"]] += 1
    per_step_ms = lambda us: us / 1e3 / FLAGS.steps
    print(f"{FLAGS.model}, K={FLAGS.members}, {FLAGS.steps}-step segment: {segment_seconds * 1e3 / FLAGS.steps:.1f} ms "
          f"per step; instructions sum to {per_step_ms(sum(total_us.values())):.1f} ms per step")
    print(f"{'ms/step':>8} {'share':>6}  {'instruction':<28} {'shape':<26} from")
    rows = []
    for name, us in total_us.most_common():
        shape, op = instructions[name]
        rows.append({"instruction": name, "ms_per_step": per_step_ms(us), "calls": calls[name],
                     "shape": shape, "op": op})
    for r in rows[: FLAGS.top]:
        print(f"{r['ms_per_step']:>8.2f} {r['ms_per_step'] / (segment_seconds * 1e3 / FLAGS.steps):>6.1%}  "
              f"{r['instruction']:<28} {r['shape'][:26]:<26} {r['op'][:70]}")
    path = write_results(f"profile_segment-{FLAGS.model}", {
        "model": FLAGS.model, "members": FLAGS.members, "steps": FLAGS.steps,
        "segment_ms_per_step": segment_seconds * 1e3 / FLAGS.steps, "instructions": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
