"""The range test's evidence: on each task, the 48-rate valley once, then lr_finder with --confirm at
seeds 0..S-1; every rule's suggestion and the confirmed rate scored against the valley.

    python experiments/lr_finder/evidence.py --root=runs/lr_finder_evidence --seeds=5

A rule's rate is scored at the valley's grid rate nearest to it in log space (the grid's points are
1.48x apart): it reaches the target if that rate did, in that rate's steps. The confirmed rate was
trained, so its own steps are used. Cost: the ramp's and the confirmation's model-steps over the
grid's (every member's steps trained, retirement on as in the grid). Writes
experiments/lr_finder/results/evidence.json.gz (the tasks run before keep their rows), one figure per
task in experiments/lr_finder/figures/, and prints the table of REPORT.md.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import statistics
import subprocess
import sys
import time

from absl import app, flags

HERE = pathlib.Path(__file__).parent
flags.DEFINE_string("root", "runs/lr_finder_evidence", "Where the runs' workdirs go.")
flags.DEFINE_integer("seeds", 5, "Finder runs per task (--seed=0..seeds-1).")
flags.DEFINE_integer("confirm", None, "--confirm of every finder run (default: lr_finder's).")
flags.DEFINE_list("tasks", None, "Only these tasks (default: all).")
flags.DEFINE_bool("figures_only", False, "Only redraw the figures from the saved results and the valleys under --root.")
FLAGS = flags.FLAGS

VALLEY = ["--num_lrs=48"]
# name -> (the flags both the valley and the finder take, the valley's own, the finder's own)
TASKS = {
    "small_cnn-adam": (["--model=small_cnn", "--optimizer=adam", "--batch_size=100", "--target_accuracy=0.97",
                        "--max_steps=3000", "--eval_every=50", "--eval_examples=2000"],
                       ["--lr_min=1e-6", "--lr_max=100"], []),
    "small_cnn-sgd": (["--model=small_cnn", "--optimizer=sgd", "--batch_size=100", "--target_accuracy=0.97",
                       "--max_steps=3000", "--eval_every=50", "--eval_examples=2000"],
                      ["--lr_min=1e-6", "--lr_max=100"], []),
    "mnist_cnn-adamw": (["--task=lrlab.examples.mnist_cnn:task", "--optimizer=lrlab.examples.mnist_cnn:adamw",
                         "--hparam=weight_decay=1e-4", "--max_steps=1000", "--eval_every=50"],
                        ["--lr_min=1e-5", "--lr_max=10"], []),
    "char_lm-adam": (["--task=lrlab.examples.char_lm:task", "--optimizer=adam", "--max_steps=1500", "--eval_every=100"],
                     ["--lr_min=1e-6", "--lr_max=10"], []),
    "tutorial_cnn-adam": (["--model=tutorial_cnn", "--width=1", "--optimizer=adam", "--batch_size=100",
                           "--target_accuracy=0.95", "--max_steps=600", "--eval_every=50", "--eval_examples=1000"],
                          ["--lr_min=1e-6", "--lr_max=100"], []),
}


def run(args: list[str], log: pathlib.Path) -> float:
    """Runs an experiment to the end (its output in `log`); returns its wall seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-m", *args, "--noprogress"], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed: see {log}")
    return time.perf_counter() - start


def nearest(members: list[dict], rate: float) -> dict:
    """The valley member whose rate is nearest `rate` in log space."""
    import math

    return min(members, key=lambda m: abs(math.log(m["learning_rate"]) - math.log(rate)))


def score(steps: int | None, best_steps: int) -> dict:
    return {"reached": steps is not None, "steps": steps,
            "within_1.5": steps is not None and steps <= 1.5 * best_steps,
            "within_1.1": steps is not None and steps <= 1.1 * best_steps}


def task_rows(name: str, valley: dict, finders: list[dict]) -> dict:
    """Per rule and for the confirmation: each seed's rate, its outcome and cost."""
    members = valley["members"]
    reached = [m for m in members if m["status"] == "reached"]
    best = min(reached, key=lambda m: (m["steps_to_target"], m["learning_rate"]))
    grid_steps = sum(m["steps_trained"] for m in members)
    out: dict = {"valley": {"best_rate": best["learning_rate"], "best_steps": best["steps_to_target"],
                            "band": [min(m["learning_rate"] for m in reached), max(m["learning_rate"] for m in reached)],
                            "grid_model_steps": grid_steps}, "rules": {}, "seeds": []}
    for finder in finders:
        (opt, test), = finder["tests"].items()
        ramp_steps = test["model_steps"]
        seed_row: dict = {"seed": finder["settings"]["seed"] if "settings" in finder else None, "rules": {}}
        for rule, pick in test["suggestions"].items():
            if pick is None:
                seed_row["rules"][rule] = {"rate": None, **score(None, best["steps_to_target"]),
                                           "cost": ramp_steps / grid_steps}
                continue
            at = nearest(members, pick["learning_rate"])
            seed_row["rules"][rule] = {"rate": pick["learning_rate"], "grid_rate": at["learning_rate"],
                                       **score(at["steps_to_target"] if at["status"] == "reached" else None,
                                               best["steps_to_target"]),
                                       "cost": ramp_steps / grid_steps}
        confirmed = (finder.get("confirmed") or {}).get(opt)
        if confirmed is not None:
            b = confirmed["best"]
            seed_row["rules"]["confirm"] = {"rate": b and b["learning_rate"],
                                            **score(b and b["steps_to_target"], best["steps_to_target"]),
                                            "cost": (ramp_steps + confirmed["model_steps"]) / grid_steps,
                                            "candidates": confirmed["candidates"]}
        seed_row["spread"] = test["spread"]
        out["seeds"].append(seed_row)
    for rule in out["seeds"][0]["rules"]:
        rows = [s["rules"][rule] for s in out["seeds"]]
        out["rules"][rule] = {"reached": sum(r["reached"] for r in rows) / len(rows),
                              "within_1.5": sum(r["within_1.5"] for r in rows) / len(rows),
                              "within_1.1": sum(r["within_1.1"] for r in rows) / len(rows),
                              "median_cost": statistics.median(r["cost"] for r in rows)}
    return out


