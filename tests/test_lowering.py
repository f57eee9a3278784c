"""The lowering of a population program is chosen by measurement, kept for a resume, and never
changes results beyond float rounding."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_mnist

import lrlab
from lrlab.engine import loop, lowering, placement, population
from lrlab.engine.stop import Interrupted
from lrlab.store.workdir import NO_SCOPE
from lrlab.task import adapters, conv, dataset, sampling
from lrlab.training import sweep


class UserCNN(nn.Module):
    """A user's model as the Flax examples write it: nn.Conv, avg_pool, Dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(4, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x)), (2, 2), (2, 2))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def user_task(n=600, target=1.0):
    ds = load_mnist()
    return lrlab.image_classification(UserCNN(), dataset.Dataset(
        "mnist-slice", ds.train_images[:n], ds.train_labels[:n], ds.test_images[:200], ds.test_labels[:200], 10),
        target_accuracy=target)


def settings(**kw):
    kw.setdefault("budget", lrlab.Budget(max_steps=20, eval_every=10))
    return lrlab.SweepSettings(batch_size=16, eval_examples=100, progress=False, retire=None,
                               views=lrlab.Views(optuna_storage="none"), **kw)


def test_chunk_candidates():
    assert lowering.chunk_candidates(24) == [1, 2, 4, 8, 24]
    assert lowering.chunk_candidates(16) == [1, 2, 4, 8, 16]
    assert lowering.chunk_candidates(3) == [1, 3]
    assert lowering.chunk_candidates(1) == [1]


def _choose(monkeypatch, speeds, cost=0.0, k=16, **kw):
    """choose() on a population of k members with `speeds` {(conv, chunk) or (conv, chunk, loop
    order): seconds per member-step} in place of timings (each costing `cost` seconds), measuring
    whatever the run's size. Returns the choice and the (conv, chunk, loop order) timed, in order."""
    task = user_task()
    cfg = sweep.engine_config(task, lrlab.grid("adam", learning_rate=[1e-3]).optimizer, settings(), 100)
    pop = population.init_population(cfg, {"learning_rate": np.full(k, 1e-3, np.float32), "b1": np.full(k, 0.9),
                                           "b2": np.full(k, 0.999), "eps": np.full(k, 1e-8)}, 0)
    timed = []

    def fake(self, candidate):
        key = (candidate.conv, candidate.member_chunk, candidate.loop_order)
        seconds = speeds.get(key, speeds.get(key[:2]))
        if candidate not in self.timed:
            timed.append(key)
            self.timed[candidate] = {**dataclasses.asdict(candidate), "compile_seconds": cost,
                                     "member_step_ms": 1000 * seconds, "cost_seconds": cost}
            self.seconds += cost
        return seconds

    monkeypatch.setattr(lowering._Probe, "member_step_seconds", fake)
    monkeypatch.setattr(lowering, "MEASURE_ABOVE", 0.0)
    mesh = placement.make_mesh(jax.devices()[:1])
    return lowering.choose(cfg, pop, None, sampling.data_key(0), 1000, mesh, **kw), timed


def test_the_prior_keeps_a_models_own_convolutions_unvmapped():
    """nn.Conv layers: canonical, one member per vmap; layers written for im2col (lrlab's blocks) and
    models without convolutions: im2col, a few members per vmap by size."""
    M, C, X = conv.MATMUL, conv.CANONICAL, conv.XLA
    assert lowering.prior_of({"Conv_0": None, "Conv_1": None}, 0, 16, 3478) == ([C, M, X], 1)
    assert lowering.prior_of({"ConvReluPool_0": M}, 0, 16, 3478) == ([M, C, X], 4)
    assert lowering.prior_of({}, 0, 16, 3478) == ([M, C, X], 4)
    assert lowering.prior_of({"Conv_0": None}, 8, 16, 3478) == ([C, M, X], 8)  # a chunk size given stays
    assert lowering.prior_of({"ConvReluPool_0": M}, 0, 8, 101_770) == ([M, C, X], 2)  # conv: 2^18 weights a vmap
    assert lowering.prior_of({}, 0, 8, 269_322) == ([M, C, X], 4)  # no conv (an MLP): matmuls batch, 2^21
    assert adapters.conv_preferences(adapters.as_model(UserCNN()), np.zeros((1, 28, 28, 1), np.float32)) == {
        "Conv_0": None, "Conv_1": None}


