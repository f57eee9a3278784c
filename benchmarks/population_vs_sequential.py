"""K members trained as one population against K runs one after another, side by side in one process.

  python benchmarks/population_vs_sequential.py [--models=small_cnn,tutorial_cnn] [--members=1,8,48,288]
      [--valley_rates=16 --valley_max_steps=1000]

Per step:

(a) sequential: what a user's Python loop does: for each member, a jit-compiled single-member
    train step called once per step (compiled once, reused for every member since the learning rate
    is an argument). Timed with lrlab's model in both convolution lowerings (im2col matmul and XLA's
    convolution) and with the user's own `nn.Conv` / `nn.max_pool` model (benchmarks/user_loop.py);
    the fastest is the baseline. Timed over --repeats members and scaled to K (each run costs
    the same). User runs and population segments alternate, --repeats times; medians.
(b) population: lrlab's segment program (lax.scan over --steps steps of the member-mapped step, then
    one evaluation of 250 images, which (a) does not do).
Reports model-steps per second, the ratio (b)/(a), compile seconds, XLA's memory estimate per
member, and the share of a default run's time (an evaluation of 2000 images every 50 steps) spent
evaluating.

End to end, a whole valley (--valley_rates of the study's 48 Adam rates, --valley_max_steps, 97% on
the 2000-image training subset every 50 steps, each run stopped at the target), wall time to the
table, compilation included, in one process, the modes interleaved --valley_repeats times:
  user        benchmarks/user_loop.py: plain Flax + Optax, a jitted step in a Python loop, rate
              after rate (the same initial weights, batches and dropout masks as lrlab's runs)
  population  lrlab.lr_valley, one population
  sequential  lrlab.lr_valley with sequential=True (lrlab's own one-member program, rate after rate)
It checks that the tables agree: the same rates reach the target, within one evaluation period.
(The task has no test set here: none of the three evaluates one.)

Prints tables and writes benchmarks/results/population_vs_sequential-<backend>.json.
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import user_loop
from _common import (
    benchmark_data,
    engine_config,
    make_user_step,
    memory_bytes,
    prepare_adam_segment,
    user_run,
    write_results,
)
from absl import app, flags

import lrlab
from lrlab.engine import config, population, segment
from lrlab.optim import members
from lrlab.task import classification, dataset, mnist, models, sampling

flags.DEFINE_list("models", ["small_cnn", "tutorial_cnn"], "Models to measure.")
flags.DEFINE_list("members", ["1", "8", "48", "288"], "Population sizes K.")
flags.DEFINE_integer("steps", 50, "Steps per timed segment / per sequential run.")
flags.DEFINE_integer("repeats", 3, "Interleaved repetitions: one user run per lowering, then one population segment.")
flags.DEFINE_float("skip_over_seconds", 300.0, "Skip a population whose estimated time exceeds this.")
flags.DEFINE_integer("valley_rates", 16, "End-to-end valley: this many of the study's 48 rates, evenly "
                     "spaced (every 48/N-th, ending at 100); 0 skips it.")
flags.DEFINE_integer("valley_max_steps", 1000, "End-to-end valley: step budget per rate (the CPU study: 3000).")
flags.DEFINE_integer("valley_repeats", 1, "End-to-end valley: rounds of the three modes, order rotated (medians).")
flags.DEFINE_list("valley_modes", ["user", "population", "sequential"], "End-to-end valley: modes to run.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/population_vs_sequential-<backend>.json).")
FLAGS = flags.FLAGS

LOWERINGS = ("matmul", "xla", "flax")  # lrlab's model in its two conv lowerings; the user's nn.Conv model
STUDY_FLAGS = pathlib.Path(__file__).resolve().parent.parent / "experiments" / "mack2018" / "lr_valley.flags"
EVAL_EVERY = 50


def user_loops(model_name: str, data: population.TrainData) -> dict[str, tuple]:
    """Per lowering: (model, compiled user step, compile seconds)."""
    out = {}
    for impl in LOWERINGS:
        model = user_loop.MODELS[model_name]() if impl == "flax" else models.make_model(model_name, conv_impl=impl)
        user_step = make_user_step(model)
        start = time.perf_counter()
        user_run(model, data, 1e-3, 1, user_step)  # compiles
        out[impl] = (model, user_step, time.perf_counter() - start)
    return out


def eval_seconds(cfg: config.EngineConfig, k: int, data: population.TrainData) -> float:
    """Seconds to evaluate K members on 2000 images (the default --eval_examples), compiled, median of 3."""
    hparams = members.population_hparams("adam", np.geomspace(1e-4, 1e-1, k))
    pop = population.init_population(cfg, hparams, 0)
    arrays, weight = population.pad_to_chunks({name: np.asarray(v[:2000]) for name, v in data.train.items()},
                                           cfg.eval_chunk)
    evaluate = jax.jit(segment.make_metrics_fn(cfg))
    jax.block_until_ready(evaluate(pop.variables, arrays, weight))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(evaluate(pop.variables, arrays, weight))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model_name: str, k: int, loops: dict, data: population.TrainData, steps: int,
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


def study_rates(n: int) -> list[float]:
    """n of the study's 48 rates (its flagfile's --lrs), evenly spaced, the last (100) included."""
    line = next(x for x in STUDY_FLAGS.read_text().splitlines() if x.startswith("--lrs="))
    rates = [float(v) for v in line.split("=", 1)[1].split(",")]
    step = max(1, len(rates) // n)
    return rates[len(rates) - 1 - step * (n - 1)::step][:n]


def user_valley(model_name: str, rates: list[float], ds: dataset.Dataset, max_steps: int,
                seed: int = 0) -> list[dict]:
    """The user's loop over the valley with lrlab's initial weights, batch order, dropout keys and
    evaluation subset (so the tables can be compared row by row); the data's move to the device counts."""
    eval_idx = sampling.eval_subset_indices(ds.train_images.shape[0], 2000, seed)
    data = {"train_image": jnp.asarray(ds.train_images), "train_label": jnp.asarray(ds.train_labels),
            "eval_image": jnp.asarray(ds.train_images[eval_idx]), "eval_label": jnp.asarray(ds.train_labels[eval_idx])}
    root = jax.random.PRNGKey(seed)
    keys = {"init": jax.random.fold_in(root, 0), "data": sampling.data_key(seed),
            "dropout": jax.random.fold_in(root, population.DROPOUT_SALT)}
    runs = user_loop.valley(model_name, rates, data, keys, max_steps, EVAL_EVERY)
    return [{"learning_rate": r.learning_rate, "status": "reached" if r.reached else "diverged" if r.diverged
             else "exhausted", "steps_to_target": r.steps_to_target, "final_train_accuracy": r.final_accuracy}
            for r in runs]


