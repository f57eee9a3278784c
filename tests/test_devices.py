"""One rule for the CPU devices, from the command line and from Python (engine/devices.py)."""

import os
import subprocess
import sys

import jax
import pytest

from lrlab.engine import devices


def test_auto_is_one_per_core_and_one_per_process_when_distributed():
    assert devices.cpu_device_count("auto", distributed=False) == len(os.sched_getaffinity(0))
    assert devices.cpu_device_count("auto", distributed=True) == 1
    assert devices.cpu_device_count("0") == 1 and devices.cpu_device_count(3, distributed=True) == 3


def test_too_many_per_core_is_one_line():
    with pytest.raises(ValueError, match="more than 8 per core"):
        devices.cpu_device_count(8 * devices.cores() + 1)


def test_an_explicit_count_after_jax_started_is_refused():
    jax.devices()
    other = jax.local_device_count() + 1
    with pytest.raises(ValueError, match="JAX has already started"):
        devices.use_cpu_devices(other)


def test_python_gets_the_command_lines_default_devices():
    """`use_cpu_devices()` before JAX starts gives a fresh process as many devices as the command line."""
    code = ("import lrlab, jax; lrlab.use_cpu_devices(); "
            "print(jax.local_device_count(), lrlab.engine.devices.single_device_hint())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(devices.cpu_device_count()) and out.stdout.split()[1] == "None"


@pytest.mark.skipif(devices.cores() < 2 or jax.default_backend() != "cpu", reason="needs a CPU host of 2+ cores")
def test_one_device_on_a_multicore_host_says_how_to_split_it():
    code = "import lrlab.engine.devices as d; print(d.single_device_hint())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert "call lrlab.use_cpu_devices()" in out.stdout