def test_choice_follows_the_measurements(monkeypatch):
    """Every formulation at the prior (one member per vmap for a model's own convolutions), chunk
    sizes up while faster, then down, the other formulations at the winner."""
    times = dict(zip([1, 2, 4, 8, 16], [5, 1.5, 2, 4, 6]))
    speeds = {(c, n): f * t for c, f in ((conv.MATMUL, 1), (conv.CANONICAL, 3), (conv.XLA, 10)) for n, t in times.items()}
    choice, timed = _choose(monkeypatch, speeds)
    C, M, X, MO, SO = conv.CANONICAL, conv.MATMUL, conv.XLA, lowering.MEMBERS_OUTER, lowering.STEPS_OUTER
    assert choice.lowering == lowering.Lowering(M, 2, MO) and choice.how == "measured"
    assert timed == [(C, 1, MO), (M, 1, MO), (X, 1, MO), (M, 1, SO), (M, 2, MO), (M, 4, MO),
                     (C, 2, MO), (C, 2, SO), (M, 2, SO), (X, 2, MO), (X, 2, SO)]
    assert [(c["conv"], c["member_chunk"], c["loop_order"]) for c in choice.candidates] == timed
    speeds[(C, 2)] = 1  # the formulations rank otherwise at the chunk size chosen
    assert _choose(monkeypatch, speeds)[0].lowering == lowering.Lowering(C, 2, MO)
    speeds[(C, 2, SO)] = 0.5  # and so may the loop orders
    assert _choose(monkeypatch, speeds)[0].lowering == lowering.Lowering(C, 2, SO)


def test_one_chunk_per_device_has_one_loop_order(monkeypatch):
    """A chunk of all the members is one vmap, with no member loop: its loop orders are one program,
    timed once."""
    speeds = {(c, n): 1.0 / n for c in conv.FORMULATIONS for n in [1, 2, 4]}
    choice, timed = _choose(monkeypatch, speeds, k=4, conv=conv.MATMUL)
    assert choice.lowering == lowering.Lowering(conv.MATMUL, 4, lowering.MEMBERS_OUTER)
    assert [t for t in timed if t[1] == 4] == [(conv.MATMUL, 4, lowering.MEMBERS_OUTER)]


def test_measuring_stops_within_its_share_of_the_run(monkeypatch):
    """Each candidate costs 10 s; a run of 16 members x 1000 steps at 1 ms is 16 s: none is affordable
    after the first (the prior), whose lowering is kept."""
    speeds = {(c, n): 0.001 / n for c in conv.FORMULATIONS for n in [1, 2, 4, 8, 16]}
    choice, timed = _choose(monkeypatch, speeds, cost=10.0)
    prior = (conv.CANONICAL, 1, lowering.MEMBERS_OUTER)
    assert timed == [prior] and choice.lowering == lowering.Lowering(*prior)


def test_given_and_small_runs_are_not_measured(monkeypatch):
    speeds = {(c, n): 1.0 for c in conv.FORMULATIONS for n in [1, 2, 4, 8, 16]}
    choice, timed = _choose(monkeypatch, speeds, conv=conv.XLA, member_chunk=8, loop_order=lowering.STEPS_OUTER)
    assert (choice.how, choice.lowering, timed) == ("given", lowering.Lowering(conv.XLA, 8, lowering.STEPS_OUTER), [])
    choice, timed = _choose(monkeypatch, speeds, conv=conv.XLA, member_chunk=8)  # the loop order left to measure
    assert choice.how == "measured" and [t[2] for t in timed] == [lowering.MEMBERS_OUTER, lowering.STEPS_OUTER]
    monkeypatch.setattr(lowering, "MEASURE_ABOVE", 1e30)
    task = user_task()
    cfg = sweep.engine_config(task, lrlab.grid("adam", learning_rate=[1e-3]).optimizer, settings(), 100)
    pop = population.init_population(cfg, lrlab.grid("adam", learning_rate=[1e-3, 1e-2]).hparams, 0)
    choice = lowering.choose(cfg, pop, None, sampling.data_key(0), 10, placement.make_mesh(jax.devices()[:1]))
    assert (choice.how, choice.lowering) == ("prior", lowering.Lowering(conv.CANONICAL, 1, lowering.MEMBERS_OUTER))
    assert choice.layers == {"Conv_0": adapters.LOWERED, "Conv_1": adapters.LOWERED}


def test_results_do_not_depend_on_the_lowering():
    members = lrlab.grid("adam", learning_rate=[1e-3, 3e-3, 1e-2, 3e-2])
    runs = [lrlab.lr_valley(user_task(target=0.5), members, settings(lowering=c, member_chunk=n, loop_order=o))
            for c, n, o in [(conv.XLA, 1, lowering.STEPS_OUTER), (conv.MATMUL, 4, lowering.STEPS_OUTER),
                            (conv.MATMUL, 2, lowering.STEPS_OUTER), (conv.MATMUL, 2, lowering.MEMBERS_OUTER)]]
    for run in runs[1:]:
        assert [r["status"] for r in run.records] == [r["status"] for r in runs[0].records]
        assert [r["steps_to_target"] for r in run.records] == [r["steps_to_target"] for r in runs[0].records]
        np.testing.assert_allclose([r["curve"]["loss"] for r in run.records],
                                   [r["curve"]["loss"] for r in runs[0].records], rtol=1e-4)
    assert [run.summary["timing"]["adam"]["lowering"]["conv"] for run in runs] == ["xla", "matmul", "matmul", "matmul"]
    assert runs[-1].summary["timing"]["adam"]["lowering"]["loop_order"] == lowering.MEMBERS_OUTER


