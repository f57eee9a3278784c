"""Will a population fit? A count of its state before anything is allocated or compiled.

What a population holds on the devices, per member: the parameters, the optimizer state, the
model state, the early-stopping copy of the variables, and the gradients and updates of a step
(counted as two more copies of the parameters); and, once, the data. Activations come on top
(they depend on the lowering and the member chunks), so the estimate is a lower bound: a run it
refuses cannot fit, and it says the largest population that could.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from lrlab.engine import config, population

HEADROOM = 0.9  # the share of the devices' memory a population may plan to use


class TooLarge(ValueError):
    """The population's state alone exceeds the devices' memory (the message gives both)."""


def tree_bytes(tree: Any) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(tree)))


def member_bytes(cfg: config.EngineConfig) -> int:
    """Bytes of one member's state (shapes only, nothing allocated or computed)."""
    hparams = {name: np.ones(1, np.float32) for name in cfg.optimizer.hparams}
    pop = jax.eval_shape(lambda: population.init_population(cfg, hparams, 0))
    params = tree_bytes(pop.params)
    return tree_bytes(pop) + 2 * params  # + a step's gradients and updates


def device_memory(devices: list[jax.Device]) -> tuple[int, str]:
    """The memory the devices offer (bytes) and how it was read."""
    stats = [getattr(d, "memory_stats", lambda: None)() for d in devices]
    if all(s and s.get("bytes_limit") for s in stats):
        return int(sum(s["bytes_limit"] for s in stats)), f"{len(devices)} x {devices[0].device_kind}"
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info["MemAvailable"], "host memory available"
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "host memory"


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check(cfg: config.EngineConfig, members: int, data_bytes: int, devices: list[jax.Device] | None = None) -> None:
    """TooLarge when `members` members and the data cannot fit in the devices' memory (this process's
    devices and its share of the members, on a multi-process run)."""
    per = member_bytes(cfg)
    local = devices or jax.local_devices()
    members = -(-members * len(local) // (len(devices) if devices else jax.device_count()))
    need = data_bytes + members * per
    available, where = device_memory(local)
    budget = HEADROOM * available
    if need > budget:
        fits = max(0, int((budget - data_bytes) // per))
        raise TooLarge(f"{members} members need at least {gib(need)} ({gib(per)} of state each, "
                       f"{gib(data_bytes)} of data) and the devices offer {gib(available)} ({where}): "
                       + (f"at most {fits} members fit" if fits else "not even one member fits"))
