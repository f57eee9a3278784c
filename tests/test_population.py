"""The engine: vmapped training equals independent runs; divergence is contained; targets exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hparams, make_cfg, run_population

from lrlab.engine import loop, member_map, placement, population
from lrlab.engine.config import MEMBERS_OUTER, STEPS_OUTER
from lrlab.optim import members
from lrlab.store.workdir import NO_SCOPE
from lrlab.training import settings as settings_lib
from lrlab.training import sweep

LRS = [1e-3, 3e-3, 1e-2, 3e-2]


def _member(tree, i):
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[i], tree)


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("member_chunk,loop_order", [(4, STEPS_OUTER), (2, STEPS_OUTER), (2, MEMBERS_OUTER),
                                                     (1, MEMBERS_OUTER)])
def test_population_equals_independent_runs(small_data, member_chunk, loop_order):
    """All 4 in one vmap, or a loop of chunks: each step over every chunk, or each chunk over the
    segment's steps (members outer)."""
    budget = loop.Budget(max_steps=30, eval_every=10)
    cfg = make_cfg(member_chunk=member_chunk, loop_order=loop_order)
    together = run_population(cfg, LRS, small_data, budget)
    single_cfg = make_cfg()
    programs = loop.Programs(single_cfg)  # one compilation serves every single-member run
    for i, lr in enumerate(LRS):
        alone = run_population(single_cfg, [lr], small_data, budget, programs=programs)
        _assert_trees_close(_member(together.final.params, i), _member(alone.final.params, 0))
        np.testing.assert_allclose(together.curves[i]["train_accuracy"], alone.curves[0]["train_accuracy"],
                                   atol=1e-6)
        np.testing.assert_allclose(together.curves[i]["loss"], alone.curves[0]["loss"], rtol=1e-5)
        assert together.curves[i]["step"] == [10, 20, 30]


def test_sequential_mode_equals_vectorized(small_data):
    budget = loop.Budget(max_steps=40, eval_every=10)
    cfg = make_cfg(target=0.6)
    vec = run_population(cfg, LRS, small_data, budget, seed=0)
    settings = settings_lib.SweepSettings(budget=budget, batch_size=32, seed=0, progress=False)
    seq, _, _ = sweep.train_sequential(cfg, members.grid("adam", learning_rate=LRS), small_data, settings,
                                 NO_SCOPE, {})
    np.testing.assert_array_equal(vec.final.status, seq.final.status)
    np.testing.assert_array_equal(vec.final.steps_to_target, seq.final.steps_to_target)
    _assert_trees_close(vec.final.params, seq.final.params)
    assert np.all(np.isnan(seq.seconds_to_target) == (seq.final.status != population.REACHED))


@pytest.mark.parametrize("member_chunk,loop_order", [(3, STEPS_OUTER), (1, STEPS_OUTER), (1, MEMBERS_OUTER)])
def test_divergent_member_is_frozen_and_contained(small_data, member_chunk, loop_order):
    """With member_chunk=1 every member runs the same one-member program, so even a population of
    another size is bit-identical; vmapped together, a population of another size differs by float
    rounding (vmap width changes the kernels), a population of the same size does not."""
    budget = loop.Budget(max_steps=20, eval_every=10)
    cfg = make_cfg("sgd", member_chunk=member_chunk, loop_order=loop_order)
    with_huge = run_population(cfg, [1e-2, 1e30, 3e-2], small_data, budget, repack=False)
    sane = run_population(cfg, [1e-2, 1e-2, 3e-2], small_data, budget, repack=False)
    without = run_population(cfg, [1e-2, 3e-2], small_data, budget, repack=False)
    assert population.STATUS_NAMES[with_huge.final.status[1]] == "diverged"
    assert with_huge.final.steps_trained[1] < 20
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(_member(with_huge.final.params, 1)))
    assert list(with_huge.final.status[[0, 2]]) == [population.EXHAUSTED] * 2
    for i in (0, 2):  # same population shape: bit-identical
        jax.tree_util.tree_map(np.testing.assert_array_equal, _member(with_huge.final.params, i),
                               _member(sane.final.params, i))
        np.testing.assert_array_equal(with_huge.curves[i]["loss"], sane.curves[i]["loss"])
    for i_with, i_without in ((0, 0), (2, 1)):  # a population without it
        a, b = _member(with_huge.final.params, i_with), _member(without.final.params, i_without)
        if member_chunk == 1:
            jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        else:
            _assert_trees_close(a, b, rtol=1e-5, atol=1e-7)


def test_steps_to_target_is_first_evaluation_at_target(small_data):
    budget = loop.Budget(max_steps=60, eval_every=10)
    out = run_population(make_cfg(target=0.5), [1e-5, 3e-3, 1e-2], small_data, budget)
    reached_any = False
    for i, curve in enumerate(out.curves):
        hits = [s for s, a in zip(curve["step"], curve["train_accuracy"]) if a >= 0.5]
        status = population.STATUS_NAMES[out.final.status[i]]
        if hits:
            reached_any = True
            assert status == "reached" and out.final.steps_to_target[i] == hits[0]
            assert curve["step"][-1] == hits[0]  # frozen once reached: no further evaluations
            assert out.seconds_to_target[i] == curve["seconds"][-1]
        else:
            assert status == "exhausted" and out.final.steps_to_target[i] == population.NO_STEP
            assert out.final.steps_trained[i] == 60 and np.isnan(out.seconds_to_target[i])
    assert reached_any and population.STATUS_NAMES[out.final.status[0]] == "exhausted"


