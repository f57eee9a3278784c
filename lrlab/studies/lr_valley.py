"""The learning-rate valley: steps to target against learning rate, one population per optimizer
(or per population of any hyperparameter grid), as a library call.

    task = lrlab.image_classification(my_cnn, "mnist")
    result = lrlab.lr_valley(task, lrlab.grid("adam", learning_rate=np.geomspace(1e-6, 100, 48)),
                             workdir="runs/valley")
    print(result.report()); result.best(); result.band()

With a workdir it writes what `python -m lrlab.experiments.lr_valley` writes (results.json,
results_orbax/, valley.png, envelope.png with several valleys) and checkpoints while training: the
same call with the same workdir resumes it, and returns a finished run's results without training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.store import plots, ranking
from lrlab.store import records as records_lib
from lrlab.store import valleys as valleys_lib
from lrlab.store.result import StudyResult, Trained
from lrlab.store.workdir import Scope
from lrlab.studies.run import run
from lrlab.task.task import Task
from lrlab.training import replicates
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import api_identity, run_sweep

EXPERIMENT = "lr_valley"


class ValleyResult(StudyResult):
    """An lr_valley run's results (its results.json as `summary`): per-member records, the best
    rate and the band of each valley, the printed table and the figures."""

    FIGURE = "valley.png"

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.summary["members"]

    @property
    def groups(self) -> list[str]:
        """The valleys: one per population, and per value of the other hyperparameters it varies."""
        return list(dict.fromkeys(records_lib.group_of(r) for r in self.records))

    def _members(self, group: str | None) -> list[dict[str, Any]]:
        if group is None:
            if len(self.groups) > 1:
                raise ValueError(f"name the valley: one of {', '.join(self.groups)}")
            return self.records
        return [r for r in self.records if records_lib.group_of(r) == group]

    def best(self, group: str | None = None) -> dict[str, Any] | None:
        """The valley's best member (`ranking.best_member`: lrlab's one ranking rule), None if no rate reached the target."""
        return ranking.best_member(self._members(group))

    def best_median(self, group: str | None = None) -> dict[str, Any] | None:
        """With several seeds: the valley's rate of lowest median steps (`replicates.best`: the same
        rule, a rate's median as its steps), as its aggregate row; None if no rate's median reached
        the target or there is one seed."""
        rows = self.summary.get("rate_aggregates")
        if not rows:
            return None
        if group is None:
            group = records_lib.group_of(self._members(None)[0])
        return replicates.best(r for r in rows if r["group"] == group)

    def band(self, group: str | None = None) -> tuple[float, float] | None:
        """The lowest and highest learning rate of the valley that reached the target."""
        return ranking.reached_band(self._members(group))

    def valleys(self) -> dict[str, dict[str, Any]]:
        """Each valley's headline numbers (`valleys.valley_summary`)."""
        return {g: valleys_lib.valley_summary(self._members(g)) for g in self.groups}

    def table(self) -> str:
        return valleys_lib.format_table(self.records, self.summary["steps_to_target_resolution"],
                                    self.summary.get("target_key", "train_accuracy"))

    def report(self) -> str:
        """What the command prints: the table, the rates that trained in some valley, the timing."""
        lines = [self.table()]
        envelope = self.summary.get("envelope")
        if envelope is not None:
            band = self.summary["trained_band"]
            trained = sum(row["reached"] > 0 for row in envelope)
            lines.append("rates that trained with at least one optimizer: "
                         + (f"{band[0]:.4g} to {band[1]:.4g} ({trained} of {len(envelope)})" if band else "none"))
        for group in self.groups if self.summary.get("rate_aggregates") else ():
            best = self.best_median(group)
            lines.append(f"{group}, median across seeds: " + ("no rate's median reached the target" if best is None else
                         f"best {best['learning_rate']:.4g} ({best['median_steps']:g} steps, interquartile range "
                         + (f"{best['iqr_steps']:g})" if best["iqr_steps"] is not None else "to a miss)")))
        for name, s in self.summary.get("timing", {}).items():
            lines.append(f"{name}: {s['mode']}, {s['members']} members, compile {s['compile_seconds']:.1f} s, "
                         f"training {s['train_seconds']:.1f} s")
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        """valley.png: steps to target against learning rate, one line per valley (with several seeds:
        the median and the interquartile range per rate)."""
        s = self.summary
        if s.get("rate_aggregates"):
            plots.valley_seeds(s["rate_aggregates"], path, budget_steps=s["max_steps"],
                               eval_every=s["steps_to_target_resolution"],
                               title=f"Learning-rate valley, {len(s['rate_aggregates'][0]['seeds'])} seeds: "
                                     f"{s['model']['name']} on {s['dataset']}, target {records_lib.target_text(s)}")
            return
        plots.valley(self.records, path, budget_steps=s["max_steps"], eval_every=s["steps_to_target_resolution"],
                     title=f"Learning-rate valley: {s['model']['name']} on {s['dataset']}, target "
                           f"{records_lib.target_text(s)}")

    def plot_envelope(self, path: Any) -> None:
        """envelope.png: the fastest and slowest valley per learning rate."""
        s = self.summary
        plots.envelope(s["envelope"], path, eval_every=s["steps_to_target_resolution"], cap=s["max_steps"],
                       title=f"Fastest and slowest of {len(self.groups)} optimizers: {s['model']['name']} on "
                             f"{s['dataset']}, target {records_lib.target_text(s)}")

    def figures(self) -> dict[str, Any]:
        figures = super().figures()
        if self.summary.get("envelope") is not None:
            figures["envelope.png"] = self.plot_envelope
        return figures


def _populations(populations: Members | Sequence[Members]) -> list[Members]:
    return [populations] if isinstance(populations, Members) else list(populations)


def lr_valley(task: Task, populations: Members | Sequence[Members], settings: SweepSettings = SweepSettings(),
              workdir: Any = None, *, stop: StopSignal | None = None, overwrite: bool = False,
              info: Mapping[str, Any] | None = None) -> ValleyResult:
    """Trains each population (`grid(...)` members) on `task` and returns the valleys.

    `workdir` (a path, or a `workdir.Workdir`): resume from it and write the results there.
    `info` joins results.json (the command line's flags). A SIGTERM / Ctrl-C caught by `stop`
    checkpoints and raises `stop.Interrupted`.
    """
    populations = _populations(populations)

    def train(scope: Scope) -> Trained:
        records, stats = run_sweep(task, populations, settings, scope=scope, stop=stop)
        body: dict[str, Any] = {"timing": stats, "members": records}
        if settings.seeds > 1:
            body["rate_aggregates"] = replicates.aggregate(records)
        if len({records_lib.group_of(r) for r in records}) > 1:  # with seeds: each rate's median per valley
            envelope = valleys_lib.envelope(replicates.median_records(body["rate_aggregates"]) if settings.seeds > 1
                                        else records, cap=settings.budget.max_steps)
            body["envelope"], body["trained_band"] = envelope, valleys_lib.trained_band(envelope)
        return Trained(body, members=records, orbax=records_lib.orbax_tree(records))

    return run(EXPERIMENT, ValleyResult, identity=api_identity(task, populations, settings), task=task,
               settings=settings, train=train, workdir=workdir, overwrite=overwrite, info=info)
