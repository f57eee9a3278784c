"""The learning-rate valley: steps to target against learning rate, one population per optimizer.

  python -m lrlab.experiments.lr_valley --optimizer=adam
  python -m lrlab.experiments.lr_valley --optimizer=all --model=tutorial_cnn --workdir=runs/valley
  python -m lrlab.experiments.lr_valley --task=my_pkg.tasks:cifar --optimizer=my_pkg.opt:adamw \
      --hparam=weight_decay=1e-4,1e-2

Writes results.json, results_orbax/ and valley.png to --workdir, and checkpoints while training:
rerunning the same command with the same --workdir resumes it (after a crash, a kill or SIGTERM).
The library call: `lrlab.lr_valley(task, populations, settings, workdir)`.
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from lrlab.experiments import command, common_flags, from_flags
from lrlab.studies.lr_valley import lr_valley
from lrlab.version import __version__

FLAGS = flags.FLAGS
common_flags.define_flags()


def main(argv: list[str]) -> None:
    start = command.start(argv)
    run = command.workdir("lr_valley")
    task = from_flags.task()
    load_seconds = time.perf_counter() - start
    lrs = from_flags.learning_rates()
    populations = from_flags.populations(lrs)
    from_flags.check_data(task, populations)
    print(f"lrlab {__version__}: {command.describe_task(task)}; {', '.join(p.name for p in populations)} x "
          f"{len(lrs)} learning rates {lrs.min():.3g}..{lrs.max():.3g}"
          + "".join(f" x {len(set(populations[0].hparams[h].tolist()))} {h}" for h in populations[0].varying()
                    if h != "learning_rate")
          + (f" x {FLAGS.seeds} seeds" if FLAGS.seeds > 1 else "")
          + f", {'sequential' if FLAGS.sequential else 'vectorized'} on {jax.default_backend()}"
          + (f" (sharded over {jax.device_count()} devices)" if jax.device_count() > 1 and not FLAGS.sequential else "")
          + ("" if FLAGS.retire else ", no retirement") + "; "
          + command.describe_budget(task), flush=True)
    with command.resumable("lr_valley", run) as stop:
        result = lr_valley(task, populations, from_flags.settings(), run, stop=stop, info=command.info(load_seconds))
    print(result.report())
    command.print_saved(result.paths, start)


if __name__ == "__main__":
    app.run(main)