@pytest.mark.parametrize("member_chunk", [2, 6])
def test_repacking_keeps_results_and_saves_compute(small_data, member_chunk):
    """Chunks of 2: the running members are compacted in place into fewer chunks (idle chunks
    skipped, no new program); one vmap of 6: they move to a smaller population. Either way, the
    same results."""
    budget = loop.Budget(max_steps=60, eval_every=10)
    lrs = [1e-5, 3e-3, 2e-5, 1e-2, 1e30, 5e-3]  # 0 and 2 never reach, so they start in two chunks
    cfg = make_cfg(target=0.5, member_chunk=member_chunk)
    programs = loop.Programs(cfg)
    packed = run_population(cfg, lrs, small_data, budget, repack=True, programs=programs)
    unpacked = run_population(cfg, lrs, small_data, budget, repack=False)
    if member_chunk == 2:
        assert packed.population_sizes == [6] and packed.compactions >= 1
        assert {size for size, _ in programs._compiled} == {6}
    else:
        assert packed.population_sizes[0] == 6 and packed.population_sizes[-1] < 6 and packed.compactions == 0
    np.testing.assert_array_equal(packed.final.status, unpacked.final.status)
    np.testing.assert_array_equal(packed.final.steps_to_target, unpacked.final.steps_to_target)
    np.testing.assert_array_equal(packed.final.member, np.arange(6))
    assert population.STATUS_NAMES[packed.final.status[4]] == "diverged"
    for i in (0, 1, 2, 3, 5):  # member 4's last finite weights are huge: float noise there is no signal
        _assert_trees_close(_member(packed.final.params, i), _member(unpacked.final.params, i))


def test_layout_deals_members_to_devices_and_compaction_counts_live_chunks():
    pos, real = placement.layout(np.array([3, 5, 7, 8, 9]), 8, devices=2)
    assert list(real) == [True, True, True, False, True, True, False, False]  # 3 on device 0, 2 on device 1
    assert list(pos[real]) == [3, 7, 9, 5, 8] and list(pos[~real]) == [3, 3, 3]  # padding: copies of the first
    pos, real = placement.layout(np.array([3, 5]), 4, devices=2, spread=False)
    assert list(pos) == [3, 5, 3, 3] and list(real) == [True, True, False, False]
    busy = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], bool)  # chunks of 2 on 2 devices: 2 live, 1 live
    assert placement.live_chunks(busy, devices=2, chunk=2) == 2
    assert placement.live_chunks(placement.layout(np.arange(3), 12, devices=2)[1], devices=2, chunk=2) == 1
    with pytest.raises(ValueError, match="do not fit"):
        placement.layout(np.arange(5), 4, devices=2)


def test_idle_chunks_are_skipped_and_give_idle_outputs():
    """member_map with `busy`: a chunk with no busy member runs `idle`, not `fn` (whose NaN would show)."""
    fn = lambda x, b: x + jnp.nan  # noqa: E731
    idle = lambda x, b: x * 2  # noqa: E731
    x, busy = jnp.arange(6.0), jnp.array([False, False, True, False, False, False])
    out = member_map.member_map(fn, (0, 0), 6, 2, busy=1, idle=idle)(x, busy)
    assert np.isnan(out[2]) and np.isnan(out[3]) and list(np.asarray(out)[[0, 1, 4, 5]]) == [0.0, 2.0, 8.0, 10.0]
    zeros = member_map.member_map(fn, (0, 0), 6, 2, busy=1)(x, busy)  # default idle outputs: zeros
    assert list(np.asarray(zeros)[[0, 1, 4, 5]]) == [0.0] * 4


def test_learning_rates_are_data_not_constants(small_data):
    cfg = make_cfg()
    programs = loop.Programs(cfg)
    budget = loop.Budget(max_steps=10, eval_every=10)
    for lrs in ([1e-3, 1e-2], [5e-1, 7e-4]):
        pop = population.init_population(cfg, hparams("adam", lrs), 0)
        loop.train(pop, small_data, budget, jax.random.PRNGKey(0), programs, progress=False)
    assert len(programs._compiled) == 1


def test_max_seconds_exhausts_running_members(small_data):
    budget = loop.Budget(max_steps=1000, eval_every=5, max_seconds=1e-6)
    out = run_population(make_cfg(), [1e-3, 1e-2], small_data, budget)
    assert list(out.final.status) == [population.EXHAUSTED] * 2
    assert list(out.final.steps_trained) == [5, 5]


@pytest.mark.parametrize("requested,k,weights,expected", [
    (0, 48, 3_478, 4),  # the prior: a small model in chunks of 4,
    (0, 48, 206_922, 1),  # a larger one a member at a time
    (0, 48, 100_000, 2),
    (0, 6, 3_478, 3),  # the largest divisor of K under the target
    (0, 7, 3_478, 1),
    (5, 10, 3_478, 5),  # a request wins
    (64, 48, 3_274_634, 48),  # one vmap
])
def test_member_chunk_size(requested, k, weights, expected):
    assert member_map.member_chunk_size(requested, k, weights) == expected


def test_distinct_seeds_give_each_member_its_own_run(small_data):
    """--distinct_seeds: own initialisation and batch order per member, still equal to its lone run."""
    budget = loop.Budget(max_steps=20, eval_every=10)
    cfg = make_cfg(distinct_seeds=True)
    lrs = [3e-3, 3e-3]
    vec = run_population(cfg, lrs, small_data, budget)
    settings = settings_lib.SweepSettings(budget=budget, batch_size=32, seed=0, progress=False)
    seq, _, _ = sweep.train_sequential(cfg, members.grid("adam", learning_rate=lrs), small_data, settings, NO_SCOPE,
                                       {})
    first = jax.tree_util.tree_leaves(vec.final.params)[0]
    assert not np.allclose(first[0], first[1])  # same rate, different runs
    _assert_trees_close(vec.final.params, seq.final.params)
