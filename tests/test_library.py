"""lrlab as a library: a user's own model (Linen or NNX), Optax chain, loss and data.

A population equals independent runs written here with plain Flax and Optax (not through lrlab),
with two hyperparameters varying per member; one compilation serves new values of every
hyperparameter; the README's library example runs as written; tasks by name from the command line.
"""

import json
import pathlib
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import run_together

import lrlab
from lrlab.engine import loop, population
from lrlab.optim import optimizers
from lrlab.task import classification, models, sampling
from lrlab.task import task as task_lib
from lrlab.training import sweep

N, D, C, B = 512, 12, 3, 32  # synthetic features: N examples of D floats, C classes, batch B
STEPS, EVAL_EVERY, SEED = 12, 4, 0


def synthetic_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype(np.float32)
    w = rng.normal(size=(D, C))
    return {"features": x, "label": np.argmax(x @ w, axis=1).astype(np.int32)}


class UserMLP(nn.Module):
    """A user's model: dense, batch norm, ReLU, dropout, dense (`train` switches the modes). No bias
    before the batch norm: its gradient would be rounding noise, which Adam amplifies."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16, use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
        return nn.Dense(C)(x)


def chain(learning_rate, weight_decay):
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=weight_decay))


def user_task(model=None):
    xent = lambda logits, batch: optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return lrlab.Task(model=model or UserMLP(), train=synthetic_data(), inputs=lambda batch: batch["features"],
                      loss=xent,
                      metrics={"loss": xent, "accuracy": lambda logits, batch: classification.correct(logits, batch["label"])},
                      target=lrlab.Target("loss", 0.0, "min"), name="synthetic")  # a goal of 0 nats: never reached


LR_WD = [(1e-3, 0.0), (1e-2, 0.5), (3e-2, 2.0), (1e-2, 0.0)]  # two hyperparameters per member


def plain_flax_run(lr, wd, order_key):
    """One member as a user would train it without lrlab: init, a jitted Flax + Optax step, a loop.
    lrlab's conventions it follows: the model initialised from fold_in(PRNGKey(seed), 0), step t's
    dropout key fold_in(fold_in(PRNGKey(seed), 1), t), the batches of `order_key` (shared by all)."""
    model, tx = UserMLP(), chain(lr, wd)
    root = jax.random.PRNGKey(SEED)
    data = {k: jnp.asarray(v) for k, v in synthetic_data().items()}
    variables = model.init(jax.random.fold_in(root, 0), jnp.zeros((1, D)))
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, idx, t):
        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, data["features"][idx], train=True,
                                      rngs={"dropout": jax.random.fold_in(jax.random.fold_in(root, 1), t)},
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, data["label"][idx]).mean(), new
        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new["batch_stats"], opt_state

    for t in range(STEPS):
        idx = sampling.batch_indices(order_key, jnp.int32(t), N, B)
        params, stats, opt_state = step(params, stats, opt_state, idx, t)
    return params, stats


def test_a_population_of_a_user_model_and_chain_equals_plain_flax_optax_runs():
    opt = lrlab.optimizer(chain, name="clip_adamw")
    members = lrlab.Members(opt, {"learning_rate": np.array([lr for lr, _ in LR_WD], np.float32),
                                  "weight_decay": np.array([wd for _, wd in LR_WD], np.float32)})
    task = user_task()
    settings = lrlab.SweepSettings(budget=lrlab.Budget(STEPS, None, EVAL_EVERY), batch_size=B, eval_examples=128,
                                   seed=SEED, progress=False)
    data, chunk = sweep.sweep_data(task, settings)
    cfg = sweep.engine_config(task, opt, settings, chunk)
    out = loop.train(population.init_population(cfg, members.hparams, SEED), data, settings.budget,
                       sampling.data_key(SEED), loop.Programs(cfg), progress=False)
    assert list(out.final.status) == [population.EXHAUSTED] * 4 and list(out.final.steps_trained) == [STEPS] * 4
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)  # vmap-width rounding, amplified by Adam
    for i, (lr, wd) in enumerate(LR_WD):
        params, stats = plain_flax_run(np.float32(lr), np.float32(wd), sampling.data_key(SEED))
        member = lambda tree: jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)
        jax.tree_util.tree_map(close, member(out.final.params), params)
        jax.tree_util.tree_map(close, member(out.final.model_state["batch_stats"]), stats)
    other, _ = plain_flax_run(np.float32(1e-2), np.float32(0.5), sampling.data_key(SEED))  # member 1's rates
    with pytest.raises(AssertionError):  # the comparison tells members 1 and 3 apart: weight decay matters
        jax.tree_util.tree_map(close, jax.tree_util.tree_map(lambda x: np.asarray(x)[3], out.final.params), other)


def test_one_compilation_serves_new_values_of_every_hyperparameter():
    opt = lrlab.optimizer(chain)
    task = user_task()
    settings = lrlab.SweepSettings(budget=lrlab.Budget(8, None, 4), batch_size=B, eval_examples=128, progress=False)
    data, chunk = sweep.sweep_data(task, settings)
    cfg = sweep.engine_config(task, opt, settings, chunk)
    programs = loop.Programs(cfg)
    finals = []
    for lrs, wds in (([1e-3, 1e-2], [0.0, 1e-4]), ([0.3, 3e-4], [0.5, 0.9])):
        hparams = {"learning_rate": np.array(lrs, np.float32), "weight_decay": np.array(wds, np.float32)}
        out = loop.train(population.init_population(cfg, hparams, 0), data, settings.budget, sampling.data_key(0),
                           programs, progress=False, repack=False)
        finals.append(out.final)
        np.testing.assert_allclose(out.final.opt_state.hyperparams["weight_decay"], wds, rtol=1e-6)
    assert programs.compilations == 1  # (2 members, 4 steps): both runs, every hyperparameter new
    assert not np.allclose(jax.tree_util.tree_leaves(finals[0].params)[0], jax.tree_util.tree_leaves(finals[1].params)[0])
    mlp_task = lrlab.image_classification(models.make_model("mlp", 0.1))
    data, chunk = sweep.sweep_data(mlp_task, settings)
    programs = loop.Programs(sweep.engine_config(mlp_task, optimizers.get("adam"), settings, chunk))
    for values in ({"b1": 0.9, "b2": 0.999, "eps": 1e-8}, {"b1": 0.5, "b2": 0.9, "eps": 1e-3}):
        hparams = lrlab.grid("adam", learning_rate=[1e-3, 1e-2], **values).hparams
        loop.train(population.init_population(programs.cfg, hparams, 0), data, settings.budget, sampling.data_key(0),
                     programs, progress=False, repack=False)
    assert programs.compilations == 1


class UserNNX:
    """A user's NNX model (Linear, BatchNorm, ReLU, Linear), built from its random streams."""

    def __new__(cls, rngs):
        from flax import nnx

        class Model(nnx.Module):
            def __init__(self, rngs):
                self.hidden = nnx.Linear(D, 16, use_bias=False, rngs=rngs)
                self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
                self.out = nnx.Linear(16, C, rngs=rngs)

            def __call__(self, x):
                return self.out(nnx.relu(self.norm(self.hidden(x))))

        return Model(rngs)


