"""The devices a host has: the CPU devices it is split into (one rule for the command line and for
Python), and arrays brought back from them to every host.

XLA:CPU runs one device's program on all cores, but a population sharded over one device per core
trains faster on a small host (benchmarks/cpu_devices.py). The split must be set before JAX
starts: the command line does it from --cpu_devices, and Python calls `use_cpu_devices()` first.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

AUTO = "auto"
MAX_CPU_DEVICES_PER_CORE = 8  # beyond this the CPU client gains nothing (and fails at a few thousand)


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0))


def cpu_device_count(value: str | int = AUTO, distributed: bool = False) -> int:
    """The CPU devices for `value`: a number (0 counts as 1), or "auto": one per core this process may
    use, one per process in a multi-process run (each process is already one of the cores' workers).
    Raises ValueError for more than MAX_CPU_DEVICES_PER_CORE per core (its text follows the count asked for)."""
    if str(value) == AUTO:
        return 1 if distributed else cores()
    count = int(value)
    if count > MAX_CPU_DEVICES_PER_CORE * cores():
        raise ValueError(f"more than {MAX_CPU_DEVICES_PER_CORE} per core of the {cores()} this process may use "
                         "(auto: one per core)")
    return max(count, 1)


def use_cpu_devices(value: str | int = AUTO, distributed: bool = False) -> int:
    """Splits this host's CPU into `cpu_device_count(value)` JAX devices, as the command line's
    --cpu_devices does; call it before any JAX computation. Returns the count. Once JAX has started
    its devices stay: "auto" then keeps them, and an explicit count raises ValueError."""
    count = cpu_device_count(value, distributed)
    if count > 1:
        try:
            jax.config.update("jax_num_cpu_devices", count)
        except RuntimeError:
            if str(value) != AUTO:
                raise ValueError("JAX has already started in this process") from None
            return jax.local_device_count()
    return count


def single_device_hint() -> str | None:
    """A line for a run on one CPU device of a host with several cores (the command line's default
    would use one per core), or None."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1 or jax.local_device_count() > 1 or cores() < 2:
        return None
    return (f"training on 1 CPU device of {cores()} cores: call lrlab.use_cpu_devices() before any JAX computation "
            "to use one per core, as the command line does")


def to_host(tree: Any) -> Any:
    """A pytree of (possibly sharded, possibly multi-host) arrays as numpy arrays on every host."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree_util.tree_map(one, tree)
