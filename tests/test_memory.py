"""The memory check (engine/memory.py): a population that cannot fit is refused before any work,
with what it needs, what the devices offer and how many members would fit."""

import jax
import numpy as np
import pytest
from conftest import make_cfg

from lrlab.engine import memory, population
from lrlab.optim import members


def test_member_bytes_counts_the_state_and_a_step_of_gradients():
    cfg = make_cfg("adam")
    pop = population.init_population(cfg, members.population_hparams(cfg.optimizer, [1e-3]), 0)
    params = memory.tree_bytes(pop.params)
    assert memory.member_bytes(cfg) == memory.tree_bytes(pop) + 2 * params
    assert memory.member_bytes(cfg) > 5 * params  # weights, Adam's two moments, gradients, updates


def test_a_population_too_large_is_refused_with_how_many_fit(monkeypatch):
    cfg = make_cfg("sgd")
    per = memory.member_bytes(cfg)
    monkeypatch.setattr(memory, "device_memory", lambda devices: (int(10.5 * per / memory.HEADROOM), "a test"))
    memory.check(cfg, 10, 0, jax.local_devices())
    with pytest.raises(memory.TooLarge, match=r"11 members need .* \(a test\): at most 10 members fit"):
        memory.check(cfg, 11, 0, jax.local_devices())
    with pytest.raises(memory.TooLarge, match="not even one member fits"):
        memory.check(cfg, 1, int(11 * per), jax.local_devices())


def test_tree_bytes_reads_shapes_only():
    tree = {"a": jax.ShapeDtypeStruct((3, 4), np.float32), "b": np.zeros(5, np.int8)}
    assert memory.tree_bytes(tree) == 3 * 4 * 4 + 5