def lrlab_valley(model_name: str, rates: list[float], ds: dataset.Dataset, max_steps: int,
                 sequential: bool) -> list[dict]:
    """lrlab.lr_valley on the same valley (no test set: the user's loop evaluates none)."""
    task = dataclasses.replace(classification.image_classification(models.make_model(model_name), ds), test=None)
    settings = lrlab.SweepSettings(budget=lrlab.Budget(max_steps, eval_every=EVAL_EVERY), progress=False,
                                   sequential=sequential)
    result = lrlab.lr_valley(task, lrlab.grid("adam", learning_rate=rates), settings)
    return [{k: r[k] for k in ("learning_rate", "status", "steps_to_target", "final_train_accuracy")}
            for r in result.records]


def tables_agree(a: list[dict], b: list[dict]) -> dict:
    """Rows where the two tables agree: both reached within one evaluation period, or both missed."""
    def same(x, y):
        if (x["status"] == "reached") != (y["status"] == "reached"):
            return False
        return x["status"] != "reached" or abs(x["steps_to_target"] - y["steps_to_target"]) <= EVAL_EVERY
    rows = [same(x, y) for x, y in zip(a, b)]
    return {"agree": sum(rows), "of": len(rows),
            "differ": [x["learning_rate"] for x, ok in zip(a, rows) if not ok]}


