"""The batch order drawn once per epoch by the host loop (task/sampling.py: EpochOrders), shared or
one per seed, gives every segment the batches that drawing it inside the segment gives."""

import jax
import jax.numpy as jnp
import numpy as np

from lrlab.task import sampling


def test_epoch_orders_give_the_segments_indices_across_epoch_boundaries():
    key, n, batch = sampling.data_key(3), 300, 10  # 30 steps an epoch
    orders = sampling.EpochOrders(key, n, batch)
    read = jax.jit(sampling.indices_in_orders, static_argnums=(3, 4, 5))
    drawn = jax.jit(sampling.segment_batch_indices, static_argnums=(2, 3, 4))
    step = 0
    for num_steps in (7, 7, 16, 30, 45, 1, 64, 5):  # varying chunks, some spanning two or three epochs
        order = orders.for_segment(step, num_steps)
        got = read(order.orders_EN, order.first_epoch, jnp.int32(step), num_steps, n, batch)
        want = drawn(key, jnp.int32(step), num_steps, n, batch)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        step += num_steps


def test_each_epoch_is_drawn_once():
    key, n, batch = sampling.data_key(0), 1000, 10  # 100 steps an epoch
    orders = sampling.EpochOrders(key, n, batch)
    drawn = []
    permutation = orders._permutation
    orders._permutation = lambda k, e, size: drawn.append(int(e)) or permutation(k, e, size)
    for step in range(0, 250, 10):
        orders.for_segment(step, 10)
    assert drawn == [0, 1, 2]
    assert orders.for_segment(240, 10) is orders.for_segment(240, 10)  # the same segment: the same placed arrays


def test_a_segment_program_reads_the_same_batches_from_orders_or_from_the_key():
    """The traced program's two sources of the shared order agree (the loop passes orders)."""
    key, n, batch, steps = sampling.data_key(1), 200, 8, 40
    order = sampling.EpochOrders(key, n, batch).for_segment(20, steps)
    from_orders = jax.jit(lambda o, s: sampling.indices_in_orders(o.orders_EN, o.first_epoch, s, steps, n, batch))
    from_key = jax.jit(lambda k, s: sampling.segment_batch_indices(k, s, steps, n, batch))
    np.testing.assert_array_equal(np.asarray(from_orders(order, jnp.int32(20))), np.asarray(from_key(key, jnp.int32(20))))


def test_each_seeds_order_is_its_keys_across_epoch_boundaries():
    """With replicates the host draws one order per seed (not per member); each equals its key's."""
    keys_U2 = np.stack([np.asarray(sampling.data_key(s)) for s in (4, 9)])
    n, batch = 120, 8  # 15 steps an epoch
    orders = sampling.EpochOrders(keys_U2, n, batch)
    read = jax.jit(jax.vmap(sampling.indices_in_orders, in_axes=(0, None, None, None, None, None)),
                   static_argnums=(3, 4, 5))
    drawn = jax.jit(sampling.segment_batch_indices, static_argnums=(2, 3, 4))
    step = 0
    for num_steps in (10, 10, 25, 3):
        order = orders.for_segment(step, num_steps)
        assert isinstance(order, sampling.SeedBatchOrders) and order.orders_UEN.shape[0] == 2
        got = np.asarray(read(order.orders_UEN, order.first_epoch, jnp.int32(step), num_steps, n, batch))
        for u, key in enumerate(keys_U2):
            np.testing.assert_array_equal(got[u], np.asarray(drawn(key, jnp.int32(step), num_steps, n, batch)))
        assert not np.array_equal(got[0], got[1])
        step += num_steps