def figure(name: str, valley: dict, rows: dict, path: pathlib.Path) -> None:
    """The valley (steps to target against rate) with each rule's suggestions per seed marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted(valley["members"], key=lambda m: m["learning_rate"])
    cap = max(m["steps_trained"] for m in members)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    ax.plot([m["learning_rate"] for m in members],
            [m["steps_to_target"] if m["status"] == "reached" else None for m in members], "k.-", label="valley")
    ax.axhline(1.5 * rows["valley"]["best_steps"], color="grey", ls=":", lw=1, label="1.5x the best")
    markers = {"valley": "v", "slide": "s", "minimum": "o", "steep": "^", "confirm": "*"}
    rules = list(rows["seeds"][0]["rules"])
    for i, rule in enumerate(rules):
        rates = [s["rules"][rule]["rate"] for s in rows["seeds"] if s["rules"][rule]["rate"]]
        y = cap * (1.08 + 0.06 * i)
        ax.plot(rates, [y] * len(rates), markers.get(rule, "x"), ls="", ms=8 if rule == "confirm" else 6,
                alpha=0.7, label=f"{rule} ({len(rates)} seeds)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("steps to target")
    ax.set_title(f"{name}: the valley, and each rule's rate per seed (marks above it)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> None:
    del argv
    root = pathlib.Path(FLAGS.root)
    if FLAGS.figures_only:
        with gzip.open(HERE / "results" / "evidence.json.gz", "rt") as f:
            saved = json.load(f)
        for name, rows in saved["tasks"].items():
            valley = json.loads((root / name / "valley" / "results.json").read_text())
            figure(name, valley, rows, HERE / "figures" / f"{name}.png")
        print(table(saved["tasks"]))
        print(overall(saved["tasks"]))
        return
    root.mkdir(parents=True, exist_ok=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "figures").mkdir(exist_ok=True)
    saved = HERE / "results" / "evidence.json.gz"
    results: dict = {"tasks": {}, "commands": {}, "wall_seconds": {}}
    if saved.exists():  # the tasks run before keep their rows; those run now replace theirs
        with gzip.open(saved, "rt") as f:
            results = json.load(f)
    confirm = [] if FLAGS.confirm is None else [f"--confirm={FLAGS.confirm}"]
    for name in FLAGS.tasks or TASKS:
        shared, valley_only, finder_only = TASKS[name]
        valley_dir = root / name / "valley"
        valley_args = ["lrlab.experiments.lr_valley", *shared, *VALLEY, *valley_only, f"--workdir={valley_dir}"]
        results["commands"][f"{name}/valley"] = "python -m " + " ".join(valley_args)
        (root / name).mkdir(parents=True, exist_ok=True)
        results["wall_seconds"][f"{name}/valley"] = run(valley_args, root / name / "valley.log")
        finders = []
        for seed in range(FLAGS.seeds):
            finder_dir = root / name / f"finder-seed{seed}"
            args = ["lrlab.experiments.lr_finder", *shared, *finder_only, *confirm, f"--seed={seed}",
                    f"--valley={valley_dir}", f"--workdir={finder_dir}"]
            results["commands"][f"{name}/finder-seed{seed}"] = "python -m " + " ".join(args)
            results["wall_seconds"][f"{name}/finder-seed{seed}"] = run(args, root / name / f"finder-seed{seed}.log")
            finder = json.loads((finder_dir / "results.json").read_text())
            finder.setdefault("settings", {}).setdefault("seed", seed)
            finders.append(finder)
        valley = json.loads((valley_dir / "results.json").read_text())
        rows = task_rows(name, valley, finders)
        results["tasks"][name] = rows
        figure(name, valley, rows, HERE / "figures" / f"{name}.png")
        with gzip.open(saved, "wt") as f:
            json.dump(results, f)
        print(table({name: rows}), flush=True)
    print(table(results["tasks"]))
    print(overall(results["tasks"]))


def table(tasks: dict) -> str:
    """REPORT.md's table: per task and rule, the fractions of seeds and the median cost."""
    lines = ["| task | rule | reaches | within 1.5x | within 1.1x | median cost (of the grid) |", "|---|---|---|---|---|---|"]
    for name, rows in tasks.items():
        for rule, r in rows["rules"].items():
            lines.append(f"| {name} | {rule} | {r['reached']:.0%} | {r['within_1.5']:.0%} | {r['within_1.1']:.0%} | "
                         f"{r['median_cost']:.1%} |")
    return "\n".join(lines)


def overall(tasks: dict) -> str:
    """REPORT.md's table over every task-seed: per rule, the fractions and the median and largest cost."""
    lines = [f"Over all {sum(len(rows['seeds']) for rows in tasks.values())} task-seeds:", "",
             "| rule | reaches | within 1.5x | within 1.1x | median cost | largest cost |", "|---|---|---|---|---|---|"]
    for rule in next(iter(tasks.values()))["rules"]:
        rows = [s["rules"][rule] for t in tasks.values() for s in t["seeds"] if rule in s["rules"]]
        share = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
        lines.append(f"| {rule} | {share('reached'):.0%} | {share('within_1.5'):.0%} | {share('within_1.1'):.0%} | "
                     f"{statistics.median(r['cost'] for r in rows):.1%} | {max(r['cost'] for r in rows):.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