def test_an_nnx_model_trains_as_a_plain_nnx_loop():
    """An NNX module (through nnx.split / merge) in a population equals nnx.Optimizer's own loop."""
    from flax import nnx

    lrs = [1e-2, 1e-1]
    members = lrlab.grid("sgd", learning_rate=lrs)
    task = user_task(UserNNX)
    settings = lrlab.SweepSettings(budget=lrlab.Budget(STEPS, None, EVAL_EVERY), batch_size=B, eval_examples=128,
                                   seed=SEED, progress=False)
    data, chunk = sweep.sweep_data(task, settings)
    cfg = sweep.engine_config(task, members.optimizer, settings, chunk)
    out = loop.train(population.init_population(cfg, members.hparams, SEED), data, settings.budget,
                       sampling.data_key(SEED), loop.Programs(cfg), progress=False)
    raw = synthetic_data()
    for i, lr in enumerate(lrs):
        model = UserNNX(nnx.Rngs(jax.random.fold_in(jax.random.PRNGKey(SEED), 0)))
        optimizer = nnx.Optimizer(model, optax.sgd(np.float32(lr)), wrt=nnx.Param)
        for t in range(STEPS):
            idx = sampling.batch_indices(sampling.data_key(SEED), jnp.int32(t), N, B)
            x, y = raw["features"][np.asarray(idx)], raw["label"][np.asarray(idx)]
            loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
            grads = nnx.grad(loss)(model)
            optimizer.update(model, grads)
        expected = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        got = jax.tree_util.tree_map(lambda a: np.asarray(a)[i], out.final.params)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), got, expected)
        stats = jax.tree_util.tree_map(lambda a: np.asarray(a)[i], out.final.model_state["nnx"])
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), stats,
                               nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))


