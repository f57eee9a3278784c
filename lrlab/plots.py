"""Matplotlib figures, written atomically: the learning-rate valley."""

from __future__ import annotations

import io
import os
import pathlib
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lrlab import results as results_lib  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Renders to memory, then writes atomically: a crash never leaves half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    results_lib.atomic_write(pathlib.Path(path), lambda f: f.write(buf.getvalue()))


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
    """Steps to target against learning rate (log-log), one line per optimizer.

    Runs that missed the target are gaps in the line, marked on the budget line: x for diverged,
    o for exhausted.
    """
    fig, ax = plt.subplots(figsize=(8, 5))
    optimizers = list(dict.fromkeys(r["optimizer"] for r in records))
    for n, opt in enumerate(optimizers):
        rows = sorted((r for r in records if r["optimizer"] == opt), key=lambda r: r["learning_rate"])
        lrs = [r["learning_rate"] for r in rows]
        steps = [r["steps_to_target"] if r["steps_to_target"] is not None else float("nan") for r in rows]
        (line,) = ax.plot(lrs, steps, "-", marker=".", label=opt)
        color = line.get_color()
        for status, marker in (("diverged", "x"), ("exhausted", "o")):
            failed = [r["learning_rate"] for r in rows if r["status"] == status]
            if failed:
                ax.plot(failed, [budget_steps] * len(failed), linestyle="none", marker=marker,
                        markerfacecolor="none", color=color,
                        label=f"{opt} {status}" if len(optimizers) > 1 else status)
    ax.axhline(budget_steps, color="grey", linewidth=0.6, linestyle=":")
    _save_steps_vs_rate(fig, ax, path, eval_every, title or "Learning-rate valley")


def envelope(envelope_rows: list[dict[str, Any]], path: str | os.PathLike, *, eval_every: int,
             title: str = "") -> None:
    """For each learning rate, the fastest and the slowest optimizer's steps to target (log-log),
    the range between them shaded and the band of rates that trained with any optimizer marked."""
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
        previous = None
        for row in rows:  # name the fastest optimizer where it changes
            if row["fastest"] != previous:
                ax.annotate(row["fastest"], (row["learning_rate"], row["fastest_steps"]), fontsize=7,
                            textcoords="offset points", xytext=(0, -10), ha="center", color="tab:green")
            previous = row["fastest"]
        band = results_lib.trained_band(envelope_rows)
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


def optimizer_curves(entries: dict[str, dict[str, Any]], path: str | os.PathLike, *, target_accuracy: float,
                     title: str = "") -> None:
    """optimizer_comparison's figure: test accuracy against steps and against training seconds, one
    line per optimizer at its learning rate, and the target as a dashed line (logit y axis: 0.9 to
    0.99 gets as much room as 0.5 to 0.9)."""
    fig, (ax_steps, ax_seconds) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for name, entry in entries.items():
        curve = entry["test_curve"]
        label = f"{name} (lr {entry['learning_rate']:.3g})"
        (line,) = ax_steps.plot(curve["step"], curve["test_accuracy"], "-", linewidth=1.2, label=label)
        ax_seconds.plot(curve["seconds"], curve["test_accuracy"], "-", linewidth=1.2, color=line.get_color(),
                        label=label)
    for ax, xlabel in ((ax_steps, "training steps"),
                       (ax_seconds, "training seconds (compilation and evaluations excluded)")):
        ax.axhline(target_accuracy, color="black", linewidth=0.8, linestyle="--",
                   label=f"target {target_accuracy:g} (training-subset accuracy)")
        ax.set_yscale("logit", nonpositive="clip")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)
    ax_steps.set_ylabel("test accuracy (fixed test subset)")
    ax_steps.legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "Optimizers at their best learning rates")
    save_figure(fig, path)
