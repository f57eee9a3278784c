"""What writing a run's views costs: members.csv, the Optuna study (SQLite) and the
TensorBoard runs of the committed study valley (experiments/mack2018/results/cpu-lr_valley.json.gz:
6 optimizers x 48 rates, 3,000-step budget, curves every 50 steps), and of its Adam valley alone
(48 members: the default `python -m lrlab.experiments.lr_valley`). Each view is written by the run
handle exactly as at the end of a run, `--repeats` times (the two runs interleaved); the table gives
the median seconds, the files' sizes, and the seconds against the sweep's own wall time (from that
results.json: measured when it ran, on the same kind of 2-core machine).

  python benchmarks/views.py            # writes benchmarks/results/views-cpu.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

from lrlab.store import views  # noqa: E402
from lrlab.store.workdir import MEMBERS_CSV, OPTUNA_DB, TENSORBOARD, Workdir  # noqa: E402

VALLEY = pathlib.Path(__file__).resolve().parents[1] / "experiments/mack2018/results/cpu-lr_valley.json.gz"
VIEWS = {"members_csv": MEMBERS_CSV, "optuna": OPTUNA_DB, "tensorboard": TENSORBOARD}


def size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def load() -> tuple[dict, dict[str, tuple[list, float]]]:
    """The committed valley (a schema-1 results.json: its target from its flags) and the two runs
    measured: name -> (records, the sweep's wall seconds)."""
    summary = json.load(gzip.open(VALLEY))
    flags = summary["flags"]
    summary.update(target={"metric": "accuracy", "goal": flags["target_accuracy"], "mode": "max"},
                   target_key="train_accuracy", max_steps=flags["max_steps"])
    adam = [r for r in summary["members"] if r["optimizer"] == "adam"]
    return summary, {"adam (default valley)": (adam, summary["timing"]["adam"]["wall_seconds"]),
                     "all six (the study)": (summary["members"], summary["stage_seconds"]["sweep"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    summary, runs = load()
    seconds = {name: {v: [] for v in VIEWS} for name in runs}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _repeat in range(args.repeats):
            for name, (records, _) in runs.items():
                run = Workdir(pathlib.Path(tmp) / name.split()[0], "lr_valley")
                run.prepare()
                stage = {**summary, "stage_seconds": {}}
                run.save_views(stage, records, views.Views(tensorboard=True))
                for v in VIEWS:
                    seconds[name][v].append(stage["stage_seconds"][v])
                sizes[name] = {v: size(run.path / f) for v, f in VIEWS.items()}
    rows = []
    print(f"{'run':<22} {'members':>7} {'sweep s':>8}  " + "  ".join(f"{v + ' s':>14} {'bytes':>10}" for v in VIEWS)
          + f"  {'total s':>8} {'of sweep':>8}")
    for name, (records, sweep_s) in runs.items():
        med = {v: statistics.median(seconds[name][v]) for v in VIEWS}
        total = sum(med.values())
        rows.append({"run": name, "members": len(records), "evaluations_per_member": len(records[0]["curve"]["step"]),
                     "sweep_wall_seconds": sweep_s, "seconds": seconds[name], "median_seconds": med,
                     "bytes": sizes[name], "total_seconds": total, "fraction_of_sweep": total / sweep_s})
        print(f"{name:<22} {len(records):>7} {sweep_s:>8.0f}  "
              + "  ".join(f"{med[v]:>14.2f} {sizes[name][v]:>10,}" for v in VIEWS)
              + f"  {total:>8.2f} {total / sweep_s:>8.2%}")
    path = _common.write_results("views", {"source": str(VALLEY.relative_to(VALLEY.parents[3])),
                                           "repeats": args.repeats, "rows": rows,
                                           "note": "sweep_wall_seconds: from the committed results.json (its own "
                                                   "run); the views' seconds: this run, a shared 2-core machine"},
                                 args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
