"""Does sharding the population over the host's cores pay on CPU? (`--cpu_devices=auto`'s evidence.)

  python benchmarks/cpu_devices.py [--models=small_cnn] [--members=48] [--devices=1,2] [--rounds=3]

Each round runs, for each device count, a fresh process that splits the CPU into that many JAX
devices (`jax_num_cpu_devices`: fixed before JAX starts, hence one process each), shards a
population of K Adam members over them and times its training segment (median of --repeats). The
device counts alternate within each round, so they see the same drift of a shared machine.
Reports milliseconds per population step and the speed-up over one device (median over rounds);
writes benchmarks/results/cpu_devices-cpu.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_list("models", ["small_cnn"], "Models to time.")
flags.DEFINE_integer("members", 48, "Population size K.")
flags.DEFINE_list("devices", None, "CPU device counts to compare (default: 1 and the cores this process may use).")
flags.DEFINE_integer("steps", 10, "Steps per timed segment.")
flags.DEFINE_integer("repeats", 3, "Timed segments per process (median).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds.")
flags.DEFINE_integer("child", 0, "Internal: time one configuration on this many devices and print JSON.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/cpu_devices-cpu.json).")
FLAGS = flags.FLAGS


def child(devices: int) -> None:
    """One process: `devices` CPU devices, each model's segment timed; prints {model: seconds}."""
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import numpy as np
    from _common import benchmark_data, engine_config

    from lrlab.engine import placement, population
    from lrlab.optim import members
    from lrlab.task import models

    data = benchmark_data()
    mesh = placement.make_mesh()
    out = {}
    for name in FLAGS.models:
        cfg = engine_config(models.make_model(name))
        hparams = members.population_hparams("adam", np.geomspace(1e-4, 1e-1, FLAGS.members))
        pop = placement.place(population.init_population(cfg, hparams, 0), placement.member_sharding(mesh))
        # an unreachable target: every member trains through every timed segment (one evaluation each)
        args = (placement.place(data, placement.replicated(mesh)), jnp.int32(0), jax.random.PRNGKey(1),
                jnp.float32(2.0), jnp.int32(10**9), jnp.bool_(True))
        program = placement.make_segment_fn(cfg, FLAGS.steps, mesh).lower(pop, *args).compile()
        seconds = []
        for _ in range(FLAGS.repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            pop, metrics = program(pop, *args)
            jax.block_until_ready((pop, metrics))
            seconds.append(time.perf_counter() - start)
        out[name] = statistics.median(seconds[1:])
    print(json.dumps({"devices": jax.device_count(), "seconds": out}))


def main(argv):
    del argv
    if FLAGS.child:
        return child(FLAGS.child)
    from _common import write_results

    counts = [int(d) for d in FLAGS.devices] if FLAGS.devices else [1, len(os.sched_getaffinity(0))]
    measured: dict[int, dict[str, list[float]]] = {n: {m: [] for m in FLAGS.models} for n in counts}
    passthrough = [f"--models={','.join(FLAGS.models)}", f"--members={FLAGS.members}", f"--steps={FLAGS.steps}",
                   f"--repeats={FLAGS.repeats}"]
    for r in range(FLAGS.rounds):
        for n in counts:
            proc = subprocess.run([sys.executable, __file__, f"--child={n}", *passthrough], capture_output=True,
                                  text=True, check=True, cwd=os.path.dirname(os.path.abspath(__file__)))
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            for m, s in got["seconds"].items():
                measured[n][m].append(s)
            print(f"round {r + 1}: {n} device(s): " + ", ".join(f"{m} {1e3 * s / FLAGS.steps:.1f} ms/step"
                                                            for m, s in got["seconds"].items()), flush=True)
    rows = []
    print(f"\nK={FLAGS.members} Adam members, {FLAGS.steps}-step segments, median of {FLAGS.rounds} rounds "
          f"x {FLAGS.repeats} segments; {os.cpu_count()} cores")
    print(f"{'model':<13} {'devices':>7} {'ms/step':>8} {'vs 1 device':>11} {'rounds (x)':>24}")
    for m in FLAGS.models:
        base = measured[counts[0]][m]
        for n in counts:
            ratios = [b / s for b, s in zip(base, measured[n][m])]
            row = {"model": m, "devices": n, "ms_per_step": 1e3 * statistics.median(measured[n][m]) / FLAGS.steps,
                   "speedup": statistics.median(ratios), "speedup_per_round": ratios}
            rows.append(row)
            print(f"{m:<13} {n:>7} {row['ms_per_step']:>8.1f} {row['speedup']:>10.2f}x "
                  f"{' '.join(f'{x:.2f}' for x in ratios):>24}")
    path = write_results("cpu_devices", {"members": FLAGS.members, "steps": FLAGS.steps, "rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
