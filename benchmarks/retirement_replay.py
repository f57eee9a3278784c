"""Replays retirement (lrlab/retirement.py) on learning curves: would it ever retire a member that
went on to reach the target, and how many model-steps would it save?

  python benchmarks/retirement_replay.py [--fresh_workdir=runs/retire-fresh] [--fresh_steps=600]

Curves: every committed results file that keeps them (experiments/*/results/*.json.gz; the search
comparison keeps only statuses, so it is listed as skipped), and, with --fresh_workdir, a fresh
run of all six optimizers (`lr_valley --optimizer=all --noretire` with --fresh_flags, run there if
it holds no results yet). Each curve is replayed with `retirement.replay`, the rules the runner
applies: the chance rule alone over a grid of its constants, the pace rule (the slow side) over a
grid of its constants with the chance rule at its defaults, and RetireSpec()'s defaults; a reached
member counts as a false retirement when a rule fires before its steps to target. For the pace
rule it also gives the critical multiplier: the largest `pace` that would have retired a member
that reached (the default's margin is its ratio to it). A naive slow-side rule (linear
extrapolation of the last evaluations) is replayed alongside to show what it would have cost.
Prints tables; writes benchmarks/results/retirement_replay.json.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import itertools
import json
import pathlib
import subprocess
import sys

from _common import write_results
from absl import app, flags

from lrlab.engine import placement
from lrlab.examples import char_lm
from lrlab.task import classification, mnist, models
from lrlab.task import task as task_lib
from lrlab.task.target import Target
from lrlab.training import retirement
from lrlab.training.retirement import RetireSpec

flags.DEFINE_string("fresh_workdir", None, "Workdir of a fresh six-optimizer valley (run there unless it has results).")
flags.DEFINE_list("fresh_flags", ["--optimizer=all", "--max_steps=800", "--seed=1", "--noretire", "--noprogress"],
                  "Flags of the fresh run (python -m lrlab.experiments.lr_valley).")
flags.DEFINE_string("out", None, "JSON path (default benchmarks/results/retirement_replay.json).")
FLAGS = flags.FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRID = {"grace_steps": [0, 100, 200, 300, 500], "evaluations": [2, 3, 4, 5, 8], "margin": [0.01, 0.02, 0.05]}
SLOW_WINDOWS, SLOW_FACTORS = (4,), (1.0, 2.0, 4.0)  # the naive slow-side candidates: evaluations, slope multipliers
PACE_GRID = {"pace": [0.5, 1.0, 2.0], "pace_grace_steps": [100, 200, 300], "pace_evaluations": [2, 3, 4]}
CPU_CHUNK = 4  # members per chunk of small_cnn's member loop on CPU (population.member_chunk_size)


@functools.cache
def mnist_chance(eval_examples: int, seed: int, validation: int) -> float:
    """The accuracy of the best constant predictor on the run's evaluation subset (tasks.split)."""
    task = classification.image_classification(models.make_model("small_cnn", 1.0, 10, "auto"), mnist.load_mnist())
    return task.chance_value(task_lib.split(task, eval_examples, seed, validation).eval)


def curves_of(path: pathlib.Path, summary: dict, source: str) -> list[dict]:
    """Every member curve in one results file, with what its replay needs (none from a file that is
    not one run's results: it names neither its task nor its flags)."""
    if "task" not in summary and "flags" not in summary:
        return []
    fl = summary.get("flags", {})
    target = Target(**summary["task"]["target"]) if "task" in summary else Target("accuracy", fl["target_accuracy"])
    max_steps = fl.get("max_steps") or summary["settings"]["budget"]["max_steps"]
    if fl.get("task") == "lrlab.examples.char_lm:task":  # its own validation set
        lm = char_lm.task()
        chance_for = lambda validation, c=lm.chance_value(lm.eval): c  # noqa: E731
    else:  # an MNIST subset; early stopping's members draw it from what validation leaves
        chance_for = lambda validation: mnist_chance(fl.get("eval_examples", 2000), fl.get("seed", 0),  # noqa: E731
                                                     validation)
    records = summary.get("members") or list(summary.get("optimizers", {}).values())
    out = []
    for r in records:
        curve = r.get("curve") or r.get("train_curve")
        if not curve:
            continue
        key = next(k for k in curve if k.endswith("_" + target.metric) and not k.startswith("val_"))
        steps, values = curve["step"], curve[key]
        if r["status"] == "reached":  # up to its target (optimizer_comparison trains on past it)
            n = steps.index(r["steps_to_target"]) + 1
            steps, values = steps[:n], values[:n]
        group = r.get("optimizer", "?") + "".join(f"/{r[k]}" for k in ("technique", "schedule", "width") if k in r)
        c = chance_for(fl.get("validation_examples", 0) if r.get("technique") == "early_stopping" else 0)
        out.append({"source": source, "group": group, "optimizer": r.get("optimizer", "?"),
                    "learning_rate": r["learning_rate"], "status": r["status"], "steps": steps, "values": values,
                    "steps_trained": r["steps_trained"], "target": target, "chance": c, "max_steps": max_steps})
    return out


