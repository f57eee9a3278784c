"""Everything a GPU has to measure for lrlab, in one call of under 9 minutes, with one summary table.

  python3 benchmarks/accelerator.py            # on the machine with the GPU, from the repository root
  python3 benchmarks/accelerator.py --smoke    # every stage at tiny sizes (runs on a CPU, in minutes)

Stages, each a separate process with its own time cap, all under one deadline (--deadline_s), in
this order (a stage that runs out of time is recorded as such and the next one starts):
  tests         the test suite (pytest, `-m 'not slow'`, --test_workers processes sharing the GPU)
  study         benchmarks/study_valley.py: the full-size study sweep (tutorial_cnn, 6 optimizers x
                48 rates, experiments/mack2018/lr_valley.flags) with its stage split; budget: the
                flagfile's 6000 steps or --study_max_seconds of training per optimizer, the first reached
  pvs_small     benchmarks/population_vs_sequential.py on small_cnn: per step at K up to 288, and the
                end-to-end valley against the user's plain Flax loop and lrlab's sequential mode
  pvs_tutorial  the same on tutorial_cnn (the valley smaller: the user's loop runs rate after rate)
  roofline      benchmarks/roofline.py, both models, K up to 288
  own_model     benchmarks/own_model.py: a user's own Flax models (CNN, residual block with batch norm,
                MLP, character LM) against the user's loop, K 1 to 48, every lowering candidate timed
Each writes its JSON under --out_dir (the device named in it); this script adds
accelerator-<backend>.json with every stage's result, its log's last lines, and the table it prints
last: six files in all. With the device tool: `python3 benchmarks/accelerator.py --out_dir=$OUT`,
carrying `.whl` (the caps are estimates made without a GPU: `--caps` moves them, `--stages` picks).

The GPU image has no lrlab install and no Optuna (lrlab imports Optuna only inside the Bayesian
search, so lrlab imports without it). If Optuna is missing and wheels lie in .whl/ (made here with
`pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_17_x86_64 -d .whl optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9
colorlog==6.12.0 mako==1.4.3`; carried with the call), they are installed into a temporary folder
first; otherwise the three tests of the Bayesian search that need it skip themselves
(tests/test_search.py). TensorFlow Datasets and array_record are absent there too:
tests/test_tfds_source.py skips itself (importorskip). pytest's summary lists every skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

from absl import app, flags  # noqa: E402

flags.DEFINE_bool("smoke", False, "Every stage at tiny sizes (a CPU check of the script), results to a temp folder.")
flags.DEFINE_string("out_dir", None, "Where the JSON goes (default benchmarks/results; --smoke: a temp folder).")
flags.DEFINE_float("deadline_s", None, "All stages together stop by this many seconds after the start "
                   "(default 530; --smoke: 1800).")
flags.DEFINE_list("stages", ["tests", "own_model", "study", "pvs_small", "pvs_tutorial", "roofline"],
                  "Stages to run, in order.")
flags.DEFINE_list("caps", [], "Per-stage time caps in seconds overriding the defaults, e.g. tests=200,study=150.")
flags.DEFINE_integer("test_workers", 8, "pytest-xdist workers for the test suite.")
flags.DEFINE_float("study_max_seconds", 20.0, "Training seconds per optimizer in the study sweep (0: steps only).")
FLAGS = flags.FLAGS


def stage_specs(smoke: bool, out: pathlib.Path, backend: str) -> dict[str, dict]:
    """Per stage: argv, time cap (s), the JSON it writes."""
    py = sys.executable
    json_of = lambda name: out / f"{name}-{backend}.json"
    if smoke:
        pvs = lambda model, members, steps, rates, max_steps: [
            f"--models={model}", f"--members={members}", f"--steps={steps}", "--repeats=1",
            f"--valley_rates={rates}", f"--valley_max_steps={max_steps}"]
        small = pvs("small_cnn", "1,4", 5, 3, 100)
        tutorial = pvs("tutorial_cnn", "1", 1, 2, 50)
        roof = ["--models=small_cnn,tutorial_cnn", "--members=1,2", "--steps=2", "--repeats=1", "--matmul_size=256"]
        study = ["--model=small_cnn", "--max_steps=100", "--optimizer=adam,sgd", "--repack=true"]
        tests = ["tests/test_user_loop.py"]
        own = ["--models=flax_cnn,mlp", "--members=1,2", "--steps=5", "--repeats=1", "--end_to_end=2x10"]
    else:
        small = ["--models=small_cnn", "--members=1,8,48,288", "--steps=50", "--repeats=3", "--skip_over_seconds=30",
                 "--valley_rates=16", "--valley_max_steps=1000"]
        tutorial = ["--models=tutorial_cnn", "--members=1,8,48,288", "--steps=20", "--repeats=3",
                    "--skip_over_seconds=30", "--valley_rates=8", "--valley_max_steps=1000"]
        roof = ["--models=small_cnn,tutorial_cnn", "--members=1,8,48,288", "--steps=20", "--repeats=3",
                "--skip_over_seconds=20", "--matmul_size=8192"]
        study = ["--model=tutorial_cnn", "--max_steps=6000", "--optimizer=all", "--repack=true"]
        if FLAGS.study_max_seconds:
            study.append(f"--max_seconds={FLAGS.study_max_seconds:g}")
        tests = ["-m", "not slow", "-n", str(FLAGS.test_workers), "--dist", "loadfile", "tests"]
        own = ["--models=flax_cnn,resnet_bn", "--members=1,48", "--steps=50", "--repeats=1", "--candidates",
               "--end_to_end=8x200"]
    return {
        "tests": {"argv": [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                  "cap": 170 if not smoke else 150, "json": None},
        "own_model": {"argv": [py, str(BENCH / "own_model.py"), *own, f"--out={json_of('own_model')}"],
                      "cap": 200 if not smoke else 300, "json": json_of("own_model")},
        "study": {"argv": [py, str(BENCH / "study_valley.py"), *study, f"--out={json_of('study_valley')}"],
                  "cap": 180 if not smoke else 240, "json": json_of("study_valley")},
        "pvs_small": {"argv": [py, str(BENCH / "population_vs_sequential.py"), *small,
                               f"--out={json_of('population_vs_sequential-small_cnn')}"],
                      "cap": 80 if not smoke else 150, "json": json_of("population_vs_sequential-small_cnn")},
        "pvs_tutorial": {"argv": [py, str(BENCH / "population_vs_sequential.py"), *tutorial,
                                  f"--out={json_of('population_vs_sequential-tutorial_cnn')}"],
                         "cap": 80 if not smoke else 400, "json": json_of("population_vs_sequential-tutorial_cnn")},
        "roofline": {"argv": [py, str(BENCH / "roofline.py"), *roof, f"--out={json_of('roofline')}"],
                     "cap": 60 if not smoke else 300, "json": json_of("roofline")},
    }


def ensure_optuna(env: dict[str, str]) -> str:
    """'present', 'installed from .whl', or 'missing' (then the tests that need it skip)."""
    if importlib.util.find_spec("optuna") is not None:
        return "present"
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        return "missing"
    site = tempfile.mkdtemp(prefix="lrlab-site-")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--target", site, *map(str, wheels)], capture_output=True, text=True)
    if done.returncode:
        print(f"installing the wheels in .whl failed: {done.stderr.strip()[-500:]}")
        return "missing"
    env["PYTHONPATH"] = os.pathsep.join([site, env["PYTHONPATH"]])
    return "installed from .whl"


def run_stage(name: str, spec: dict, seconds: float, env: dict[str, str], log_dir: pathlib.Path) -> dict:
    """Runs one stage in its own process for at most `seconds`; its status, wall time and log tail."""
    if seconds < 5:
        return {"status": "not run (deadline)", "seconds": 0.0}
    log = log_dir / f"{name}.log"
    print(f"== {name} (at most {seconds:.0f} s): {' '.join(spec['argv'][1:])}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(spec["argv"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                timeout=seconds).returncode
            status = "ok" if rc == 0 else f"failed (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {seconds:.0f} s"
    wall = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-40:]
    print(f"   {status}, {wall:.1f} s", flush=True)
    result = {"status": status, "seconds": wall, "log_tail": tail}
    if spec["json"] is not None and spec["json"].exists():
        result["json"] = json.loads(spec["json"].read_text())
    return result


def headline(name: str, r: dict) -> str:
    """One line of the summary table for a stage's result."""
    if name == "tests":
        counts = re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", " ".join(r.get("log_tail", [])))
        return ", ".join(f"{n} {what}" for n, what in counts) or "-"
    j = r.get("json")
    if not j:
        return "-"
    if name == "study":
        rows = [x for x in j["rows"] if x["repack"]] or j["rows"]
        x = rows[0]
        s = x["statuses"]
        return (f"wall {x['wall_seconds']:.1f} s (compile {x['compile_seconds']:.1f}, train {x['train_seconds']:.1f}), "
                f"{x['member_steps_trained']:,} member-steps, reached/diverged/exhausted "
                f"{s['reached']}/{s['diverged']}/{s['exhausted']}")
    if name.startswith("pvs"):
        parts = [f"K={x['members']} {x['ratio']:.2f}x" for x in j["rows"] if "ratio" in x]
        for v in j.get("valleys", []):
            parts.append(f"valley {len(v['rates'])}x{v['max_steps']}: " + ", ".join(
                f"{k.removeprefix('population_vs_')} {x:.1f}x" for k, x in v.get("speedup", {}).items()))
            parts += [f"tables agree {a['agree']}/{a['of']}" for a in v.get("agreement", {}).values()][:1]
        return "; ".join(parts) or "-"
    if name == "own_model":
        parts = [f"{x['model']} K={x['members']} {x['speedup']:.2f}x" for x in j["per_member_step"]]
        parts += [f"{x['sweep']}: {x['speedup']:.2f}x" for x in j["end_to_end"]]
        return "; ".join(parts) or "-"
    if name == "roofline":
        return "; ".join(f"{x['model']} K={x['members']} {x['fraction_of_matmul']:.1%}" for x in j["rows"]
                         if "fraction_of_matmul" in x) + f" of {j['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s"
    return "-"


