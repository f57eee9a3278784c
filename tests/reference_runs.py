"""Small command-line configurations whose members must not change when lrlab's host side is
reshaped: their statuses and steps to target, recorded from the code before the library issue
(commit 611bcd5) in tests/data/reference_members.json.

  python tests/reference_runs.py --out=tests/data/reference_members.json   # records, from the checkout it runs in
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile

COMMON = ["--max_steps=120", "--eval_every=20", "--eval_examples=500", "--batch_size=50", "--noprogress"]
CONFIGS = {
    "lr_valley": ("lr_valley", ["--optimizer=adam,momentum", "--lrs=0.001,0.01,0.1,10", "--target_accuracy=0.8",
                                *COMMON]),
    "lr_valley_sha": ("lr_valley", ["--optimizer=adam", "--num_lrs=6", "--lr_min=1e-4", "--lr_max=1",
                                    "--prune=sha", "--prune_min_steps=40", "--target_accuracy=0.85", *COMMON]),
    "techniques": ("techniques", ["--lrs=0.003,0.03", "--techniques=baseline,batch_norm,early_stopping,augment",
                                  "--validation_examples=1000", "--patience=2", "--target_accuracy=0.8", *COMMON]),
    "pbt": ("pbt", ["--num_lrs=6", "--lr_min=1e-4", "--lr_max=0.3", "--ready_steps=40", "--target_accuracy=0.85",
                    *COMMON]),
    "random_search": ("random_search", ["--num_samples=5", "--search=learning_rate:1e-4:1", "--search_seed=3",
                                        "--target_accuracy=0.8", *COMMON]),
    "lr_finder": ("lr_finder", ["--optimizer=adam,sgd", "--num_steps=60", "--num_seeds=2", "--batch_size=50", "--confirm=0",
                                "--noprogress"]),
}
KEYS = ("optimizer", "technique", "learning_rate", "status", "steps_to_target", "steps_trained")


def summarize(experiment: str, summary: dict) -> list:
    """What must stay the same: per member, its identity, status and steps (floats rounded)."""
    if experiment == "pbt":
        return [{"steps_to_target": summary["steps_to_target"], "member_at_target": summary["member_at_target"],
                 "stopped_by": summary["stopped_by"], "sources": [e["source"] for e in summary["events"]],
                 "statuses": [m["status"] for m in summary["final_members"]]}]
    if experiment == "lr_finder":
        return [{"optimizer": t["optimizer"], "steps_run": t["steps_run"], "diverged_at": t["diverged_at"],
                 "suggestions": {r: s and round(s["learning_rate"], 8) for r, s in t["suggestions"].items()}}
                for t in summary["tests"].values()]
    if experiment == "random_search":
        return [{k: (round(t[k], 8) if isinstance(t[k], float) else t[k]) for k in KEYS if k in t}
                for t in summary["trials"]]
    return [{k: (round(m[k], 8) if isinstance(m[k], float) else m[k]) for k in KEYS if k in m}
            for m in summary["members"]]


def command(name: str, workdir: pathlib.Path) -> list[str]:
    experiment, flags = CONFIGS[name]
    return [sys.executable, "-m", f"lrlab.experiments.{experiment}", *flags, f"--workdir={workdir}"]


def main() -> None:
    out = pathlib.Path(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")),
                            "tests/data/reference_members.json"))
    with tempfile.TemporaryDirectory() as root:
        procs = {name: subprocess.Popen(command(name, pathlib.Path(root) / name), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for name in CONFIGS}
        recorded = {}
        for name, proc in procs.items():
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{err}")
            summary = json.loads((pathlib.Path(root) / name / "results.json").read_text())
            recorded[name] = summarize(CONFIGS[name][0], summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(recorded, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
