"""Shared by the benchmarks: time one population's compiled training segment."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lrlab import optimizers
from lrlab import population as pop_lib


def time_adam_segment(cfg: pop_lib.EngineConfig, k: int, data: pop_lib.TrainData, steps: int,
                      repeats: int) -> tuple[float, float, Any]:
    """(compile seconds, median seconds per segment, compiled program) for K Adam members.

    The target (2.0) is out of reach, so every member trains through every timed segment.
    """
    hparams = optimizers.population_hparams("adam", np.geomspace(1e-4, 1e-1, k))
    pop = pop_lib.init_population(cfg, hparams, data.train_images.shape[1:], 0)
    args = (jnp.int32(0), jax.random.PRNGKey(1), jnp.float32(2.0), jnp.int32(10**9))
    start = time.perf_counter()
    compiled = pop_lib.make_segment_fn(cfg, steps).lower(pop, data, *args).compile()
    compile_s = time.perf_counter() - start
    pop, _ = compiled(pop, data, *args)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pop, acc = compiled(pop, data, *args)
        jax.block_until_ready((pop, acc))
        times.append(time.perf_counter() - start)
    return compile_s, statistics.median(times), compiled
