"""Two checkouts of lrlab side by side: the same benchmark run alternately in each, medians compared.

  git worktree add /tmp/lrlab-old <commit>
  python benchmarks/versions.py --old=/tmp/lrlab-old [--rounds=3] [--args="--models=small_cnn --members=48"]

Each round runs `benchmarks/population_vs_sequential.py` once in the old checkout and once in this
one (each with its own lrlab first on PYTHONPATH, each writing its JSON to a temporary file), so
the two see the same drift of a shared machine. Reports the population's model-steps per second of
each, and the ratio new / old, per (model, K); writes benchmarks/results/versions-<backend>.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import tempfile

import jax
from _common import write_results
from absl import app, flags

flags.DEFINE_string("old", None, "The other checkout (a git worktree of an earlier commit).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds (one run of each checkout per round).")
flags.DEFINE_string("args", "--models=small_cnn --members=48 --repeats=3",
                    "Arguments of population_vs_sequential.py in both checkouts.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/versions-<backend>.json).")
flags.mark_flag_as_required("old")
FLAGS = flags.FLAGS

NEW = pathlib.Path(__file__).resolve().parent.parent


def run_once(root: pathlib.Path, args: list[str]) -> list[dict]:
    """population_vs_sequential.py of checkout `root` with its own lrlab; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "rows.json"
        env = {**os.environ, "PYTHONPATH": str(root)}
        subprocess.run([sys.executable, str(root / "benchmarks" / "population_vs_sequential.py"), *args,
                        f"--out={out}"], cwd=root / "benchmarks", env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return json.loads(out.read_text())["rows"]


def commit(root: pathlib.Path) -> str:
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def main(argv):
    del argv
    old = pathlib.Path(FLAGS.old).resolve()
    args = shlex.split(FLAGS.args)
    measured: dict[str, dict[tuple, list[float]]] = {"old": {}, "new": {}}
    for r in range(FLAGS.rounds):
        for label, root in (("old", old), ("new", NEW)):
            for row in run_once(root, args):
                if "skipped" not in row:
                    key = (row["model"], row["members"])
                    measured[label].setdefault(key, []).append(row["population_model_steps_per_s"])
        print(f"round {r + 1}/{FLAGS.rounds} done", flush=True)
    rows = []
    print(f"population_vs_sequential {FLAGS.args}; old {commit(old)} vs new {commit(NEW)}, {FLAGS.rounds} "
          f"alternating rounds; {jax.default_backend()}")
    print(f"{'model':<13} {'K':>4} {'old steps/s':>12} {'new steps/s':>12} {'new / old':>10}  (each round's)")
    for key in measured["new"]:
        o, n = statistics.median(measured["old"][key]), statistics.median(measured["new"][key])
        rows.append({"model": key[0], "members": key[1], "old_model_steps_per_s": measured["old"][key],
                     "new_model_steps_per_s": measured["new"][key], "old_median": o, "new_median": n,
                     "ratio": n / o})
        each = ", ".join(f"{b / a:.2f}" for a, b in zip(measured["old"][key], measured["new"][key]))
        print(f"{key[0]:<13} {key[1]:>4} {o:>12.1f} {n:>12.1f} {n / o:>9.2f}x  ({each})")
    path = write_results("versions", {"old": commit(old), "new": commit(NEW), "args": FLAGS.args,
                                      "rounds": FLAGS.rounds, "rows": rows}, FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
