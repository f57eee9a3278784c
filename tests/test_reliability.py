"""Reliability: a stop mid-interval resumes exactly, SIGTERM is honoured within seconds
whatever --eval_every is, a full disk is one line with the last checkpoint intact, and the
multi-process path (two CPU processes joined by jax.distributed) equals a single process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import hparams, make_cfg

from lrlab.engine import loop, population, stop
from lrlab.store import checkpoints
from lrlab.task import sampling

VALLEY = [sys.executable, "-m", "lrlab.experiments.lr_valley"]


class StopAfter:
    """A stop signal that is requested from its `n`-th check on (the runner checks after each chunk)."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    @property
    def requested(self):
        self.checks += 1
        return "SIGTERM" if self.checks >= self.n else None


def test_stop_between_evaluations_resumes_exactly(small_data, tmp_path, monkeypatch):
    """Chunks of one step (a stop check after every step): stopped at step 13 of an interval of 20,
    resumed from that checkpoint, the run equals the uninterrupted one."""
    monkeypatch.setattr(loop, "STOP_CHECK_SECONDS", 0.0)
    monkeypatch.setattr(loop, "PROBE_STEPS", 1)
    cfg = make_cfg("adam", target=0.5)
    budget = loop.Budget(max_steps=40, eval_every=20)
    lrs = [1e-3, 3e-3, 1e-2]

    def run(**kw):
        pop = population.init_population(cfg, hparams("adam", lrs), 0)
        return loop.train(pop, small_data, budget, sampling.data_key(0), loop.Programs(cfg), progress=False, **kw)

    reference = run()
    manager = checkpoints.RunCheckpoints(tmp_path / "ckpt", {"run": "test"}, every=1, notify=lambda line: None)
    with pytest.raises(stop.Interrupted) as stopped:
        run(checkpoints=manager, stop=StopAfter(13))
    assert stopped.value.step == 13  # not an evaluation step: the stop did not wait for the interval
    lines = []
    resumed = run(checkpoints=checkpoints.RunCheckpoints(tmp_path / "ckpt", {"run": "test"}, every=1,
                                                      notify=lines.append))
    assert lines == [f"resuming from step 13 (checkpoint {tmp_path / 'ckpt' / '13'})"]
    np.testing.assert_array_equal(resumed.final.status, reference.final.status)
    np.testing.assert_array_equal(resumed.final.steps_to_target, reference.final.steps_to_target)
    for a, b in zip(resumed.curves, reference.curves):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)  # the interval loss spans the stop
        np.testing.assert_allclose(a["train_accuracy"], b["train_accuracy"])


class Output:
    """Collects a process's stream in a thread (tqdm writes without newlines)."""

    def __init__(self, stream):
        self.text = ""
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        while chunk := stream.read(1):
            self.text += chunk


