"""Wall time of the study's sweep (6 optimizers x 48 rates to 97%), end to end, with the stage split.

  python benchmarks/study_valley.py [--model=small_cnn] [--max_steps=600] [--repack=true,false]
  python benchmarks/study_valley.py --repack=true --roots=.,../old-checkout --rounds=2   # this code vs another

Runs `python -m lrlab.experiments.lr_valley --flagfile=experiments/mack2018/lr_valley.flags` as a
separate process (so start-up, imports and every compilation count), once per --repack value and
checkout (--roots: each run with its own code and flagfile, in turn, --rounds times, so machine
drift falls on both alike; a flag a checkout does not define is left out), with the model and
step budget given here. Reports the process's wall time and its split (start-up,
data, compile / training / test evaluation / other set-up, saving), the steps trained, and how many
members were still running at the budget. Prints a table and writes
benchmarks/results/study_valley-<backend>.json.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from _common import write_results
from absl import app, flags

flags.DEFINE_string("model", "small_cnn", "Model (the study's network is tutorial_cnn).")
flags.DEFINE_integer("max_steps", 600, "Step budget per member (the flagfile's is 6000).")
flags.DEFINE_list("repack", ["true", "false"], "Re-pack finished members out of the population: values to compare.")
flags.DEFINE_string("optimizer", "all", "Optimizers (default: the study's six).")
flags.DEFINE_float("max_seconds", None, "Also stop each optimizer's population after this many training seconds.")
flags.DEFINE_list("roots", ["."], "Checkouts to run (paths; '.' is this one).")
flags.DEFINE_integer("rounds", 1, "Times to run each checkout and --repack value, interleaved.")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/study_valley-<backend>.json).")
FLAGS = flags.FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent


@functools.cache
def defined_flags(root: pathlib.Path) -> set[str]:
    """The flags lr_valley defines in the checkout at `root` (asked once per checkout)."""
    out = subprocess.run([sys.executable, "-m", "lrlab.experiments.lr_valley", "--helpfull"], cwd=root,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}).stdout
    return set(re.findall(r"^\s+--(?:\[no\])?(\w+)", out, re.M))


def commit_of(root: pathlib.Path) -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip()


def run_study(repack: str, workdir: pathlib.Path, root: pathlib.Path = ROOT) -> dict:
    """One end-to-end sweep in a fresh process, with the code at `root`; its wall time and
    results.json timing."""
    known = defined_flags(root)
    wanted = {"model": FLAGS.model,
              "width": 1, "protocol": "subset",  # the flagfile's study width and rule are not what this measures
              "max_steps": FLAGS.max_steps, "optimizer": FLAGS.optimizer, "repack": repack,
              "max_seconds": f"{FLAGS.max_seconds:g}" if FLAGS.max_seconds else None}
    cmd = [sys.executable, "-m", "lrlab.experiments.lr_valley",
           f"--flagfile={root / 'experiments' / 'mack2018' / 'lr_valley.flags'}",
           *[f"--{k}={v}" for k, v in wanted.items() if v is not None and k in known],
           f"--workdir={workdir}", "--noprogress"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(root)})
    wall = time.perf_counter() - start
    summary = json.loads((workdir / "results.json").read_text())
    timing = summary["timing"]
    members = summary["members"]
    compile_s = sum(t["compile_seconds"] for t in timing.values())
    train_s = sum(t["train_seconds"] for t in timing.values())
    test_s = sum(t["test_eval_seconds"] for t in timing.values())
    return {
        "repack": repack == "true", "root": str(root), "commit": commit_of(root), "command": " ".join(cmd),
        "wall_seconds": wall,
        "startup_seconds": wall - summary["wall_seconds"],
        "stage_seconds": summary["stage_seconds"],
        "compile_seconds": compile_s, "train_seconds": train_s, "test_eval_seconds": test_s,
        # population set-up (initial parameters, their compilation) and result records
        "sweep_other_seconds": summary["stage_seconds"]["sweep"] - compile_s - train_s - test_s,
        # results, Orbax, figures and views: the run's own time outside loading the data and the sweep
        "save_seconds": summary["wall_seconds"] - summary["stage_seconds"]["load_data"]
        - summary["stage_seconds"]["sweep"],
        "per_optimizer": timing,
        "members": len(members),
        "member_steps_trained": sum(m["steps_trained"] for m in members),
        "statuses": {s: sum(m["status"] == s for m in members)
                     for s in ("reached", "diverged", "exhausted", *sorted({m["status"] for m in members}))},
    }


def main(argv):
    del argv
    rows = []
    print(f"{'commit':<8} {'repack':<7} {'wall s':>8} {'startup':>8} {'data':>6} {'compile':>8} {'train':>8} "
          f"{'test eval':>9} {'other':>6} {'save':>6} {'member-steps':>13} {'reached/diverged/exhausted/retired':>35}")
    for _, root, repack in itertools.product(range(FLAGS.rounds), FLAGS.roots, FLAGS.repack):
        with tempfile.TemporaryDirectory() as tmp:
            r = run_study(repack, pathlib.Path(tmp) / "study", (ROOT / root).resolve())
        rows.append(r)
        st, s = r["stage_seconds"], r["statuses"]
        print(f"{r['commit']:<8} {repack:<7} {r['wall_seconds']:>8.1f} {r['startup_seconds']:>8.1f} "
              f"{st['load_data']:>6.1f} {r['compile_seconds']:>8.1f} {r['train_seconds']:>8.1f} "
              f"{r['test_eval_seconds']:>9.1f} {r['sweep_other_seconds']:>6.1f} {r['save_seconds']:>6.1f} "
              f"{r['member_steps_trained']:>13,} {s['reached']:>9}/{s['diverged']}/{s['exhausted']}/"
              f"{s.get('retired', 0)}", flush=True)
    means = {}
    for r in rows:
        means.setdefault((r["commit"], r["repack"]), []).append(r["wall_seconds"])
    means = {key: sum(v) / len(v) for key, v in means.items()}
    first = next(iter(means.values()))
    for (commit, repack), wall in means.items():
        print(f"{commit} repack={repack}: mean wall {wall:.1f} s; the first row's / this: {first / wall:.2f}x")
    path = write_results("study_valley", {"model": FLAGS.model, "max_steps": FLAGS.max_steps,
                                          "max_seconds": FLAGS.max_seconds, "rows": rows,
                                          "mean_wall_seconds": {f"{c} repack={p}": w for (c, p), w in means.items()}},
                         FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
