"""A researcher's own Flax model in lrlab, against the loop they would write without lrlab.

  python benchmarks/own_model.py                                  # the tables below, every model
  python benchmarks/own_model.py --models=flax_cnn --members=8 --end_to_end=8x200 --valley
  python benchmarks/own_model.py --members=8,48 --end_to_end= --loop_orders  # both loop orders too

The models are plain Flax (`nn.Conv`, `nn.avg_pool`, `nn.BatchNorm`, `nn.Dense`: nothing of lrlab's):
  flax_cnn   the Flax MNIST example's CNN, width-reduced: conv 3x3 16, avg-pool, conv 3x3 32, avg-pool,
             dense 128, dense 10 (206,922 weights)
  resnet_bn  a conv stem of 16, one residual block of two 3x3 convs with batch norm, global average pool
  mlp        784-256-256-10
  char_lm    lrlab.examples.char_lm's CharMLP on its text (embedding, dense 256, 256 logits)
The user's loop (`UserLoop`, no lrlab import) is the careful one: the data on the device, a jitted
Adam step whose learning rate is injected (one compilation serves every rate), called from a Python
loop, the rates one after another. Each measurement runs in a fresh process, the user's loop with
JAX's defaults and lrlab as its command line runs (`--cpu_devices=auto`), alternately, and the
medians of `--repeats` rounds are compared (shared machines drift).

Tables:
  per member-step  training time only (compilation, and lrlab's measurement of its lowering, apart),
                   the target evaluated every 50 steps on 2,000 training examples by both: the user's
                   loop against lrlab's population of K members (retirement off, members train past
                   the target: every member trains every step).
  end to end       wall time to the same table, compilation included: --end_to_end=KxS rates and steps,
                   nothing retired; --valley: 48 rates from 1e-5 to 1 to a reachable target (97% on a
                   training subset), retirement on, the user's loop stopping each rate at the target or
                   a non-finite loss.
Writes benchmarks/results/own_model-<backend>.json.
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

flags.DEFINE_list("models", ["flax_cnn", "resnet_bn", "mlp", "char_lm"], "Models to measure.")
flags.DEFINE_list("members", ["1", "4", "16", "48"], "Population sizes K of the per member-step table.")
flags.DEFINE_integer("steps", 50, "Steps per member in the per member-step table.")
flags.DEFINE_string("end_to_end", "8x200", "KxS: the end-to-end sweep of K rates and S steps, nothing retired "
                    "(empty: none).")
flags.DEFINE_bool("valley", False, "Also the real valley of flax_cnn: 48 rates to a reachable target, retirement on.")
flags.DEFINE_integer("valley_max_steps", 600, "--valley: the step budget per rate.")
flags.DEFINE_bool("candidates", False, "Also time every lowering candidate (convolution formulation x members per "
                  "vmap) at each K, one fixed lowering per run: what lrlab's own measurement chooses among.")
flags.DEFINE_bool("loop_orders", False, "Also time lrlab at each K with the loop order fixed at steps_outer "
                  "(each step over every member chunk), alternating with the default runs.")
flags.DEFINE_integer("repeats", 3, "Alternating rounds; the median of each is reported.")
flags.DEFINE_string("role", None, "Internal: one measurement in this process (user or lrlab), as JSON on stdout.")
flags.DEFINE_string("spec", None, "Internal: the measurement's JSON.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/own_model-<backend>.json).")
FLAGS = flags.FLAGS

BATCH, EVAL_EVERY, EVAL_EXAMPLES = 100, 50, 2000


def build(name: str):
    """(model, train arrays, inputs(batch) -> x, the labels' key, lrlab's task or None) of a benchmark
    model, plain Flax."""
    import flax.linen as nn
    import jax.numpy as jnp

    class FlaxCNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.avg_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    class ResNetBN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
            x = nn.relu(norm()(nn.Conv(16, (3, 3), strides=(2, 2), use_bias=False)(x)))
            y = nn.relu(norm()(nn.Conv(16, (3, 3), use_bias=False)(x)))
            y = norm()(nn.Conv(16, (3, 3), use_bias=False)(y))
            x = nn.relu(x + y)
            return nn.Dense(10)(x.mean(axis=(1, 2)))

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape(x.shape[0], -1)
            for width in (256, 256):
                x = nn.relu(nn.Dense(width)(x))
            return nn.Dense(10)(x)

    if name == "char_lm":
        from lrlab.examples import char_lm

        # its training windows only: both sides evaluate 2,000 training examples (not its validation set)
        return char_lm.CharMLP(), char_lm.task().train, lambda b: b["context"].astype(jnp.int32), "next", None
    from lrlab.task import mnist

    ds = mnist.load_mnist()
    model = {"flax_cnn": FlaxCNN, "resnet_bn": ResNetBN, "mlp": MLP}[name]()
    train = {"image": ds.train_images, "label": ds.train_labels}
    inputs = lambda b: b["image"].astype(jnp.float32) * (1.0 / 255.0)  # noqa: E731
    return model, train, inputs, "label", None


class UserLoop:
    """The loop a Flax user writes (no lrlab): data on the device, one jitted Adam step with the rate
    injected, a Python loop; batch norm's statistics as a mutable collection."""

    def __init__(self, model, train, inputs, label: str, seed: int = 0):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        self.jax, self.np = jax, np
        self.model, self.label = model, label
        self.data = {k: jax.device_put(np.asarray(v)) for k, v in train.items()}
        self.n = len(train[label])
        self.tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
        key = jax.random.PRNGKey(seed)
        x0 = inputs({k: v[:1] for k, v in self.data.items()})
        self.variables = model.init(key, x0)
        eval_idx = np.random.default_rng(seed).choice(self.n, EVAL_EXAMPLES, replace=False)
        self.eval = {k: v[eval_idx] for k, v in self.data.items()}
        mutable = [c for c in self.variables if c != "params"]
        takes_train = "train" in inspect.signature(type(model).__call__).parameters
        mode = lambda train: {"train": train} if takes_train else {}  # noqa: E731

        def loss_fn(params, state, batch):
            if mutable:
                logits, new_state = model.apply({"params": params, **state}, inputs(batch), **mode(True),
                                                mutable=mutable)
            else:
                logits, new_state = model.apply({"params": params}, inputs(batch), **mode(True)), {}
            labels = batch[label].astype(jnp.int32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state

        @jax.jit
        def step(params, state, opt_state, data, t, data_key):
            idx = jax.random.randint(jax.random.fold_in(data_key, t), (BATCH,), 0, self.n)
            batch = {k: v[idx] for k, v in data.items()}
            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, batch)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, loss

        @jax.jit
        def accuracy(params, state, batch):
            logits = model.apply({"params": params, **state}, inputs(batch), **mode(False))
            return jnp.mean(jnp.argmax(logits, -1) == batch[label])

        self.step, self.accuracy = step, accuracy

    def run(self, lr: float, max_steps: int, target: float | None) -> dict[str, Any]:
        """One rate from the same initial weights: steps until the accuracy on the evaluation subset
        reaches `target` at an evaluation (every EVAL_EVERY steps; None: never), the loss turns
        non-finite, or `max_steps` pass."""
        jax, np = self.jax, self.np
        params = self.variables["params"]
        state = {k: v for k, v in self.variables.items() if k != "params"}
        opt_state = self.tx.init(params)
        opt_state.hyperparams["learning_rate"] = jax.numpy.asarray(lr, jax.numpy.float32)
        data_key = jax.random.PRNGKey(1)
        for t in range(max_steps):
            params, state, opt_state, loss = self.step(params, state, opt_state, self.data, t, data_key)
            if (t + 1) % EVAL_EVERY == 0:  # as lrlab: the target measured every EVAL_EVERY steps
                if not np.isfinite(float(loss)):
                    return {"learning_rate": lr, "status": "diverged", "steps": t + 1}
                if float(self.accuracy(params, state, self.eval)) >= (target if target is not None else 2.0):
                    return {"learning_rate": lr, "status": "reached", "steps": t + 1}
        jax.block_until_ready(params)
        return {"learning_rate": lr, "status": "missed" if target is not None else "trained", "steps": max_steps}