def slow_replay(curve: dict, window: int, factor: float, grace: int) -> int | None:
    """The slow-side candidate: the step at which the last `window` evaluations' progress, times
    `factor`, extrapolated linearly to the budget, misses the goal (None: never)."""
    target, steps, values = curve["target"], curve["steps"], curve["values"]
    for j in range(window, len(steps) - 1):
        if steps[j] < grace:
            continue
        slope = (target.score(values[j]) - target.score(values[j - window])) / (steps[j] - steps[j - window])
        projected = target.score(values[j]) + factor * max(slope, 0.0) * (curve["max_steps"] - steps[j])
        if projected < target.score(target.goal):
            return steps[j]
    return None


def tally(curves: list[dict], fire) -> dict:
    """False retirements (reached members retired before their target), members retired and the
    model-steps saved, over `curves`, for a rule `fire(curve) -> step | None`."""
    false, retired, saved = [], 0, 0
    for c in curves:
        at = fire(c)
        if at is None:
            continue
        if c["status"] == "reached":
            false.append(f"{c['source']} {c['group']} lr={c['learning_rate']:.4g} retired at {at}, reached at "
                         f"{c['steps'][-1]}")
        else:
            retired += 1
            saved += c["steps_trained"] - at
    trained = sum(c["steps_trained"] for c in curves)
    return {"false_retirements": len(false), "false": false[:5], "retired": retired, "model_steps_saved": saved,
            "model_steps_trained": trained, "saved_fraction": saved / trained if trained else 0.0}


def population_steps(curves: list[dict], stops: list[int]) -> int:
    """What the engine computes on one CPU device for one population whose members stop training
    at `stops`: per evaluation interval, the members of the chunks still live after compaction
    (running members rounded up to CPU_CHUNK; population.member_map skips the others) times the
    interval's steps."""
    every = curves[0]["steps"][0]
    total, step = 0, 0
    while step < max(stops):
        running = sum(stop > step for stop in stops)
        total += every * placement.round_up(running, CPU_CHUNK)
        step += every
    return total


def critical_pace(curves: list[dict], spec: RetireSpec) -> tuple[float, str]:
    """The largest pace multiplier (other constants as `spec`'s) at which the pace rule alone would
    retire a member that reached the target, by bisection on the replay; and that member."""
    reached = [c for c in curves if c["status"] == "reached"]

    def fires(pace: float) -> str | None:
        s = dataclasses.replace(spec, pace=pace)
        for c in reached:
            if retirement.replay(s, c["target"], None, c["steps"], c["values"], c["max_steps"]) is not None:
                return f"{c['source']} {c['group']} lr={c['learning_rate']:.4g}"
        return None

    lo, hi = 0.0, spec.pace
    while fires(hi) is not None:
        hi *= 2
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if fires(mid) is None else (mid, hi)
    return lo, fires(lo) or ""


def repacked_cost(curves: list[dict], fire) -> tuple[int, int]:
    """(population-steps without the rule, with it) summed over the populations in `curves`."""
    before = after = 0
    for _, group in itertools.groupby(sorted(curves, key=lambda c: (c["source"], c["group"])),
                                      key=lambda c: (c["source"], c["group"])):
        group = list(group)
        before += population_steps(group, [c["steps_trained"] for c in group])
        after += population_steps(group, [c["steps_trained"] if fire(c) is None else fire(c) for c in group])
    return before, after


def load_sources() -> tuple[list[dict], list[str]]:
    curves, skipped = [], []
    for path in sorted(ROOT.glob("experiments/*/results/*.json.gz")):
        summary = json.loads(gzip.open(path).read())
        got = curves_of(path, summary, str(path.relative_to(ROOT)))
        (curves.extend(got) if got else skipped.append(str(path.relative_to(ROOT))))
    if FLAGS.fresh_workdir:
        workdir = pathlib.Path(FLAGS.fresh_workdir)
        if not (workdir / "results.json").exists():
            subprocess.run([sys.executable, "-m", "lrlab.experiments.lr_valley", *FLAGS.fresh_flags,
                            f"--workdir={workdir}"], check=True, cwd=ROOT)
        summary = json.loads((workdir / "results.json").read_text())
        curves += curves_of(workdir, summary, "fresh: lr_valley " + " ".join(FLAGS.fresh_flags))
    return curves, skipped


