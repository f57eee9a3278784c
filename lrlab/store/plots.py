"""Matplotlib figures, written atomically: the learning-rate valley."""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np

from lrlab.store import (
    files,
    valleys,  # noqa: E402
)
from lrlab.store import records as records_lib

matplotlib.use("Agg")


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Renders to memory, then writes atomically: a crash never leaves half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    files.atomic_write(pathlib.Path(path), lambda f: f.write(buf.getvalue()))


def _save_steps_vs_rate(fig: plt.Figure, ax: plt.Axes, path: str | os.PathLike, eval_every: int, title: str) -> None:
    """Log-log axes of steps to target against learning rate, labelled, then saved."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"steps to target (resolution {eval_every} steps)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def valley(records: list[dict[str, Any]], path: str | os.PathLike, *, budget_steps: int,
           eval_every: int, title: str = "") -> None:
    """Steps to target against learning rate (log-log), one line per valley (optimizer).

    Runs that missed the target are gaps in the line, marked on the budget line: x for diverged,
    o for exhausted, v for pruned (--prune), s for stopped (--early_stopping), < for retired (at chance or
    out of pace, --retire).
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    optimizers = list(dict.fromkeys(records_lib.group_of(r) for r in records))
    for _n, opt in enumerate(optimizers):
        rows = sorted((r for r in records if records_lib.group_of(r) == opt), key=lambda r: r["learning_rate"])
        lrs = [r["learning_rate"] for r in rows]
        steps = [r["steps_to_target"] if r["steps_to_target"] is not None else float("nan") for r in rows]
        (line,) = ax.plot(lrs, steps, "-", marker=".", label=opt)
        color = line.get_color()
        for status, marker in (("diverged", "x"), ("exhausted", "o"), ("pruned", "v"), ("stopped", "s"),
                               ("retired", "<")):
            failed = [r["learning_rate"] for r in rows if r["status"] == status]
            if failed:
                ax.plot(failed, [budget_steps] * len(failed), linestyle="none", marker=marker,
                        markerfacecolor="none", color=color,
                        label=f"{opt} {status}" if len(optimizers) > 1 else status)
    ax.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":")
    _save_steps_vs_rate(fig, ax, path, eval_every, title or "Learning-rate valley")


