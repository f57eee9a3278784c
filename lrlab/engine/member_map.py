"""How a function of one member runs over K: `lax.map` over chunks of vmapped members (one chunk
of K: a single vmap; chunks of 1: a loop over members), idle chunks skipped.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lrlab.engine.config import EngineConfig


def member_chunk_size(requested: int, k: int) -> int:
    """Members vmapped together: the largest divisor of k not above `requested`, or 1 (the prior,
    a loop over members) when it is 0. A run large enough to measure chooses its own
    (`lowering.choose`), whatever the backend."""
    return max(d for d in range(1, min(requested or 1, k) + 1) if k % d == 0)


def members_and_chunk(cfg: EngineConfig, params_K: Any, per_device: int | None = None) -> tuple[int, int]:
    """(members, members per vmap chunk) of the member loop over `params_K`; `per_device`: the
    members one device's loop runs when params_K is the whole population (the host's view)."""
    k = jax.tree_util.tree_leaves(params_K)[0].shape[0]
    loop_k = per_device if per_device is not None else k
    return loop_k, member_chunk_size(cfg.member_chunk, loop_k)


def member_map(fn: Callable, in_axes: tuple, k: int, chunk: int, busy: int | None = None,
               idle: Callable | None = None) -> Callable:
    """vmap of `fn` over k members, as a `lax.map` over chunks of `chunk` vmapped members.

    Arguments with in_axes None are shared by all members (broadcast, never copied). With `busy`
    (the index of a per-member bool argument), a chunk with no busy member skips `fn` (a
    `lax.cond`, so its work is not done) and gives `idle`'s outputs instead (default: zeros):
    finished and padding members then cost only their chunk's copy, and the loop compacts the
    running ones into as few chunks as it can (runner.Loop.repack_running) without recompiling.
    """
    vfn = jax.vmap(fn, in_axes=in_axes)
    if chunk >= k:
        return vfn
    split = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k // chunk, chunk) + a.shape[1:]), x)
    merge = lambda x: jax.tree_util.tree_map(lambda a: a.reshape((k,) + a.shape[2:]), x)
    vidle = jax.vmap(idle, in_axes=in_axes) if idle is not None else None

    def mapped(*args):
        per_member = [split(x) for x, ax in zip(args, in_axes) if ax == 0]

        def one_chunk(chunk_args):
            it = iter(chunk_args)
            call = [next(it) if ax == 0 else x for x, ax in zip(args, in_axes)]
            if busy is None:
                return vfn(*call)
            skip = vidle if vidle is not None else (lambda *a: jax.tree_util.tree_map(
                lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(vfn, *a)))
            return jax.lax.cond(jnp.any(call[busy]), vfn, skip, *call)

        return merge(jax.lax.map(one_chunk, per_member))

    return mapped
