"""Shared fixtures: a small slice of the shipped MNIST and tiny engine configurations (CPU JAX);
run_together for command-line tests."""

import subprocess

import jax
import numpy as np
import pytest

from lrlab import data as data_lib
from lrlab import optimizers
from lrlab import models
from lrlab import population as pop_lib
from lrlab import runner


@pytest.fixture(scope="session")
def mnist():
    return data_lib.load_mnist()


@pytest.fixture(scope="session")
def small_data(mnist):
    """1,000 training images on the device, 200 of them as the evaluation subset."""
    images, labels = mnist.train_images[:1000], mnist.train_labels[:1000]
    return pop_lib.make_train_data(images, labels, np.arange(200, dtype=np.int32), eval_chunk=100)


def make_cfg(optimizer="adam", batch_size=32, **kw):
    kw.setdefault("model", models.make_model("small_cnn"))
    return pop_lib.EngineConfig(optimizer=optimizer, batch_size=batch_size, eval_chunk=100, **kw)


def hparams(optimizer, lrs):
    return optimizers.population_hparams(optimizer, lrs)


def run_population(cfg, lrs, data, budget, seed=0, repack=True, programs=None):
    """Trains one population of `cfg` at `lrs`; pass `programs` to reuse compilations across runs."""
    pop = pop_lib.init_population(cfg, hparams(cfg.optimizer, lrs), (28, 28, 1), seed)
    return runner.train(pop, data, budget, jax.random.PRNGKey(seed + 1), programs or runner.Programs(cfg),
                        repack=repack, progress=False)


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
