"""How a function of one member runs over K: `lax.map` over chunks of vmapped members (one chunk
of K: a single vmap; chunks of 1: a loop over members), idle chunks skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lrlab.engine.config import EngineConfig

PRIOR_CHUNK_WEIGHTS = 1 << 18  # the prior: at most about this many weights per vmapped chunk,
PRIOR_MAX_CHUNK = 4  # and between 1 and this many members
# Without convolutions (matmuls batch well under vmap) the budget is larger: benchmarks/own_model.py's
# MLP (269k weights) at K=8 on 2 devices took 1.43-1.84 ms a member-step at 4 members a vmap, 2.2-2.7
# at 2 (benchmarks/results/own_model-candidates-cpu.json).
PRIOR_CHUNK_WEIGHTS_NO_CONV = 1 << 21


def member_chunk_size(requested: int, k: int, weights_per_member: int, chunk_weights: int = PRIOR_CHUNK_WEIGHTS) -> int:
    """Members vmapped together: the largest divisor of k not above `requested`, or, when 0, the
    prior: about `chunk_weights` (2^18) weights per chunk, 1 to 4 members (on a 2-core CPU a wider
    vmap of a larger model ran slower: benchmarks/own_model.py, member_chunking.py). A run large enough to measure
    chooses its own (`lowering.choose`), whatever the backend."""
    target = requested or min(PRIOR_MAX_CHUNK, max(1, chunk_weights // max(weights_per_member, 1)))
    return max(d for d in range(1, min(target, k) + 1) if k % d == 0)


def members_and_chunk(cfg: EngineConfig, params_K: Any, per_device: int | None = None) -> tuple[int, int]:
    """(members, members per vmap chunk) of the member loop over `params_K`; `per_device`: the
    members one device's loop runs when params_K is the whole population (the host's view)."""
    leaves = jax.tree_util.tree_leaves(params_K)
    k = leaves[0].shape[0]
    loop_k = per_device if per_device is not None else k
    return loop_k, member_chunk_size(cfg.member_chunk, loop_k, sum(x.size for x in leaves) // k)


def member_map(fn: Callable, in_axes: tuple, k: int, chunk: int, busy: int | None = None,
               idle: Callable | None = None) -> Callable:
    """vmap of `fn` over k members, as a `lax.map` over chunks of `chunk` vmapped members.

    Arguments with in_axes None are shared by all members (broadcast, never copied). With `busy`
    (the index of a per-member bool argument), a chunk with no busy member skips `fn` (a
    `lax.cond`, so its work is not done) and gives `idle`'s outputs instead (default: zeros):
    finished and padding members then cost only their chunk's copy, and the loop compacts the
    running ones into as few chunks as it can (loop.Loop.repack_running) without recompiling.
    Chunks of one member run `fn` itself, not a vmap of one: XLA:CPU runs a matmul with a batch
    dimension of 1 markedly slower than the plain matmul (benchmarks/own_model.py).
    """
    one = chunk == 1
    vfn = fn if one else jax.vmap(fn, in_axes=in_axes)
    if chunk >= k and not one:
        return vfn
    if one:  # members one at a time: no member axis inside
        split = lambda x: x  # noqa: E731
        merge = lambda x: x  # noqa: E731
        vidle = idle
    else:
        split = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k // chunk, chunk) + a.shape[1:]), x)  # noqa: E731
        merge = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k,) + a.shape[2:]), x)  # noqa: E731
        vidle = jax.vmap(idle, in_axes=in_axes) if idle is not None else None

    def one_chunk(args, chunk_args):
        it = iter(chunk_args)
        call = [next(it) if ax == 0 else x for x, ax in zip(args, in_axes)]
        if busy is None:
            return vfn(*call)
        skip = vidle if vidle is not None else (lambda *a: jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(vfn, *a)))
        return jax.lax.cond(jnp.any(call[busy]), vfn, skip, *call)

    def mapped(*args):
        per_member = [split(x) for x, ax in zip(args, in_axes) if ax == 0]
        if one and k == 1:  # a single member: no loop either
            first = [jax.tree_util.tree_map(lambda a: a[0], x) for x in per_member]
            return jax.tree_util.tree_map(lambda a: a[None], one_chunk(args, first))
        return merge(jax.lax.map(lambda chunk_args: one_chunk(args, chunk_args), per_member))

    return mapped
