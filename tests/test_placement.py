"""Device placement (engine/placement.py): the mesh a population gets, members gathered and
scattered back, re-packing sizes, and layouts dealt over devices."""

import jax
import numpy as np
from conftest import make_cfg

from lrlab.engine import placement, population
from lrlab.optim import members


def test_mesh_for_uses_the_most_devices_that_divide_without_exceeding_the_members():
    n = jax.device_count()
    assert placement.mesh_for(10**6).size == n
    assert placement.mesh_for(1).size == 1
    assert all(n % placement.mesh_for(k).size == 0 and placement.mesh_for(k).size <= k for k in range(1, 9))


def test_gather_then_scatter_restores_the_population():
    cfg = make_cfg("sgd")
    pop = jax.device_put(population.init_population(cfg, members.population_hparams(cfg.optimizer,
                                                                                    [1e-3, 1e-2, 1e-1, 1.0]), 0))
    sub = placement.gather_members(pop, np.array([2, 0]))
    np.testing.assert_allclose(np.asarray(sub.opt_state.hyperparams["learning_rate"]), [1e-1, 1e-3], rtol=1e-6)
    back = placement.scatter_members(pop, np.array([2, 0]), sub, np.array([0, 1]))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, pop)


def test_bucket_sizes_are_powers_of_two_capped_and_device_multiples():
    assert [placement.bucket_size(n, 48) for n in (1, 2, 3, 5, 17, 33, 48)] == [1, 2, 4, 8, 32, 48, 48]
    assert placement.bucket_size(3, 48, multiple=3) == 6
    assert placement.round_up(7, 4) == 8


def test_a_layout_deals_members_over_devices_and_pads_with_a_marked_copy():
    cfg = make_cfg("sgd")
    pop = population.init_population(cfg, members.population_hparams(cfg.optimizer, [1e-3, 1e-2, 1e-1]), 0)
    pos, real = placement.layout(np.array([0, 1, 2]), 4, devices=2)
    assert pos.tolist() == [0, 2, 1, 0] and real.tolist() == [True, True, True, False]
    packed = placement.pack(pop, pos, real)
    assert np.asarray(packed.status)[3] == population.PADDING