def main(argv):
    del argv
    curves, skipped = load_sources()
    print(f"{len(curves)} curves from {len({c['source'] for c in curves})} sources; skipped (no curves): "
          f"{', '.join(skipped) or 'none'}")
    grid = []
    for grace, n, margin in itertools.product(*GRID.values()):
        spec = RetireSpec(grace, n, margin, pace=0)
        t = tally(curves, lambda c, s=spec: retirement.replay(s, c["target"], c["chance"], c["steps"], c["values"],
                                                              c["max_steps"]))
        grid.append({"grace_steps": grace, "evaluations": n, "margin": margin,
                     **{k: v for k, v in t.items() if k != "false"}})
    print(f"{'grace':>5} {'evals':>5} {'margin':>6} {'false':>5} {'retired':>7} {'saved':>8}")
    for g in grid:
        print(f"{g['grace_steps']:>5} {g['evaluations']:>5} {g['margin']:>6} {g['false_retirements']:>5} "
              f"{g['retired']:>7} {g['saved_fraction']:>8.1%}")
    chosen = RetireSpec()
    pace_grid = []
    print(f"\npace rule, with the chance rule at its defaults\n{'pace':>5} {'grace':>5} {'evals':>5} {'false':>5} "
          f"{'retired':>7} {'saved':>8}")
    for pace, grace, n in itertools.product(*PACE_GRID.values()):
        spec = dataclasses.replace(chosen, pace=pace, pace_grace_steps=grace, pace_evaluations=n)
        t = tally(curves, lambda c, s=spec: retirement.replay(s, c["target"], c["chance"], c["steps"], c["values"],
                                                              c["max_steps"]))
        pace_grid.append({"pace": pace, "pace_grace_steps": grace, "pace_evaluations": n,
                          **{k: v for k, v in t.items() if k != "false"}})
        print(f"{pace:>5} {grace:>5} {n:>5} {t['false_retirements']:>5} {t['retired']:>7} {t['saved_fraction']:>8.1%}")
    critical, closest = critical_pace(curves, chosen)
    print(f"critical pace multiplier (the pace rule alone, grace {chosen.pace_grace_steps}, "
          f"{chosen.pace_evaluations} evaluations): {critical:.3f} ({closest}); the default {chosen.pace:g} is "
          f"{chosen.pace / critical:.1f}x it")
    rule = lambda c: retirement.replay(chosen, c["target"], c["chance"], c["steps"], c["values"],  # noqa: E731
                                       c["max_steps"])
    per = {}
    print(f"\nchosen {chosen}: per source and optimizer")
    print(f"{'source':<58} {'optimizer':<9} {'curves':>6} {'reached':>7} {'false':>5} {'retired':>7} "
          f"{'steps saved':>11} {'of trained':>10} {'re-packed':>10}")
    for (source, opt), group in itertools.groupby(sorted(curves, key=lambda c: (c["source"], c["optimizer"])),
                                                  key=lambda c: (c["source"], c["optimizer"])):
        group = list(group)
        t = tally(group, rule)
        before, after = repacked_cost(group, rule)
        per[f"{source} | {opt}"] = {"curves": len(group), "reached": sum(c["status"] == "reached" for c in group),
                                    "chance": group[0]["chance"], "population_steps_before": before,
                                    "population_steps_after": after, **t}
        print(f"{source[:58]:<58} {opt:<9} {len(group):>6} {per[f'{source} | {opt}']['reached']:>7} "
              f"{t['false_retirements']:>5} {t['retired']:>7} {t['model_steps_saved']:>11,} "
              f"{t['saved_fraction']:>10.1%} {before / after:>9.2f}x")
    total = tally(curves, rule)
    total["population_steps_before"], total["population_steps_after"] = repacked_cost(curves, rule)
    print(f"all: false retirements {total['false_retirements']}, retired {total['retired']}, model-steps saved "
          f"{total['model_steps_saved']:,} of {total['model_steps_trained']:,} ({total['saved_fraction']:.1%}); "
          f"population-steps after re-packing {total['population_steps_before']:,} -> "
          f"{total['population_steps_after']:,} "
          f"({total['population_steps_before'] / total['population_steps_after']:.2f}x)")
    slow = []
    for window, factor, grace in itertools.product(SLOW_WINDOWS, SLOW_FACTORS, (chosen.grace_steps, 1000)):
        t = tally(curves, lambda c: slow_replay(c, window, factor, grace))
        slow.append({"window": window, "factor": factor, "grace_steps": grace, **t})
        print(f"slow-side rule (last {window} evaluations, slope x{factor:g}, from step {grace}): "
              f"false retirements {t['false_retirements']}, retired {t['retired']}, saved {t['saved_fraction']:.1%}"
              + (f"; e.g. {t['false'][0]}" if t["false"] else ""))
    out = write_results("retirement_replay", {
        "chosen": chosen.__dict__, "curves": len(curves), "skipped": skipped,
        "sources": sorted({c["source"] for c in curves}), "total": total, "per_source_optimizer": per,
        "grid": grid, "pace_grid": pace_grid, "critical_pace": critical, "critical_pace_member": closest,
        "cost_model": f"one CPU device, member chunks of {CPU_CHUNK} compacted", "slow_side": slow}, FLAGS.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
