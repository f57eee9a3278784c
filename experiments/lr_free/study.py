"""The lr_free study: on each task, `python -m lrlab.experiments.lr_free` (the tuned valleys of Adam
and SGD with momentum beside every learning-rate-free method at its default and over its multiplier
sweep), then the verdicts and the performance profile across tasks.

    python experiments/lr_free/study.py --root=runs/lr_free_study --seeds=1

Writes experiments/lr_free/results/<task>.json.gz (each run's results.json), then, from every task's
saved results, the figures in experiments/lr_free/figures/ (each task's valleys, and the profile
across tasks) and prints the verdict table of REPORT.md.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from lrlab.store import plots  # noqa: E402
from lrlab.studies import lr_free  # noqa: E402

HERE = pathlib.Path(__file__).parent
flags.DEFINE_string("root", "runs/lr_free_study", "Where the runs' workdirs go.")
flags.DEFINE_integer("seeds", 1, "--seeds of every run.")
flags.DEFINE_list("tasks", None, "Only these tasks (default: all).")
flags.DEFINE_bool("figures_only", False, "Only redraw the figures and the table from the saved results (their "
                  "per-method rows recomputed from the members).")
FLAGS = flags.FLAGS

GRID = ["--lr_min=1e-6", "--lr_max=100", "--num_lrs=48", "--multiplier_min=1e-3", "--multiplier_max=1e3",
        "--multipliers_per_decade=1"]
PROFILE_TITLE = "Performance profile across {} tasks (LR-free at their defaults, tuned at their best rates)"
TASKS = {
    "small_cnn": ["--model=small_cnn", "--batch_size=100", "--target_accuracy=0.97", "--max_steps=3000",
                  "--eval_every=50", "--eval_examples=2000"],
    "tutorial_cnn": ["--model=tutorial_cnn", "--width=1", "--batch_size=100", "--target_accuracy=0.95",
                     "--max_steps=600", "--eval_every=50", "--eval_examples=1000"],
    "mnist_cnn": ["--task=lrlab.examples.mnist_cnn:task", "--max_steps=1000", "--eval_every=50"],
    "char_lm": ["--task=lrlab.examples.char_lm:task", "--max_steps=1500", "--eval_every=100"],
}


def results_file(name: str) -> pathlib.Path:
    """A task's saved results (its run's results.json, gzipped, with the study's command and wall)."""
    return HERE / "results" / f"{name}.json.gz"


def run_task(name: str, root: pathlib.Path) -> None:
    """Runs one task's lr_free experiment in its workdir under `root` and saves its results."""
    workdir = root / name
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "lrlab.experiments.lr_free", *TASKS[name], *GRID, f"--seeds={FLAGS.seeds}",
            f"--workdir={workdir}", "--noprogress"]
    start = time.perf_counter()
    with open(root / f"{name}.log", "w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{name} failed: see {root / f'{name}.log'}")
    summary = json.loads((workdir / "results.json").read_text())
    summary["study"] = {"command": " ".join(["python", "-m", "lrlab.experiments.lr_free", *args[3:]]),
                        "wall_seconds": time.perf_counter() - start}
    with gzip.open(results_file(name), "wt") as f:
        json.dump(summary, f)
    print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)


def main(argv: list[str]) -> None:
    del argv
    for folder in ("results", "figures"):
        (HERE / folder).mkdir(exist_ok=True)
    if not FLAGS.figures_only:
        for name in FLAGS.tasks or TASKS:
            run_task(name, pathlib.Path(FLAGS.root))
    profile, verdicts = {}, {}  # over every task with saved results (with --figures_only, --tasks names them)
    for name in (FLAGS.figures_only and FLAGS.tasks) or [n for n in TASKS if results_file(n).exists()]:
        with gzip.open(results_file(name), "rt") as f:
            summary = json.load(f)
        rows = lr_free.method_rows(summary["members"], summary["tuned"], summary["lr_free_methods"])
        if rows != summary["methods"]:  # saved under an earlier rule: the rows follow the members
            summary["methods"] = rows
            with gzip.open(results_file(name), "wt") as f:
                json.dump(summary, f)
        lr_free.LRFreeResult(summary).plot(HERE / "figures" / f"{name}-valleys.png")
        profile[name] = lr_free.profile_ratios(summary["methods"])
        verdicts[name] = {r["optimizer"]: r for r in summary["methods"]}
    plots.performance_profile(profile, HERE / "figures" / "profile.png", title=PROFILE_TITLE.format(len(profile)))
    print(verdict_table(verdicts))


def verdict_table(verdicts: dict) -> str:
    """Per method: on each task (with its number of seeds) its default's ratio to the tuned best (the
    median over seeds, then each seed's) and the verdict."""
    tasks = list(verdicts)
    methods = list(next(iter(verdicts.values())))
    seeds = {t: len(next(iter(verdicts[t].values()))["seeds"]) for t in tasks}
    header = [f"{t} ({seeds[t]} seed{'s' if seeds[t] > 1 else ''})" for t in tasks]
    lines = ["| method | " + " | ".join(header) + " | passes everywhere |", "|---" * (len(tasks) + 2) + "|"]
    for m in methods:
        cells, passes = [], True
        for t in tasks:
            r = verdicts[t][m]
            key = "best_ratio" if r["kind"] == "tuned" else "default_ratio"
            ratio, band = r[f"median_{key}"], r["median_band_decades"]
            each = ["missed" if s[key] is None else f"{s[key]:.2f}" for s in r["seeds"]]
            cells.append(("missed" if ratio is None else f"{ratio:.2f}x")
                         + (f" ({', '.join(each)})" if len(each) > 1 else "")
                         + (f", band {band:.1f} dec" if band is not None else ""))
            passes = passes and r["passes_at_default"]
        verdict = "-" if verdicts[tasks[0]][m]["kind"] == "tuned" else "yes" if passes else "no"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