def main(argv):
    del argv
    start = time.perf_counter()
    import jax  # after absl parsed the flags; the stages import it in their own processes

    backend = jax.default_backend()
    device = jax.devices()[0].device_kind
    out = pathlib.Path(FLAGS.out_dir) if FLAGS.out_dir else (
        pathlib.Path(tempfile.mkdtemp(prefix="lrlab-accelerator-")) if FLAGS.smoke else BENCH / "results")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # stages and test workers share the GPU
    optuna = ensure_optuna(env)
    specs = stage_specs(FLAGS.smoke, out, backend)
    for entry in FLAGS.caps:
        name, seconds = entry.split("=")
        specs[name]["cap"] = float(seconds)
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="lrlab-accelerator-logs-"))  # tails go into the summary
    print(f"lrlab on {device} ({backend}), jax {jax.__version__}, optuna {optuna}; results in {out}", flush=True)
    deadline = FLAGS.deadline_s or (1800.0 if FLAGS.smoke else 530.0)
    results = {}
    for name in FLAGS.stages:
        left = deadline - (time.perf_counter() - start)
        results[name] = run_stage(name, specs[name], min(specs[name]["cap"], left), env, log_dir)
    total = time.perf_counter() - start
    summary = {"device": device, "backend": backend, "jax": jax.__version__, "smoke": FLAGS.smoke,
               "optuna": optuna, "seconds": total, "stages": results}
    (out / f"accelerator-{backend}.json").write_text(json.dumps(summary, indent=1))
    sizes = " (smoke sizes)" if FLAGS.smoke else ""
    print(f"\nlrlab accelerator run on {device} ({backend}): {total:.0f} s in all{sizes}")
    print(f"{'stage':<13} {'status':<24} {'s':>6}  headline")
    for name, r in results.items():
        print(f"{name:<13} {r['status'][:24]:<24} {r['seconds']:>6.1f}  {headline(name, r)}")
    print(f"wrote {out / f'accelerator-{backend}.json'}")


if __name__ == "__main__":
    app.run(main)
