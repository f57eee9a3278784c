"""Host-side helpers of the engine: the device mesh, placement and host transfer, padding to a
multiple of the device count, and re-packing a population into a smaller one.

Members are sharded along one mesh axis; the data are replicated. A population's size is padded to
a multiple of the mesh size with PADDING members (copies that train nothing and appear in no
result). When members finish, the running ones are re-packed: where the member loop runs in
chunks (CPU), into the same population, as few chunks per device as they fill (idle chunks are
skipped, and nothing recompiles); where it is one vmap (accelerators), into a smaller population
(sizes are powers of two, so at most log2 K compilations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lrlab.engine import population, segment
from lrlab.engine.config import EngineConfig
from lrlab.engine.population import Population

MEMBERS = "members"  # the mesh axis the population is sharded over


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every host) along the member axis."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (MEMBERS,))


def mesh_for(members: int) -> Mesh:
    """The mesh a population of `members` trains on: every device, or, in a single process, the
    most devices that divide their count without exceeding the members (a padding member trains
    for nothing, on a device that a real member could have used whole)."""
    devices = jax.devices()
    if jax.process_count() > 1:
        return make_mesh(devices)
    return make_mesh(devices[:max(d for d in range(1, len(devices) + 1) if len(devices) % d == 0 and d <= members)])


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


def make_segment_fn(cfg: EngineConfig, num_steps: int, mesh: Mesh | None = None) -> Callable:
    """`population.make_segment` with the members sharded over `mesh` (default all devices),
    jitted, the population donated.

    `shard_map` runs the same per-member program on each device's slice of the population, with
    the dataset replicated: members never talk to each other, so no collective is needed. One
    code path for one device and many; the population size must be a multiple of the mesh size.
    """
    mesh = mesh if mesh is not None else make_mesh()
    members, whole = PartitionSpec(MEMBERS), PartitionSpec()
    sharded = jax.shard_map(segment.make_segment(cfg, num_steps), mesh=mesh,
                            in_specs=(members, whole, whole, whole, whole, whole, whole),
                            out_specs=(members, members), check_vma=False)
    return jax.jit(sharded, donate_argnums=0)


def make_training_fn(cfg: EngineConfig, num_steps: int, mesh: Mesh | None = None) -> Callable:
    """`segment.make_training` sharded over `mesh` as `make_segment_fn` shards a segment, jitted
    (nothing donated): the training scan alone, which `lowering` times."""
    mesh = mesh if mesh is not None else make_mesh()
    members, whole = PartitionSpec(MEMBERS), PartitionSpec()
    sharded = jax.shard_map(segment.make_training(cfg, num_steps), mesh=mesh, in_specs=(members, whole, whole, whole),
                            out_specs=(members, PartitionSpec(None, MEMBERS)), check_vma=False)
    return jax.jit(sharded)


@jax.jit
def _gather(pop: Population, idx: jax.Array) -> Population:
    return jax.tree_util.tree_map(lambda x: x[idx], pop)


@jax.jit
def _scatter(full: Population, idx: jax.Array, sub: Population, entries: jax.Array) -> Population:
    return jax.tree_util.tree_map(lambda f, s: f.at[idx].set(s[entries]), full, sub)


def gather_members(pop: Population, idx: np.ndarray) -> Population:
    """The sub-population of members at positions `idx` (one compiled program for every leaf, not
    one dispatch per leaf)."""
    return _gather(pop, jnp.asarray(idx))


def scatter_members(full: Population, idx: np.ndarray, sub: Population, entries: np.ndarray) -> Population:
    """Writes `sub`'s entries `entries` back into `full` at positions `idx`."""
    return _scatter(full, jnp.asarray(idx), sub, jnp.asarray(entries))


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


def layout(members: np.ndarray, size: int, devices: int = 1, spread: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Where `members` (positions) go in a population of `size` sharded over `devices` in equal
    contiguous blocks: (pos, real), pos[i] the position of entry i (padding: a copy of the first
    member), real[i] whether it is a member. `spread` deals the members round-robin to the devices,
    each block's members first, so every device has the same share of the work; otherwise they
    fill the entries in order (padding at the end)."""
    members = np.asarray(members, np.int64)
    if size % devices or members.size > size:
        raise ValueError(f"{members.size} members do not fit a population of {size} on {devices} devices")
    if spread and devices > 1:
        j = np.arange(members.size)
        entries = (j % devices) * (size // devices) + j // devices
    else:
        entries = np.arange(members.size)
    pos = np.full(size, members[0], np.int64)
    pos[entries] = members
    real = np.zeros(size, bool)
    real[entries] = True
    return pos, real


def pack(full: Population, pos: np.ndarray, real: np.ndarray) -> Population:
    """The population of `full`'s members at positions `pos` (a `layout`), the entries that are
    not `real` marked PADDING."""
    sub = gather_members(full, pos)
    return sub.replace(status=jnp.where(jnp.asarray(real), sub.status, population.PADDING))


def live_chunks(busy: np.ndarray, devices: int, chunk: int) -> int:
    """The member chunks the busiest device computes when the entries `busy` (bool[size]) train:
    with idle chunks skipped, a step's time on the host."""
    per_chunk = np.asarray(busy).reshape(devices, -1, chunk).any(axis=-1)
    return int(per_chunk.sum(axis=-1).max())
