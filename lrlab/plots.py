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
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"steps to target (resolution {eval_every} steps)")
    ax.set_title(title or "Learning-rate valley")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