class StopAfter:
    """A stop signal requested once the loop has checked it `checks` times (a SIGTERM mid-run)."""

    def __init__(self, checks):
        self.checks = checks

    @property
    def requested(self):
        self.checks -= 1
        return "SIGTERM" if self.checks < 0 else None


def test_resume_reuses_the_saved_lowering(tmp_path):
    """The choice is saved beside the population's checkpoints: a run stopped mid-way and resumed with
    the lowering left to measurement trains on as chosen, and equals the uninterrupted run."""
    members = lrlab.grid("adam", learning_rate=[1e-3, 1e-2])
    given = settings(lowering=conv.XLA, member_chunk=2, budget=lrlab.Budget(max_steps=40, eval_every=10))
    with pytest.raises(Interrupted):
        lrlab.lr_valley(user_task(), members, given, workdir=tmp_path, stop=StopAfter(2))
    assert json.loads((tmp_path / "checkpoints" / "adam" / "lowering.json").read_text())["how"] == "given"
    resumed = lrlab.lr_valley(user_task(), members, dataclasses.replace(given, lowering="auto", member_chunk=0),
                              workdir=tmp_path)
    reused = resumed.summary["timing"]["adam"]["lowering"]
    assert (reused["conv"], reused["member_chunk"], reused["how"]) == (conv.XLA, 2, "reused")
    whole = lrlab.lr_valley(user_task(), members, given)
    assert [r["curve"]["loss"] for r in resumed.records] == [r["curve"]["loss"] for r in whole.records]
    assert resumed.records[0]["curve"]["step"] == [10, 20, 30, 40]


def plain_flax_run(task, lr, steps, batch, seed=0):
    """One member as a user trains it without lrlab (nn.Conv as written, a jitted Flax + Optax step, a
    Python loop), on lrlab's batches: the model initialised from fold_in(PRNGKey(seed), 0)."""
    model, tx = task.model.module, optax.adam(lr)
    images = jnp.asarray(task.train["image"], jnp.float32) / 255.0
    labels = jnp.asarray(task.train["label"])
    params = model.init(jax.random.fold_in(jax.random.PRNGKey(seed), 0), images[:1])["params"]
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, idx):
        def loss_fn(p):
            logits = model.apply({"params": p}, images[idx])
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for t in range(steps):
        params, opt_state = step(params, opt_state, sampling.batch_indices(sampling.data_key(seed), jnp.int32(t),
                                                                           len(labels), batch))
    return params


@pytest.mark.parametrize("member_chunk", [3, 1])
def test_a_population_of_a_user_conv_model_equals_plain_flax_optax_runs(member_chunk):
    """The lowered population (im2col convolutions, in one vmap or a loop of members) trains each
    member as a plain Flax + Optax loop of the model as written would."""
    task, lrs, steps = user_task(), [1e-3, 1e-2, 3e-2], 20
    run = settings(lowering=conv.MATMUL, member_chunk=member_chunk, budget=lrlab.Budget(max_steps=steps,
                                                                                          eval_every=10))
    data, chunk = sweep.sweep_data(task, run)
    cfg = sweep.engine_config(task, lrlab.grid("adam", learning_rate=lrs).optimizer, run, chunk)
    pop = population.init_population(cfg, lrlab.grid("adam", learning_rate=lrs).hparams, 0)
    programs, choice = sweep.lowered_programs(cfg, pop, data, run, NO_SCOPE, placement.make_mesh(jax.devices()[:1]))
    assert (choice.lowering.conv, choice.lowering.member_chunk) == (conv.MATMUL, member_chunk)
    out = loop.train(pop, data, run.budget, sampling.data_key(0), programs, progress=False)
    for i, lr in enumerate(lrs):
        plain = plain_flax_run(task, lr, steps, run.batch_size)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[i], b, rtol=2e-3, atol=2e-5),
                               out.final.params, plain)
    other = plain_flax_run(task, lrs[1], steps, run.batch_size)
    with pytest.raises(AssertionError):  # the comparison tells the rates apart
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a)[2], b, rtol=2e-3, atol=2e-5),
                               out.final.params, other)
