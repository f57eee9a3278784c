"""pbt: Population Based Training of the learning rate (and other hyperparameters) as one vectorized
program (`training.exploit_explore`), with the report of its lineage and schedule.

    python -m lrlab.experiments.pbt --optimizer=adam
"""

from __future__ import annotations

from typing import Any

from lrlab.engine import stop as stop_lib
from lrlab.optim.members import Members
from lrlab.store import plots, records
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training.exploit_explore import (
    PBTConfig,
    member_records,
    result_json,
    run_pbt,
)
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import api_identity, test_metrics


def format_summary(summary: dict[str, Any]) -> str:
    """The printed report of a PBT results.json: time to target and cost, the best lineage's
    hyperparameter schedule, and every final member."""
    key, metric = summary["target_key"], summary["target"]["metric"]
    goal = records.target_text(summary)
    k, best = summary["members"], summary["best"]
    names = list(best["schedules"])
    lines = [f"PBT {summary['optimizer']}: {k} members, {len(summary['events'])} ready events; stopped by "
             f"{summary['stopped_by']} after {summary['steps_run']} steps ({summary['model_steps']:,} model-steps "
             f"= {k} x {summary['steps_run']})"]
    if summary["steps_to_target"] is None:
        lines.append(f"no member reached {goal}")
    else:
        lines.append(f"steps to {goal}: {summary['steps_to_target']} ({summary['examples_to_target']:,} examples, "
                     f"{summary['seconds_to_target']:.1f} s, member {summary['member_at_target']}; resolution "
                     f"{summary.get('steps_to_target_resolution', '?')} steps), model-steps to target "
                     f"{summary['model_steps_to_target']:,}")
    lines.append(f"best member {best['member']}: {key} {records.cell(best.get('final_' + key), 0, '.4f')}, "
                 f"test {metric} {records.cell(best.get('final_test_' + metric), 0, '.4f')}; its lineage's schedule:")
    lines.append(f"{'from step':>9}  {'slot':>4}  " + "  ".join(f"{n:>13}" for n in names))
    first = best["schedules"][names[0]]
    for i, step in enumerate(first["step"]):
        lines.append(f"{step:>9d}  {first['slot'][i]:>4d}  "
                     + "  ".join(f"{best['schedules'][n][n][i]:>13.4g}" for n in names))
    lines.append(f"{'member':>6}  {'status':<9}  " + "  ".join(f"{n:>13}" for n in names)
                 + f"  {key:>14}  {'test_' + metric:>13}")
    for m in summary["final_members"]:
        lines.append(f"{m['member']:>6d}  {m['status']:<9}  "
                     + "  ".join(f"{m['hyperparameters'][n]:>13.4g}" for n in names)
                     + f"  {records.cell(m.get('final_' + key), 14, '.4f')}  "
                     f"{records.cell(m.get('final_test_' + metric), 13, '.4f')}")
    return "\n".join(lines)


EXPERIMENT = "pbt"


class PBTRun(StudyResult):
    """A PBT run's results (its results.json as `summary`), with the printed report and the figure."""

    FIGURE = "pbt.png"

    def report(self) -> str:
        text = format_summary(self.summary)
        timing = self.summary["timing"]
        return (text + f"\ncompile {timing['compile_seconds']:.1f} s, training {timing['train_seconds']:.1f} s, "
                f"ready events {timing['exploit_seconds']:.1f} s")

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.pbt_lineage(s, path, title=f"PBT of {s['optimizer']} on {s['model']['name']}, {s['dataset']}: "
                                         f"{s['members']} members, ready every {s['pbt']['ready_steps']} steps, "
                                         f"truncation {s['pbt']['truncation']:g}")


def pbt(task: Task, members: Members, cfg: PBTConfig = PBTConfig(), settings: SweepSettings = SweepSettings(),
        workdir: Any = None, *, stop: stop_lib.StopSignal | None = None, overwrite: bool = False,
        exploit_seed: int | None = None, info: dict[str, Any] | None = None) -> PBTRun:
    """PBT of one population on `task`, as `python -m lrlab.experiments.pbt` runs it: with a
    `workdir`, resumable, and writing results.json and pbt.png there. `cfg.explore` takes Bounds or
    the command line's strings ("learning_rate:1e-4:0.3")."""
    cfg = cfg.resolved(members.optimizer)

    def train(scope: Scope) -> Trained:
        result = run_pbt(task, members, cfg, settings, scope=scope, stop=stop, exploit_seed=exploit_seed)
        body = {"pbt": cfg.to_json(), **result_json(result, task.target_key, test_metrics(result.engine, result.final),
                                                    settings.batch_size)}
        return Trained(body, members=member_records({**records.task_header(task, settings), **body}))

    return run(EXPERIMENT, PBTRun, identity=api_identity(task, [members], settings, pbt=cfg.to_json()), task=task,
               settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