def envelope(envelope_rows: list[dict[str, Any]], path: str | os.PathLike, *, eval_every: int,
             title: str = "", cap: int | None = None) -> None:
    """For each learning rate, the fastest and the slowest optimizer's steps to target (log-log),
    the range between them shaded and the band of rates that trained with any optimizer marked.
    With `cap` (the budget), also the article's reading: the slowest at the cap wherever any
    optimizer missed (rows' `article_slowest_steps`)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    rows = [row for row in envelope_rows if row["reached"]]
    nan = float("nan")  # rates no optimizer trained break the lines
    lrs = [row["learning_rate"] for row in envelope_rows]
    fast = [row["fastest_steps"] if row["reached"] else nan for row in envelope_rows]
    slow = [row["slowest_steps"] if row["reached"] else nan for row in envelope_rows]
    if rows:
        ax.fill_between(lrs, fast, slow, color="tab:blue", alpha=0.15, linewidth=0)
        ax.plot(lrs, fast, "-", marker=".", color="tab:green", label="fastest optimizer")
        ax.plot(lrs, slow, "-", marker=".", color="tab:red", label="slowest optimizer (that reached it)")
        if cap is not None:
            ax.plot(lrs, [row.get("article_slowest_steps", cap) for row in envelope_rows], "--", color="tab:purple",
                    linewidth=1, label=f"slowest as the article drew it (a miss at the cap, {cap} steps)")
        previous = None
        for row in rows:  # name the fastest optimizer where it changes
            if row["fastest"] != previous:
                ax.annotate(row["fastest"], (row["learning_rate"], row["fastest_steps"]), fontsize=7,
                            textcoords="offset points", xytext=(0, -10), ha="center", color="tab:green")
            previous = row["fastest"]
        band = valleys.trained_band(envelope_rows)
        ax.axvspan(band[0], band[1], color="grey", alpha=0.08,
                   label=f"trained with at least one optimizer: {band[0]:.3g} to {band[1]:.3g}")
    else:
        ax.text(0.5, 0.5, "no learning rate reached the target", transform=ax.transAxes, ha="center")
    _save_steps_vs_rate(fig, ax, path, eval_every, title or "Envelope: fastest and slowest optimizer per learning rate")


def scaling(members: list[dict[str, Any]], fits: list[dict[str, Any]], best: list[dict[str, Any]],
            path: str | os.PathLike, *, title: str = "") -> None:
    """model_scaling's figure: seconds to target against parameter count (one marker series per
    rate, with its fitted line t = c + k*n), and the best rate per width (log y) against parameters."""
    fig, (ax_time, ax_best) = plt.subplots(1, 2, figsize=(13, 5))
    for fit in fits:
        lr = fit["learning_rate"]
        reached = sorted((m["parameters"], m["seconds_to_target"]) for m in members
                         if m["learning_rate"] == lr and m["status"] == "reached")
        line_fit = fit["seconds"]
        r2 = f", R^2 {line_fit['r2']:.3f}" if line_fit["r2"] is not None else ""
        (points,) = ax_time.plot([n for n, _ in reached], [t for _, t in reached], linestyle="none",
                                 marker="o", label=f"lr {lr:.4g}{r2}" if reached else f"lr {lr:.4g}: never reached")
        if line_fit["c"] is not None:
            n_ends = [reached[0][0], reached[-1][0]]
            ax_time.plot(n_ends, [line_fit["c"] + line_fit["k"] * n for n in n_ends], "-", linewidth=1,
                         color=points.get_color())
    ax_time.set_xlabel("parameters")
    ax_time.set_ylabel("seconds to target")
    ax_time.set_title("Time to target (lines: least-squares fits)")
    ax_time.grid(True, alpha=0.3)
    ax_time.legend(fontsize=8)
    found = [b for b in best if b["learning_rate"] is not None]
    ax_best.plot([b["parameters"] for b in found], [b["learning_rate"] for b in found], "-", marker="o")
    missing = len(best) - len(found)
    for fit in fits:  # the rates tried, so a flat line reads as "the same rate won", not as noise
        ax_best.axhline(fit["learning_rate"], color="grey", linewidth=0.6, linestyle=":")
    ax_best.set_yscale("log")
    ax_best.set_xlabel("parameters")
    ax_best.set_ylabel("best learning rate (fewest steps to target)")
    ax_best.set_title("Best rate per width" + (f" ({missing} widths: none reached)" if missing else ""))
    ax_best.grid(True, which="both", alpha=0.3)
    fig.suptitle(title or "Model scaling")
    save_figure(fig, path)


def optimizer_curves(entries: dict[str, dict[str, Any]], path: str | os.PathLike, *, target: dict[str, Any],
                     title: str = "") -> None:
    """optimizer_comparison's figure: the target metric on the test subset against steps and against
    training seconds, one line per optimizer at its learning rate, and the goal as a dashed line
    (an accuracy on a logit axis: 0.9 to 0.99 gets as much room as 0.5 to 0.9)."""
    metric = target["metric"]
    fig, (ax_steps, ax_seconds) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for name, entry in entries.items():
        curve = entry["test_curve"]
        label = f"{name} (lr {entry['learning_rate']:.3g})"
        (line,) = ax_steps.plot(curve["step"], curve[f"test_{metric}"], "-", linewidth=1.2, label=label)
        ax_seconds.plot(curve["seconds"], curve[f"test_{metric}"], "-", linewidth=1.2, color=line.get_color(),
                        label=label)
    for ax, xlabel in ((ax_steps, "training steps"),
                       (ax_seconds, "training seconds (compilation and evaluations excluded)")):
        ax.axhline(target["goal"], color="black", linewidth=0.8, linestyle="--",
                   label=f"target {target['goal']:g} (evaluation set)")
        if metric == "accuracy":
            ax.set_yscale("logit", nonpositive="clip")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    ax_steps.set_ylabel(f"test {metric} (fixed test subset)")
    ax_steps.legend(fontsize=8, loc="lower right" if target["mode"] == "max" else "upper right")
    fig.suptitle(title or "Optimizers at their best learning rates")
    save_figure(fig, path)


def valleys_overlaid(records: list[dict[str, Any]], path: str | os.PathLike, *, field: str, budget_steps: int,
                     eval_every: int, title: str = "") -> None:
    """Several valleys of one optimizer overlaid (one per value of `field`, e.g. "schedule"): steps
    to target against learning rate (log-log), one line with markers each; rates that missed the
    target are gaps, marked near the budget line (x diverged, o exhausted, v pruned, s stopped, < retired;
    each group a little apart). Below, each group's band of rates that reached the target as a horizontal bar, with a
    dot per rate that reached it (so gaps in a band show)."""
    groups = list(dict.fromkeys(r[field] for r in records))
    fig, (ax, ax_band) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [4, 0.35 + 0.25 * len(groups)], "hspace": 0.2})
    nan = float("nan")
    for n, group in enumerate(groups):
        rows = sorted((r for r in records if r[field] == group), key=lambda r: r["learning_rate"])
        lrs = [r["learning_rate"] for r in rows]
        steps = [r["steps_to_target"] if r["status"] == "reached" else nan for r in rows]
        (line,) = ax.plot(lrs, steps, "-", marker=".", markersize=7, linewidth=1.3, label=str(group))
        color = line.get_color()
        level = budget_steps * 1.06 ** n  # groups' failure markers stacked just above the budget line
        for status, marker in (("diverged", "x"), ("exhausted", "o"), ("pruned", "v"), ("stopped", "s"),
                               ("retired", "<")):
            failed = [r["learning_rate"] for r in rows if r["status"] == status]
            if failed:
                ax.plot(failed, [level] * len(failed), linestyle="none", marker=marker, markersize=5,
                        markerfacecolor="none", color=color, alpha=0.8)
        reached = [r["learning_rate"] for r in rows if r["status"] == "reached"]
        y = len(groups) - 1 - n
        if reached:
            ax_band.plot([min(reached), max(reached)], [y, y], "-", linewidth=6, alpha=0.35, color=color,
                         solid_capstyle="butt")
            ax_band.plot(reached, [y] * len(reached), linestyle="none", marker="o", markersize=3, color=color)
            ax_band.annotate(f"{len(reached)}", (max(reached), y), textcoords="offset points", xytext=(6, -3),
                             fontsize=7, color=color)
        else:
            ax_band.text(0.01, y, "none reached", transform=ax_band.get_yaxis_transform(), fontsize=7,
                         color=color, va="center")
    ax.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":")
    statuses = {r["status"] for r in records}
    for status, marker, label in (("diverged", "x", "diverged"), ("exhausted", "o", "exhausted the budget"),
                                  ("pruned", "v", "pruned"), ("stopped", "s", "stopped early"),
                                  ("retired", "<", "retired (hopeless)")):
        if status in statuses:
            ax.plot([], [], linestyle="none", marker=marker, markerfacecolor="none", color="grey",
                    label=f"{label} (above the budget line)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel(f"steps to target (resolution {eval_every} steps)")
    ax.set_title(title or f"Learning-rate valleys per {field}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax_band.set_yticks(range(len(groups)), [str(g) for g in reversed(groups)], fontsize=8)
    ax_band.set_ylim(-0.7, len(groups) - 0.3)
    ax_band.set_xlabel("learning rate (peak of the schedule)" if field == "schedule" else "learning rate")
    ax_band.set_title("rates that reached the target (bar: lowest to highest; number: how many)", fontsize=8)
    ax_band.grid(True, axis="x", which="both", alpha=0.3)
    save_figure(fig, path)


def lr_range_test(records: list[dict[str, Any]], path: str | os.PathLike, *,
                  known_best: dict[str, tuple[float, float]] | None = None, title: str = "") -> None:
    """lr_finder's figure, one panel per optimizer (records: lr_finder.FinderResult.to_json()): the
    smoothed loss averaged over seeds against the rate (log x), each seed's raw loss light behind it,
    a vertical line per rule's suggestion, and `known_best` (optimizer -> lowest, highest rate) shaded."""
    import numpy as np

    fig, axes = plt.subplots(len(records), 1, figsize=(8, 4.4 * len(records)), squeeze=False,
                             gridspec_kw={"hspace": 0.4})
    colors = {"steep": "tab:red", "minimum": "tab:green", "valley": "tab:purple"}
    for ax, rec in zip(axes[:, 0], records):
        as_array = lambda v: np.array([[np.nan if x is None else x for x in row] for row in v], np.float64)
        lr = np.asarray(rec["lr_S"], np.float64)
        loss_KS, smoothed = as_array(rec["loss_KS"]), as_array([rec["smoothed_S"]])[0]
        for k, row in enumerate(loss_KS):
            ax.plot(lr, row, "-", linewidth=0.6, alpha=0.25, color="grey", label="each seed (raw)" if k == 0 else None)
        ax.plot(lr, smoothed, "-", linewidth=1.8, color="tab:blue",
                label=f"smoothed mean of {len(loss_KS)} seeds")
        for rule, pick in rec["suggestions"].items():
            if pick is not None:
                ax.axvline(pick["learning_rate"], color=colors.get(rule, "black"), linestyle="--", linewidth=1,
                           label=f"{rule}{' / 10' if rule == 'minimum' else ''}: {pick['learning_rate']:.3g}")
        if known_best and rec["optimizer"] in known_best:
            low, high = known_best[rec["optimizer"]]
            ax.axvspan(low, high, color="gold", alpha=0.25, label=f"best in the valley: {low:.3g}-{high:.3g}")
        finite = smoothed[np.isfinite(smoothed)]
        if finite.size:  # the smoothed curve's range, not the raw spikes past divergence
            low, start = finite.min(), finite[0]
            ax.set_ylim(0.9 * min(low, np.nanmin(loss_KS)), 1.15 * max(start, min(4 * low, finite.max())))
        if rec["diverged_at"] is not None:
            ax.axvline(lr[rec["diverged_at"]], color="black", linewidth=0.6, linestyle=":",
                       label="diverged (smoothed > 4x its minimum)")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (exponential ramp, one step each)")
        ax.set_ylabel("training loss")
        ax.set_title(f"{rec['optimizer']}: {rec['steps_run']} of {rec['num_steps']} steps, "
                     f"{rec['lr_min']:.3g} to {rec['lr_max']:.3g}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title or "Learning-rate range test")
    save_figure(fig, path)


def search_trials(trials: list[dict[str, Any]], trace: list[dict[str, Any]], rounds: list[dict[str, Any]],
                  path: str | os.PathLike, *, budget_steps: int, eval_every: int, title: str = "") -> None:
    """random_search / bayes_search's figure. Left: each trial's objective against its learning rate
    (log-log), coloured by round: steps to target when reached (filled), above the budget line when
    missed (hollow o, ranked by best accuracy; x diverged); the best starred. Right: the incumbent's
    objective against the model-steps spent so far, round ends marked."""
    fig, (ax, ax_inc) = plt.subplots(1, 2, figsize=(13, 5))
    n_rounds = max([t["round"] for t in trials], default=0) + 1
    colors = (plt.get_cmap("tab10")(range(n_rounds)) if n_rounds <= 10
              else plt.get_cmap("viridis")([i / (n_rounds - 1) * 0.9 for i in range(n_rounds)]))
    for r in range(n_rounds):
        rows = [t for t in trials if t["round"] == r]
        label = "samples" if n_rounds == 1 else f"round {r + 1}"
        for status, marker, filled in (("reached", "o", True), ("missed", "o", False), ("diverged", "x", True)):
            pick = [t for t in rows if (t["status"] if t["status"] in ("reached", "diverged") else "missed") == status]
            if pick:
                ax.plot([t["learning_rate"] for t in pick], [t["objective"] for t in pick], linestyle="none",
                        marker=marker, markersize=6, color=colors[r], markerfacecolor=colors[r] if filled else "none",
                        label=label)
                label = None  # one legend entry per round
    best = min(trials, key=lambda t: (t["objective"], t["index"])) if trials else None
    if best is not None:
        ax.plot([best["learning_rate"]], [best["objective"]], linestyle="none", marker="*", markersize=15,
                markerfacecolor="none", color="tab:red", label=f"best: lr {best['learning_rate']:.3g}")
    for a in (ax, ax_inc):
        a.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":",
                  label=None if a is ax else f"budget {budget_steps} steps (above: none reached the target yet)")
    ax.plot([], [], linestyle="none", marker="o", markerfacecolor="none", color="grey",
            label="missed (above the budget line: lower = better accuracy)")
    ax.plot([], [], linestyle="none", marker="x", color="grey", label="diverged (top)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"objective: steps to target (resolution {eval_every}); missed above {budget_steps}")
    ax.set_title("Trials")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    if trace:
        ax_inc.step([p["cumulative_model_steps"] for p in trace], [p["incumbent_objective"] for p in trace],
                    where="post", color="tab:blue", label="incumbent after each trial")
        ax_inc.plot([e["cumulative_model_steps"] for e in rounds], [e["incumbent_objective"] for e in rounds],
                    linestyle="none", marker="o", color="tab:red", label="end of a round")
    ax_inc.set_yscale("log")
    ax_inc.set_xlabel("model-steps spent (sum of every trial's training steps)")
    ax_inc.set_ylabel("incumbent objective (best so far)")
    ax_inc.set_title("Best so far against compute")
    ax_inc.grid(True, which="both", alpha=0.3)
    ax_inc.legend(fontsize=8)
    for a in (ax, ax_inc):
        a.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        a.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    fig.suptitle(title or "Hyperparameter search")
    save_figure(fig, path)


def pbt_lineage(summary: dict[str, Any], path: str | os.PathLike, *, title: str = "") -> None:
    """The PBT experiment's figure (from its results.json): left, the learning rate over steps of
    the best final member's lineage (log y), every member's in light grey; right, the target metric
    over steps of every member (light) and of the best lineage (bold), the target dashed."""
    fig, (ax_lr, ax_acc) = plt.subplots(1, 2, figsize=(13, 5))
    curves, best = summary["curves"], summary["best"]
    end = curves["step"][-1] if curves["step"] else 0
    every = summary["hyperparameter_schedules"]
    starts = every["step"] + [end]
    for slot in range(summary["members"]):
        values = [row[slot] for row in every["learning_rate"]]
        ax_lr.plot(starts, values + values[-1:], drawstyle="steps-post", color="grey", alpha=0.35, linewidth=0.8)
    schedule = best["schedules"].get("learning_rate")
    if schedule is not None:
        values = schedule["learning_rate"]
        ax_lr.plot(schedule["step"] + [end], values + values[-1:], drawstyle="steps-post", color="tab:red",
                   linewidth=2, label=f"best lineage (member {best['member']})")
    for step in every["step"][1:]:
        ax_lr.axvline(step, color="grey", linewidth=0.4, linestyle=":")
    ax_lr.plot([], [], color="grey", alpha=0.5, label="every member")
    ax_lr.set_yscale("log")
    ax_lr.set_xlabel("training steps (dotted: ready events)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("Learning rate over steps")
    ax_lr.grid(True, which="major", alpha=0.3)
    ax_lr.legend(fontsize=8)
    key = summary.get("target_key", "train_accuracy")
    steps, value_TK = curves["step"], curves[key]
    for slot in range(summary["members"]):
        ax_acc.plot(steps, [row[slot] for row in value_TK], color="grey", alpha=0.35, linewidth=0.8)
    ax_acc.plot(steps, curves[f"best_lineage_{key}"], color="tab:red", linewidth=2,
                label=f"best lineage (member {best['member']})")
    goal = summary["target"]["goal"] if "target" in summary else summary["target_accuracy"]
    ax_acc.axhline(goal, color="black", linewidth=0.8, linestyle="--", label=f"target {goal:g}")
    if summary["steps_to_target"] is not None:
        ax_acc.axvline(summary["steps_to_target"], color="tab:green", linewidth=0.8,
                       label=f"first member at target: step {summary['steps_to_target']}")
    if key.endswith("accuracy"):
        ax_acc.set_yscale("logit", nonpositive="clip")
        ax_acc.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax_acc.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_acc.set_xlabel("training steps")
    ax_acc.set_ylabel(key.replace("_", " "))
    ax_acc.set_title(f"The population's {key.replace('_', ' ')} (each slot; copies jump at ready events)")
    ax_acc.grid(True, alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Population Based Training")
    save_figure(fig, path)


def search_compare(rows: list[dict[str, Any]], path: str | os.PathLike, *, good_factor: float = 1.1,
                   title: str = "") -> None:
    """search_compare's figure: each method/seed's cost (model-steps, log) against its found rate's
    steps to target / S* (log), one marker per method; a miss is drawn hollow at the top edge; the
    line at `good_factor` separates good rates (below) from the rest."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    markers = ["s", "D", "o", "v", "^", "P", "X", "*", "h"]
    colors = plt.get_cmap("tab10")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    miss_y = max(ratios + [good_factor]) * 1.4
    for i, method in enumerate(methods):
        mine = [r for r in rows if r["method"] == method]
        hit = [r for r in mine if r["ratio"] is not None]
        miss = [r for r in mine if r["ratio"] is None]
        style = dict(linestyle="none", marker=markers[i % len(markers)], markersize=9, color=colors(i % 10), alpha=0.85)
        ax.plot([r["model_steps"] for r in hit], [r["ratio"] for r in hit], label=method, **style)
        if miss:
            ax.plot([r["model_steps"] for r in miss], [miss_y] * len(miss), markerfacecolor="none",
                    label=None if hit else method, **style)
    ax.axhline(good_factor, color="tab:red", linestyle="--", linewidth=1, label=f"{good_factor:g} x S* (good below)")
    ax.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
    if any(r["ratio"] is None for r in rows):
        ax.axhline(miss_y, color="grey", linewidth=0.6, linestyle=":", label="hollow at this line: missed the target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model-steps spent by the method (sum of every member's training steps)")
    ax.set_ylabel("found rate's steps to target / S*")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "Cost of finding a good learning rate")
    save_figure(fig, path)


def valley_seeds(rows: list[dict[str, Any]], path: str | os.PathLike, *, budget_steps: int, eval_every: int,
                 title: str = "") -> None:
    """The valley across seeds (replicates.aggregate rows): per valley the median steps to target
    (a miss counted as infinite: no point where half or more missed) with the interquartile range
    as a bar (reaching the budget line where the upper quartile is a miss), and every replicate as
    a faint dot; rates whose median is a miss are marked o on the budget line."""
    fig, ax = plt.subplots(figsize=(8, 5))
    nan = float("nan")
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for _n, group in enumerate(groups):
        cells = [r for r in rows if r["group"] == group]
        lrs = [r["learning_rate"] for r in cells]
        median = [nan if r["median_steps"] is None else r["median_steps"] for r in cells]
        (line,) = ax.plot(lrs, median, "-", marker=".", label=f"{group}: median of {len(cells[0]['seeds'])} seeds")
        color = line.get_color()
        for r in cells:
            if r["q1_steps"] is not None:
                top = budget_steps if r["q3_steps"] is None else r["q3_steps"]
                ax.plot([r["learning_rate"]] * 2, [r["q1_steps"], top], color=color, alpha=0.6, linewidth=2.5,
                        linestyle="-" if r["q3_steps"] is not None else ":")
            reached = [s for s in r["steps_to_target"] if s is not None]
            ax.plot([r["learning_rate"]] * len(reached), reached, linestyle="none", marker=".", markersize=3,
                    color=color, alpha=0.35)
        missed = [r["learning_rate"] for r in cells if r["median_steps"] is None]
        if missed:
            ax.plot(missed, [budget_steps] * len(missed), linestyle="none", marker="o", markerfacecolor="none",
                    color=color, label=f"{group}: median a miss" if len(groups) > 1 else "median a miss")
    ax.plot([], [], "-", color="grey", alpha=0.6, linewidth=2.5, label="interquartile range (dotted: to a miss)")
    ax.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":")
    _save_steps_vs_rate(fig, ax, path, eval_every, title or "Learning-rate valley across seeds")


def relative_valleys(records: list[dict[str, Any]], references: dict[str, tuple[float, bool]],
                     path: str | os.PathLike, *, budget_steps: int, title: str = "") -> None:
    """Steps to target (median over seeds) against each valley's rate over its reference
    (`references`: name -> (reference, tuned): an LR-free method's default, multiplier 1; a tuned
    optimizer's best rate, drawn bold), log-log: where each is flat."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for n, (name, (reference, tuned)) in enumerate(references.items()):
        rows = [r for r in records if r["optimizer"] == name]
        rates = sorted({r["learning_rate"] for r in rows})
        steps = []
        for rate in rates:
            at = [r["steps_to_target"] for r in rows if r["learning_rate"] == rate]
            steps.append(float(np.median(at)) if all(s is not None for s in at) else float("nan"))
        ax.plot(np.asarray(rates) / reference, steps, "-" if tuned else ("--", ":", "-.")[n % 3],
                marker="." if tuned else "", linewidth=2.2 if tuned else 1.2, color="black" if tuned and n == 0 else
                colors[(2 * n) % 20 + (n // 10) % 2], label=f"{name} (rate / best {reference:.3g})" if tuned else name)
    ax.axvline(1.0, color="grey", linewidth=0.6, linestyle=":")
    ax.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate over the reference (LR-free: the multiplier; tuned: over its best rate)")
    ax.set_ylabel("steps to target (median over seeds)")
    ax.set_title(title or "Valleys relative to each method's default")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def performance_profile(ratios: dict[str, dict[str, float | None]], path: str | os.PathLike, *,
                        title: str = "", max_ratio: float = 4.0) -> None:
    """AlgoPerf's performance profile: per method, the fraction of tasks (the keys of `ratios`, each
    {method: time-to-target ratio, None for a miss}) it trains within tau of the fastest, against tau."""
    fig, ax = plt.subplots(figsize=(8, 5))
    methods = list(dict.fromkeys(m for per_task in ratios.values() for m in per_task))
    taus = np.linspace(1.0, max_ratio, 301)
    colors = plt.cm.tab20(np.linspace(0, 1, 20))
    for n, method in enumerate(methods):
        got = [per_task.get(method) for per_task in ratios.values()]
        frac = [np.mean([r is not None and r <= tau for r in got]) for tau in taus]
        ax.step(taus, frac, where="post", label=method, color=colors[(2 * n) % 20 + (n // 10) % 2],
                linestyle=("-", "--", ":", "-.")[n % 4], linewidth=1.6)
    ax.set_xlabel("tau: time to target over the fastest (steps)")
    ax.set_ylabel(f"fraction of the {len(ratios)} task(s) within tau")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "Performance profile")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)
