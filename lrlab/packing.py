"""Host-side helpers of the engine: the device mesh, placement and host transfer, padding to a
multiple of the device count, and re-packing a population into a smaller one.

Members are sharded along one mesh axis; the data are replicated. A population's size is padded to
a multiple of the mesh size with PADDING members (copies that train nothing and appear in no
result); when enough members have finished, the running ones are re-packed into a smaller
population (sizes are powers of two, so at most log2 K compilations).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lrlab import population as pop_lib
from lrlab.population import EngineConfig, Population

MEMBERS = "members"  # the mesh axis the population is sharded over


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every host) along the member axis."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (MEMBERS,))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (member) axis split over the mesh; every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(MEMBERS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (the dataset, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Puts a pytree of arrays (the same values on every host) onto `sharding`."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx]), tree)


def to_host(tree: Any) -> Any:
    """A pytree of (possibly sharded, possibly multi-host) arrays as numpy arrays on every host."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)


def make_segment_fn(cfg: EngineConfig, num_steps: int, mesh: Mesh | None = None) -> Callable:
    """`population.make_segment` with the members sharded over `mesh` (default all devices),
    jitted, the population donated.

    `shard_map` runs the same per-member program on each device's slice of the population, with
    the dataset replicated: members never talk to each other, so no collective is needed. One
    code path for one device and many; the population size must be a multiple of the mesh size.
    """
    mesh = mesh if mesh is not None else make_mesh()
    members, whole = PartitionSpec(MEMBERS), PartitionSpec()
    sharded = jax.shard_map(pop_lib.make_segment(cfg, num_steps), mesh=mesh,
                            in_specs=(members, whole, whole, whole, whole, whole, whole),
                            out_specs=(members, members), check_vma=False)
    return jax.jit(sharded, donate_argnums=0)


def gather_members(pop: Population, idx: np.ndarray) -> Population:
    """The sub-population of members at positions `idx`."""
    idx = jnp.asarray(idx)
    return jax.tree_util.tree_map(lambda x: x[idx], pop)


def scatter_members(full: Population, idx: np.ndarray, sub: Population) -> Population:
    """Writes the first len(idx) members of `sub` back into `full` at positions `idx`."""
    n = len(idx)
    idx = jnp.asarray(idx)
    return jax.tree_util.tree_map(lambda f, s: f.at[idx].set(s[:n]), full, sub)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def bucket_size(n_running: int, full_size: int, multiple: int = 1) -> int:
    """Population size to re-pack `n_running` members into: the next power of two, at most K,
    rounded up to a multiple of the device count.

    Few distinct sizes means few compilations (log2 K at most).
    """
    size = 1
    while size < n_running:
        size *= 2
    return round_up(min(size, full_size), multiple)


def pack(full: Population, members: np.ndarray, size: int) -> tuple[Population, np.ndarray]:
    """The population of `members` (positions in `full`) padded to `size` with copies of the first,
    marked PADDING. Returns it and the position in `full` of each of its entries."""
    members = np.asarray(members, np.int64)
    pos = np.concatenate([members, np.full(size - members.size, members[0])]).astype(np.int64)
    sub = gather_members(full, pos)
    is_pad = jnp.arange(size) >= members.size
    return sub.replace(status=jnp.where(is_pad, pop_lib.PADDING, sub.status)), pos
