"""Valleys side by side: the same members trained once per variant of the run (a learning-rate
schedule, a training technique), one population each, and their valleys overlaid.

    lrlab.schedules(task, lrlab.grid("adam", learning_rate=rates), {"constant": None, "step": spec})
    lrlab.techniques(task, members, names=["baseline", "bfloat16", "early_stopping"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from lrlab.engine.stop import StopSignal
from lrlab.optim.members import Members
from lrlab.store import plots
from lrlab.store import records as records_lib
from lrlab.store import valleys as valleys_lib
from lrlab.store.result import StudyResult
from lrlab.store.workdir import NO_SCOPE, Scope
from lrlab.task.task import Task
from lrlab.training.settings import SweepSettings
from lrlab.training.sweep import run_sweep

TECHNIQUES = ("baseline", "bfloat16", "float16", "batch_norm", "augment", "early_stopping")


def parse_names(entries: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """A comma list's entries -> names in the given order; ValueError naming an unknown or repeated
    one, or none given (`what`: "schedule", "technique")."""
    names = [n.strip() for n in entries if n.strip()]
    if not names:
        raise ValueError(f"name at least one {what}: {', '.join(allowed)}")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}: choose from {', '.join(allowed)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{what} listed twice: {', '.join(twice)}")
    return names


def technique_variant(name: str, task: Task, settings: SweepSettings, *, batch_norm_task: Task | None = None,
                      patience: int = 5) -> tuple[Task, SweepSettings]:
    """`task` and `settings` with technique `name` switched on: 16-bit compute, the task with batch
    normalization (`batch_norm_task`), the task's augmentation, early stopping after `patience`."""
    if name == "baseline":
        return task, settings
    if name in ("bfloat16", "float16"):
        return task, dataclasses.replace(settings, dtype=name)
    if name == "batch_norm":
        if batch_norm_task is None:
            raise ValueError("the batch_norm technique needs the task's model with batch normalization "
                             "(batch_norm_task)")
        return batch_norm_task, settings
    if name == "augment":
        return task, dataclasses.replace(settings, augment=True)
    if name == "early_stopping":
        return task, dataclasses.replace(settings, patience=patience)
    raise ValueError(f"unknown technique {name!r}: choose from {', '.join(TECHNIQUES)}")


def train_variants(variants: Mapping[str, tuple[Task, SweepSettings]], members: Members, field: str, *,
                   scope: Scope = NO_SCOPE, stop: StopSignal | None = None,
                   ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One population of `members` per variant (its task and settings), each checkpointed in
    scope/<variant>/; returns the member records, each with `field` = its variant's name, and
    per-variant timing."""
    records_all, timing = [], {}
    for n, (name, (task, settings)) in enumerate(variants.items()):
        logging.info("%s %s (%d of %d)", field, name, n + 1, len(variants))
        records, stats = run_sweep(task, [members], settings, scope=scope.child(name), stop=stop)
        records_all += [{field: name, **r} for r in records]
        timing[name] = stats[members.name]
        logging.info("%s %s: %d of %d rates reached the target; compile %.1f s, training %.1f s", field, name,
                     sum(r["status"] == "reached" for r in records), len(records), timing[name]["compile_seconds"],
                     timing[name]["train_seconds"])
    return records_all, timing


class VariantsRun(StudyResult):
    """The results of a schedules or techniques run (its results.json as `summary`): each variant's
    valley summary, the rate x variant table, and the overlaid figure (<experiment>.png)."""

    @property
    def FIGURE(self) -> str:  # noqa: N802 - the class attribute of other results
        return f"{self.summary['experiment']}.png"

    @property
    def field(self) -> str:
        return self.summary["field"]

    def valleys(self) -> dict[str, dict[str, Any]]:
        return {name: v["summary"] for name, v in self.summary[self.summary["experiment"]].items()}

    def report(self) -> str:
        s = self.summary
        what = "peak learning rate" if self.field == "schedule" else "learning rate"
        lines = [f"steps to target per {what} and {self.field}:", valleys_lib.valley_matrix(s["members"], self.field), "",
                 valleys_lib.summaries_table(self.valleys(), self.field, s["steps_to_target_resolution"])]
        if self.field == "technique":
            lines += [f"{name}: compile {t['compile_seconds']:.1f} s, training {t['train_seconds']:.1f} s"
                      for name, t in s["timing"].items()]
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        s = self.summary
        plots.valleys_overlaid(s["members"], path, field=self.field, budget_steps=s["max_steps"],
                               eval_every=s["steps_to_target_resolution"],
                               title=f"{s['experiment'].capitalize()}: {s['optimizer']}, {s['model']['name']} on "
                                     f"{s['dataset']}, target {records_lib.target_text(s)}"
                                     f"{s.get('title_suffix', '')}")


def variants_identity(task: Task, members: Members, settings: SweepSettings,
                      variants: Mapping[str, tuple[Task, SweepSettings]]) -> dict[str, Any]:
    """What a schedules or techniques workdir must match: the task, the members, the settings and
    each variant's task and settings."""
    return {"task": task.identity(), "population": {members.name: members.to_json()}, "settings": settings.to_json(),
            "variants": {name: {"task": t.identity(), "settings": s.to_json()} for name, (t, s) in variants.items()}}


def variants_body(experiment: str, field: str, members: Members, variants: Mapping[str, Any],
                  specs: Mapping[str, Any], records: list[dict[str, Any]], timing: dict[str, Any],
                  title_suffix: str = "") -> dict[str, Any]:
    """results.json's body of a schedules or techniques run: each variant's valley summary (and
    spec), the timing and the member records."""
    summaries = valleys_lib.valley_summaries(records, field)
    return {"field": field, "optimizer": members.name, "title_suffix": title_suffix,
            experiment: {name: {**({"spec": specs[name]} if name in specs else {}), "summary": summaries[name]}
                         for name in variants},
            "timing": timing, "members": records}