def measure_user(spec: dict[str, Any]) -> dict[str, Any]:
    """The user's loop: per member-step (a warm-up run, then `steps` timed) or a whole sweep."""
    import numpy as np

    start = time.perf_counter()
    model, train, inputs, label, _ = build(spec["model"])
    loop = UserLoop(model, train, inputs, label)
    if spec["kind"] == "per_step":
        loop.run(1e-3, EVAL_EVERY, None)  # compiles the step and the evaluation
        timed = time.perf_counter()
        loop.run(1e-3, spec["steps"], None)
        return {"member_step_ms": 1000 * (time.perf_counter() - timed) / spec["steps"]}
    rates = np.geomspace(*spec["lr_range"], spec["rates"])
    rows = [loop.run(float(lr), spec["max_steps"], spec["target"]) for lr in rates]
    return {"wall_seconds": time.perf_counter() - start, "rows": rows,
            "member_steps": sum(r["steps"] for r in rows)}


def measure_lrlab(spec: dict[str, Any]) -> dict[str, Any]:
    """lrlab's lr_valley on the same model: per member-step (training time of K members over `steps`,
    nothing retired) or a whole sweep (wall time)."""
    import jax
    import numpy as np

    start = time.perf_counter()
    jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))  # as the command line's auto
    import lrlab

    model, train, inputs, label, task = build(spec["model"])
    if task is None:
        task = lrlab.classification(model, train, label=label, inputs=inputs,
                                    target=lrlab.Target("accuracy", spec.get("target") or 0.97))
    per_step = spec["kind"] == "per_step"
    settings = lrlab.SweepSettings(
        budget=lrlab.Budget(max_steps=spec["max_steps"], eval_every=min(EVAL_EVERY, spec["max_steps"])),
        retire=None if per_step or spec.get("target") is None else lrlab.RetireSpec(), progress=False,
        stop_at_target=spec.get("target") is not None and not per_step, views=lrlab.Views(optuna_storage="none"),
        lowering=spec.get("lowering", "auto"), member_chunk=spec.get("member_chunk", 0),
        loop_order=spec.get("loop_order", "auto"))
    rates = np.geomspace(*spec["lr_range"], spec["rates"])
    result = lrlab.lr_valley(task, lrlab.grid("adam", learning_rate=rates), settings)
    timing = result.summary["timing"]["adam"]
    out = {"wall_seconds": time.perf_counter() - start, "train_seconds": timing["train_seconds"],
           "compile_seconds": timing["compile_seconds"], "lowering": timing["lowering"],
           "member_steps": sum(r["steps_trained"] for r in result.records), "devices": jax.device_count()}
    if per_step:
        out["member_step_ms"] = 1000 * timing["train_seconds"] / out["member_steps"]
    else:
        out["rows"] = [{"learning_rate": r["learning_rate"], "status": r["status"],
                        "steps": r["steps_to_target"]} for r in result.records]
    return out


