"""Shared fixtures: a small slice of the shipped MNIST as a task, tiny engine configurations (CPU
JAX), and run_together for command-line tests."""

import functools
import os
import subprocess
import tempfile

# One persistent XLA compilation cache for this test session, inherited by the xdist workers and by
# every command the tests start: the many runs of the same small programs compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lrlab-tests-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The suite also runs on a GPU (benchmarks/accelerator.py); none of this changes anything on a CPU. The
# xdist workers and the commands they start share one GPU, so none preallocates its memory; float32
# matmuls and convolutions run at full float32 precision, not TF32 (tests compare formulations and
# plain-Flax references in float32); reductions are deterministic (resumed and repeated runs must equal).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
if "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lrlab.engine import (
    config,
    loop,
    population,  # noqa: E402
)
from lrlab.optim import members, optimizers
from lrlab.task import (
    augment,
    classification,
    models,
    sampling,  # noqa: E402
    task,  # noqa: E402
)
from lrlab.task import mnist as mnist_lib
from lrlab.task import target as target_lib

N_TRAIN, N_EVAL = 1000, 200  # the slice: 1,000 training images, the first 200 of them the evaluation set


@functools.cache
def load_mnist():
    return mnist_lib.load_mnist()


@pytest.fixture(scope="session")
def mnist():
    return load_mnist()


def image_task(model=None, target=1.0, n=N_TRAIN):
    """small_cnn (or `model`) on the first `n` MNIST training images, a 97%-style accuracy target."""
    ds = load_mnist()
    train = {"image": ds.train_images[:n], "label": ds.train_labels[:n]}
    return classification.classification(model or models.make_model("small_cnn"), train, inputs=classification.image_inputs,
                                target=target_lib.Target("accuracy", target),
                                test={"image": ds.test_images[:500], "label": ds.test_labels[:500]},
                                augment=lambda key, x: augment.augment_batch(key, x, 2.0, 10.0), name="mnist-slice")


@pytest.fixture(scope="session")
def small_data():
    """The slice on the device, its first 200 images the evaluation set (chunks of 100)."""
    train = image_task().train
    return population.make_train_data(train, task.take(train, np.arange(N_EVAL)), eval_chunk=100)


def make_cfg(optimizer="adam", batch_size=32, model=None, target=1.0, **kw):
    return config.EngineConfig(task=image_task(model, target), optimizer=optimizers.get(optimizer),
                                batch_size=batch_size, eval_chunk=100, **kw)


def hparams(optimizer, lrs):
    return members.population_hparams(optimizer, lrs)


def run_population(cfg, lrs, data, budget, seed=0, repack=True, programs=None, **train_kw):
    """Trains one population of `cfg` at `lrs`; pass `programs` to reuse compilations across runs."""
    pop = population.init_population(cfg, hparams(cfg.optimizer, lrs), seed)
    return loop.train(pop, data, budget, sampling.data_key(seed), programs or loop.Programs(cfg),
                        repack=repack, progress=False, **train_kw)


def run_together(commands, timeout=600):
    """Starts the commands (name -> argv) at once, so their start-ups overlap; returns name ->
    CompletedProcess."""
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, cmd in commands.items()}
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done
