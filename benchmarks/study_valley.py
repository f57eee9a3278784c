"""Wall time of the study's sweep (6 optimizers x 48 rates to 97%), end to end, with the stage split.

  python benchmarks/study_valley.py [--model=small_cnn] [--max_steps=600] [--repack=true,false]

Runs `python -m lrlab.experiments.lr_valley --flagfile=experiments/mack2018/lr_valley.flags` as a
separate process (so start-up, imports and every compilation count), once per --repack value,
with the model and step budget given here. Reports the process's wall time and its split (start-up,
data, compile / training / test evaluation / other set-up, saving), the steps trained, and how many
members were still running at the budget. Prints a table and writes
benchmarks/results/study_valley-<backend>.json.
"""

from __future__ import annotations

import json
import pathlib
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
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/study_valley-<backend>.json).")
FLAGS = flags.FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_study(repack: str, workdir: pathlib.Path) -> dict:
    """One end-to-end sweep in a fresh process; its wall time and results.json timing."""
    cmd = [sys.executable, "-m", "lrlab.experiments.lr_valley",
           f"--flagfile={ROOT / 'experiments' / 'mack2018' / 'lr_valley.flags'}", f"--model={FLAGS.model}",
           "--width=1", "--protocol=subset",  # the flagfile's study width and rule are not what this measures
           f"--max_steps={FLAGS.max_steps}", f"--optimizer={FLAGS.optimizer}", f"--repack={repack}",
           f"--workdir={workdir}", "--noprogress"]
    if FLAGS.max_seconds:
        cmd.append(f"--max_seconds={FLAGS.max_seconds:g}")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    summary = json.loads((workdir / "results.json").read_text())
    timing = summary["timing"]
    members = summary["members"]
    compile_s = sum(t["compile_seconds"] for t in timing.values())
    train_s = sum(t["train_seconds"] for t in timing.values())
    test_s = sum(t["test_eval_seconds"] for t in timing.values())
    return {
        "repack": repack == "true", "command": " ".join(cmd), "wall_seconds": wall,
        "startup_seconds": wall - summary["wall_seconds"],
        "stage_seconds": summary["stage_seconds"],
        "compile_seconds": compile_s, "train_seconds": train_s, "test_eval_seconds": test_s,
        # population set-up (initial parameters, their compilation) and result records
        "sweep_other_seconds": summary["stage_seconds"]["sweep"] - compile_s - train_s - test_s,
        # results, Orbax and figures: the run's own time outside loading the data and the sweep
        "save_seconds": summary["wall_seconds"] - sum(summary["stage_seconds"].values()),
        "per_optimizer": timing,
        "members": len(members),
        "member_steps_trained": sum(m["steps_trained"] for m in members),
        "statuses": {s: sum(m["status"] == s for m in members)
                     for s in ("reached", "diverged", "exhausted", *sorted({m["status"] for m in members}))},
    }


def main(argv):
    del argv
    rows = []
    print(f"{'repack':<7} {'wall s':>8} {'startup':>8} {'data':>6} {'compile':>8} {'train':>8} "
          f"{'test eval':>9} {'other':>6} {'save':>6} {'member-steps':>13} {'reached/diverged/exhausted':>27}")
    for repack in FLAGS.repack:
        with tempfile.TemporaryDirectory() as tmp:
            r = run_study(repack, pathlib.Path(tmp) / "study")
        rows.append(r)
        st, s = r["stage_seconds"], r["statuses"]
        print(f"{repack:<7} {r['wall_seconds']:>8.1f} {r['startup_seconds']:>8.1f} {st['load_data']:>6.1f} "
              f"{r['compile_seconds']:>8.1f} {r['train_seconds']:>8.1f} {r['test_eval_seconds']:>9.1f} "
              f"{r['sweep_other_seconds']:>6.1f} {r['save_seconds']:>6.1f} {r['member_steps_trained']:>13,} "
              f"{s['reached']:>9}/{s['diverged']}/{s['exhausted']}", flush=True)
    path = write_results("study_valley", {"model": FLAGS.model, "max_steps": FLAGS.max_steps,
                                          "max_seconds": FLAGS.max_seconds, "rows": rows},
                         FLAGS.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