def run_role(role: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in a fresh process (JAX's defaults for the user, the CLI's devices for lrlab)."""
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, __file__, f"--role={role}", f"--spec={json.dumps(spec)}"],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{role} {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(spec_user: dict[str, Any], spec_lrlab: dict[str, Any], repeats: int) -> tuple[list, list]:
    users, lrlabs = [], []
    for r in range(repeats):
        order = (("user", spec_user), ("lrlab", spec_lrlab)) if r % 2 == 0 else (("lrlab", spec_lrlab),
                                                                                  ("user", spec_user))
        for role, spec in order:
            (users if role == "user" else lrlabs).append(run_role(role, spec))
    return users, lrlabs


def candidates(spec: dict[str, Any], k: int, user_ms: float) -> list[dict[str, Any]]:
    """Every lowering candidate at K members, each fixed for one run: ms per member-step."""
    from lrlab.engine.lowering import chunk_candidates
    from lrlab.task.conv import FORMULATIONS

    rows = []
    for conv_name in FORMULATIONS:
        for chunk in chunk_candidates(k):
            try:
                ms = run_role("lrlab", {**spec, "lowering": conv_name, "member_chunk": chunk})["member_step_ms"]
            except RuntimeError as e:  # a candidate the backend cannot compile (out of memory) is a row too
                rows.append({"conv": conv_name, "member_chunk": chunk, "error": str(e)[-300:]})
                continue
            rows.append({"conv": conv_name, "member_chunk": chunk, "member_step_ms": ms})
            print(f"{'':<10} {'':>3} {'':>8} {ms:>9.2f} {user_ms / ms:>9.2f}x  candidate: {conv_name}, {chunk} per vmap",
                  flush=True)
    return rows


def main(argv):
    del argv
    if FLAGS.role:
        measure = measure_user if FLAGS.role == "user" else measure_lrlab
        print(json.dumps(measure(json.loads(FLAGS.spec))))
        return
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    from _common import machine, write_results

    per_step_rows, end_rows = [], []
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    print(f"per member-step, {FLAGS.steps} steps, median of {FLAGS.repeats} alternating rounds", flush=True)
    print(f"{'model':<10} {'K':>3} {'user ms':>8} {'lrlab ms':>9} {'lrlab/user':>10}  lowering")
    for name in FLAGS.models:
        user_spec = {"kind": "per_step", "model": name, "steps": FLAGS.steps}
        users = [run_role("user", user_spec) for _ in range(FLAGS.repeats)]
        for k in map(int, FLAGS.members):
            spec = {"kind": "per_step", "model": name, "max_steps": FLAGS.steps, "rates": k,
                    "lr_range": [1e-4, 1e-2]}
            lrlabs, steps_outer = [], []
            for _ in range(FLAGS.repeats):  # alternate with fresh user measurements
                lrlabs.append(run_role("lrlab", spec))
                users.append(run_role("user", user_spec))
                if FLAGS.loop_orders:
                    steps_outer.append(run_role("lrlab", {**spec, "loop_order": "steps_outer"}))
            u, m = med(users, "member_step_ms"), med(lrlabs, "member_step_ms")
            low = lrlabs[-1]["lowering"]
            per_step_rows.append({"model": name, "members": k, "user_member_step_ms": u, "lrlab_member_step_ms": m,
                                  "speedup": u / m, "user_runs": users, "lrlab_runs": lrlabs})
            print(f"{name:<10} {k:>3} {u:>8.2f} {m:>9.2f} {u / m:>9.2f}x  {low['conv']}, {low['member_chunk']} per "
                  f"vmap, {low.get('loop_order', 'steps_outer')} ({low['how']})", flush=True)
            if steps_outer:
                so = med(steps_outer, "member_step_ms")
                per_step_rows[-1].update(steps_outer_member_step_ms=so, steps_outer_runs=steps_outer)
                print(f"{'':<10} {'':>3} {'':>8} {so:>9.2f} {u / so:>9.2f}x  the same, steps_outer "
                      f"(its time over {low.get('loop_order')}'s: {so / m:.2f})", flush=True)
            if FLAGS.candidates:
                per_step_rows[-1]["candidates"] = candidates(spec, k, u)
    sweeps = []
    if FLAGS.end_to_end:
        k, s = map(int, FLAGS.end_to_end.split("x"))
        sweeps.append(("flax_cnn", f"{k} rates x {s} steps, nothing retired",
                       {"kind": "sweep", "model": "flax_cnn", "rates": k, "lr_range": [1e-4, 1e-1],
                        "max_steps": s, "target": None}))
    if FLAGS.valley:
        sweeps.append(("flax_cnn", f"valley: 48 rates, 97% target, {FLAGS.valley_max_steps}-step budget",
                       {"kind": "sweep", "model": "flax_cnn", "rates": 48, "lr_range": [1e-5, 1.0],
                        "max_steps": FLAGS.valley_max_steps, "target": 0.97}))
    for name, label, spec in sweeps:
        users, lrlabs = alternate(spec, spec, FLAGS.repeats)
        u, m = med(users, "wall_seconds"), med(lrlabs, "wall_seconds")
        end_rows.append({"model": name, "sweep": label, "user_wall_seconds": u, "lrlab_wall_seconds": m,
                         "speedup": u / m, "user_runs": users, "lrlab_runs": lrlabs})
        print(f"end to end, {name}, {label}: user {u:.1f} s, lrlab {m:.1f} s: {u / m:.2f}x", flush=True)
    path = write_results("own_model", {"machine": machine(), "steps": FLAGS.steps, "repeats": FLAGS.repeats,
                                       "per_member_step": per_step_rows, "end_to_end": end_rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