def valley_end_to_end(model_name: str, ds: dataset.Dataset) -> dict:
    """Wall time of each mode to the valley's table, compilation included, rounds interleaved."""
    rates = study_rates(FLAGS.valley_rates)
    runners = {"user": lambda: user_valley(model_name, rates, ds, FLAGS.valley_max_steps),
               "population": lambda: lrlab_valley(model_name, rates, ds, FLAGS.valley_max_steps, False),
               "sequential": lambda: lrlab_valley(model_name, rates, ds, FLAGS.valley_max_steps, True)}
    modes = [m for m in FLAGS.valley_modes if m in runners]
    walls, tables = {m: [] for m in modes}, {}
    for r in range(FLAGS.valley_repeats):
        for mode in modes[r % len(modes):] + modes[: r % len(modes)]:
            start = time.perf_counter()
            tables[mode] = runners[mode]()
            walls[mode].append(time.perf_counter() - start)
            print(f"  {model_name} valley round {r + 1}: {mode} {walls[mode][-1]:.1f} s", flush=True)
    wall = {m: statistics.median(w) for m, w in walls.items()}
    out = {"model": model_name, "rates": rates, "max_steps": FLAGS.valley_max_steps, "eval_every": EVAL_EVERY,
           "repeats": FLAGS.valley_repeats, "wall_seconds": wall, "wall_seconds_each": walls, "tables": tables,
           "model_steps": {m: sum(r["steps_to_target"] or FLAGS.valley_max_steps for r in t)
                           for m, t in tables.items()}}
    if "population" in wall:
        out["speedup"] = {f"population_vs_{m}": wall[m] / wall["population"] for m in wall if m != "population"}
        out["agreement"] = {m: tables_agree(tables["population"], tables[m]) for m in tables if m != "population"}
    return out


def print_valley(v: dict) -> None:
    modes = list(v["wall_seconds"])
    print(f"\n{v['model']}: valley of {len(v['rates'])} Adam rates, {v['max_steps']}-step budget, wall s to the table "
          f"(median of {v['repeats']}): " + ", ".join(f"{m} {v['wall_seconds'][m]:.1f}" for m in modes))
    for name, x in v.get("speedup", {}).items():
        m = name.removeprefix("population_vs_")
        a = v["agreement"][m]
        print(f"  population vs {m}: {x:.2f}x; tables agree on {a['agree']}/{a['of']} rates"
              + (f" (differ: {a['differ']})" if a["differ"] else ""))
    print(f"  {'rate':>10} " + " ".join(f"{m:>20}" for m in modes))
    cell = lambda r: f"{r['status'][:9]} {r['steps_to_target'] or '':>5} {r['final_train_accuracy']:.3f}"
    for i, lr in enumerate(v["rates"]):
        print(f"  {lr:>10.4g} " + " ".join(f"{cell(v['tables'][m][i]):>20}" for m in modes))


def main(argv):
    del argv
    data = benchmark_data()
    rows = []
    print(f"{'model':<13} {'K':>4} {'seq steps/s':>16} {'pop steps/s':>12} {'ratio':>7} "
          f"{'compile seq/pop s':>18} {'MB/member':>10} {'eval share':>10}")
    for name in FLAGS.models:
        loops, seq_steps_per_s = (user_loops(name, data) if FLAGS.members else {}), {}
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
    valleys = []
    if FLAGS.valley_rates and FLAGS.valley_modes:  # either 0 or empty: no end-to-end valley
        ds = mnist.load_mnist()
        for name in FLAGS.models:
            valleys.append(valley_end_to_end(name, ds))
            print_valley(valleys[-1])
    path = write_results("population_vs_sequential", {"steps": FLAGS.steps, "repeats": FLAGS.repeats,
                                                      "rows": rows, "valleys": valleys}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