def wait_for(condition, timeout, proc):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_with_a_long_eval_every_exits_within_seconds(tmp_path):
    """--eval_every=1000: SIGTERM once training has started exits 143 within 30 s (a preempted VM's
    notice) with a checkpoint between evaluations; before, it waited for the 1000-step segment."""
    workdir = tmp_path / "run"
    proc = subprocess.Popen([*VALLEY, "--optimizer=adam", "--num_lrs=24", "--max_steps=2000", "--eval_every=1000",
                             "--checkpoint_every=0", f"--workdir={workdir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = Output(proc.stderr)
    wait_for(lambda: re.search(r"\| *[1-9]\d*/2000", err.text), 300, proc)  # the bar has moved: training
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    took = time.time() - sent
    err.thread.join(timeout=5)
    assert proc.returncode == 128 + signal.SIGTERM, err.text[-2000:]
    assert took < 30, f"exit {took:.1f} s after SIGTERM"
    stopped = re.search(r"stopped by SIGTERM at step (\d+)", err.text)
    assert stopped and 0 < int(stopped.group(1)) < 1000
    assert (workdir / "checkpoints" / "adam" / stopped.group(1)).is_dir()


@pytest.mark.slow
def test_a_second_signal_exits_at_once(tmp_path):
    """Signals sent as the first program compiles (the main thread in XLA): the first is acknowledged
    at once, the second ends the process at once."""
    proc = subprocess.Popen([*VALLEY, "--optimizer=adam", "--num_lrs=24", "--max_steps=2000", "--eval_every=1000",
                             f"--workdir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    err, out = Output(proc.stderr), Output(proc.stdout)
    wait_for(lambda: "/2000" in err.text, 300, proc)  # the progress bar: inside the stop signal's reach
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "saving a checkpoint at the next stop check" in out.text, 30, proc)  # said at once
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert time.time() - sent < 5
    assert proc.returncode == 128 + signal.SIGINT, err.text[-2000:]


def mount_tmpfs(path, size):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line_and_resumable(tmp_path):
    """The disk fills while a run checkpoints every segment: one line, exit 1, and once space is
    freed the rerun resumes from the last intact checkpoint and finishes."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "64m")
    try:
        workdir = disk / "run"
        args = [*VALLEY, "--optimizer=adam", "--num_lrs=3", "--max_steps=400", "--eval_every=10",
                "--eval_examples=250", "--batch_size=32", "--checkpoint_every=1", "--noprogress",
                f"--workdir={workdir}"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        folder = workdir / "checkpoints" / "adam"
        wait_for(lambda: folder.exists() and any(p.name.isdigit() for p in folder.iterdir()), 300, proc)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # fill what is left
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (out, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "cannot write checkpoint" in err and "the previous checkpoint is intact" in err
        assert "space" in err.lower()
        assert "Traceback" not in out and "asyncio" not in out + err
        left = [p.name for p in folder.iterdir() if "tmp" in p.name or (p.name.isdigit() and not (p / "files.json").exists())]
        assert not left, left  # no partial step left behind
        filler.unlink()
        again = subprocess.run(args, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert "lrlab: resuming from step" in again.stdout
        summary = json.loads((workdir / "results.json").read_text())
        assert len(summary["members"]) == 3
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(args, workdir, count=2):
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return [subprocess.Popen([*args, f"--workdir={workdir}", f"--coordinator_address=localhost:{port}",
                              f"--num_processes={count}", f"--process_id={i}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for i in range(count)]


def compared(workdir):
    fields = ("optimizer", "learning_rate", "status", "steps_to_target", "steps_trained")
    rows = json.loads((workdir / "results.json").read_text())["members"]
    return [({k: m[k] for k in fields}, m["final_train_accuracy"]) for m in rows]


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_sigkill(tmp_path):
    """Two CPU processes joined through jax.distributed.initialize (one device each, K=3 padded to 4):
    the results equal a single process's; only process 0 writes them; SIGKILL of both mid-run,
    then a rerun of both, resumes and again equals the single process."""
    args = [*VALLEY, "--optimizer=adam", "--lrs=1e-3,1e-2,1", "--max_steps=200", "--eval_every=10",
            "--eval_examples=250", "--batch_size=32", "--checkpoint_every=1", "--noprogress"]
    single = subprocess.run([*args, f"--workdir={tmp_path / 'single'}"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})  # the backend of the two (on a GPU machine too)
    assert single.returncode == 0, single.stderr

    def check(workdir):
        for (a, acc_a), (b, acc_b) in zip(compared(workdir), compared(tmp_path / "single"), strict=True):
            assert a == b
            assert acc_a == pytest.approx(acc_b, abs=1 / 250 + 1e-6)  # sharded float sums: one example of 250

    together = tmp_path / "two"
    procs = start_processes(args, together)
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    assert f"saved results: {together / 'results.json'}" in outs[0][0]
    assert "process 1: process 0 wrote the results" in outs[1][0] and "saved results" not in outs[1][0]
    check(together)
    assert not list(together.glob(".write-test-*"))

    killed = tmp_path / "killed"
    procs = start_processes(args, killed)
    folder = killed / "checkpoints" / "adam"
    wait_for(lambda: folder.exists() and len([p for p in folder.iterdir() if p.name.isdigit()]) >= 2, 300, procs[0])
    for proc in procs:
        proc.kill()
        proc.wait()
    assert not (killed / "results.json").exists()
    procs = start_processes(args, killed)
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
        assert "lrlab: resuming from step" in out
    check(killed)


@pytest.mark.parametrize("differ", ["workdir", "max_steps"])
def test_processes_that_disagree_refuse_at_start_in_one_line(tmp_path, differ):
    """Two processes of one run given another --workdir (or --max_steps) each: both refuse at start,
    in one line naming the flag, and nothing is written (they used to hang after a checkpoint)."""
    args = [*VALLEY, "--optimizer=adam", "--lrs=1e-3,1e-2", "--max_steps=100", "--noprogress"]
    port = free_port()
    procs = []
    for i in range(2):
        mine = [f"--workdir={tmp_path / ('w' + str(i) if differ == 'workdir' else 'w')}"]
        mine += [f"--max_steps={100 + 50 * i}"] if differ == "max_steps" else []
        procs.append(subprocess.Popen([*args, *mine, f"--coordinator_address=localhost:{port}", "--num_processes=2",
                                       f"--process_id={i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "JAX_PLATFORMS": "cpu"}))
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, (out, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--{differ} differ between the 2 processes" in err
    assert not list(tmp_path.iterdir())