def readme_library_code() -> str:
    text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Use it on your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(readme_library_code(), "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.groups) == 2 and len(result.records) == 4  # 2 rates x 2 weight decays
    assert (tmp_path / "runs" / "my_model" / "results.json").exists()
    assert "best learning rate" in capsys.readouterr().out


def test_the_language_model_reaches_its_target_at_a_sane_rate_and_misses_at_extremes():
    from lrlab.examples import char_lm

    task = char_lm.task(goal_nats=2.3, train_bytes=200_000, val_bytes=2_000)
    assert task.eval_name == "validation" and task.target_key == "validation_loss"
    members = lrlab.grid("adam", learning_rate=[1e-5, 3e-3, 3.0])
    result = lrlab.lr_valley(task, members, lrlab.SweepSettings(budget=lrlab.Budget(400, None, 50), progress=False))
    statuses = [r["status"] for r in result.records]
    assert statuses[1] == "reached" and statuses[0] != "reached" and statuses[2] != "reached", result.report()
    best = result.best()
    assert best["learning_rate"] == pytest.approx(3e-3) and best["final_validation_loss"] <= 2.3
    assert result.band() == (pytest.approx(3e-3), pytest.approx(3e-3))


def test_task_errors_are_one_line():
    data = synthetic_data()
    xent = lambda logits, batch: classification.cross_entropy(logits, batch["label"])
    with pytest.raises(ValueError, match="target's metric 'accuracy' is not among the task's metrics"):
        lrlab.Task(UserMLP(), data, xent, {"loss": xent}, lrlab.Target("accuracy"))
    with pytest.raises(ValueError, match="must share one leading example axis"):
        lrlab.Task(UserMLP(), {"features": data["features"], "label": data["label"][:10]}, xent, {"loss": xent},
                   lrlab.Target("loss", 1.0, "min"))
    with pytest.raises(ValueError, match="target mode must be 'max' or 'min'"):
        lrlab.Target("loss", 1.0, "lower")
    with pytest.raises(ValueError, match="is not MODULE:NAME"):
        task_lib.load_task("no_colon")
    with pytest.raises(ValueError, match="cannot import nothing_here"):
        task_lib.load_task("nothing_here.tasks:task")


TASK_FLAGS = ["--max_steps=20", "--eval_every=10", "--batch_size=32", "--noprogress"]


def test_tasks_and_optimizers_by_name_from_the_command_line(tmp_path):
    """--task and --optimizer name a user's callables; --hparam makes a second grid axis; bad
    combinations are refused in one line before any work."""
    valley = [sys.executable, "-m", "lrlab.experiments.lr_valley"]
    procs = run_together({
        "cnn": valley + ["--task=lrlab.examples.mnist_cnn:task", "--optimizer=lrlab.examples.mnist_cnn:adamw",
                         "--hparam=weight_decay=1e-4,1e-2", "--lrs=0.01", "--eval_examples=250",
                         f"--workdir={tmp_path / 'cnn'}", *TASK_FLAGS],
        "lm": valley + ["--task=lrlab.examples.char_lm:task", "--lrs=0.003,3", "--target_goal=3.0",
                        "--max_steps=100", "--eval_every=50", "--batch_size=32", "--noprogress",
                        f"--workdir={tmp_path / 'lm'}"],
        "model": valley + ["--task=lrlab.examples.char_lm:task", "--model=mlp", f"--workdir={tmp_path / 'model'}"],
        "missing": valley + ["--task=lrlab.examples.nothing:task", f"--workdir={tmp_path / 'missing'}"],
        "hparam": valley + ["--task=lrlab.examples.char_lm:task", "--hparam=weight_decay=0.1",
                            f"--workdir={tmp_path / 'hparam'}"],
    })
    proc = procs["cnn"]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "cnn" / "results.json").read_text())
    groups = [m["group"] for m in summary["members"]]
    assert groups == ["adamw weight_decay=0.0001", "adamw weight_decay=0.01"]
    assert [m["hyperparameters"]["weight_decay"] for m in summary["members"]] == pytest.approx([1e-4, 1e-2])
    assert "adamw weight_decay=0.01: 1 learning rates" in proc.stdout
    proc = procs["lm"]
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "lm" / "results.json").read_text())
    assert summary["target"] == {"metric": "loss", "goal": 3.0, "mode": "min"}
    assert summary["target_key"] == "validation_loss" and summary["task"]["name"] == "stdlib-chars"
    assert [m["status"] for m in summary["members"]][0] == "reached"
    for name, needle in [("model", "--task brings its own model and data: not with --model"),
                         ("missing", "--task=lrlab.examples.nothing:task: cannot import lrlab.examples.nothing"),
                         ("hparam", "--hparam: no optimizer of --optimizer=adam has weight_decay")]:
        proc = procs[name]
        assert proc.returncode == 1 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / name).exists()
