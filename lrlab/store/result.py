"""What a study hands the run skeleton (`Trained`: the body of results.json and what is saved beside
it), and what every study returns (`StudyResult`: its results.json as `summary`, where the run's
files went, the printed report and the figures, which the skeleton saves)."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

Figure = Callable[[pathlib.Path], None]


class StudyResult:
    """A study's results: its results.json as `summary`, where the run's files went (`paths`), the
    printed report and the figures (`FIGURE` drawn by `plot`, and any others `figures` adds)."""

    FIGURE = ""  # the study's main figure (its file name in the workdir)

    def __init__(self, summary: dict[str, Any], paths: Mapping[str, Any] | None = None):
        self.summary = summary
        self.paths = dict(paths or {})

    def report(self) -> str:
        """What the study's command prints."""
        raise NotImplementedError

    def plot(self, path: Any) -> None:
        """Draws the main figure to `path`."""
        raise NotImplementedError

    def figures(self) -> dict[str, Figure]:
        """File name -> drawing function of every figure the run saves (the main one first)."""
        return {self.FIGURE: self.plot}


@dataclasses.dataclass
class Trained:
    """What a study's training hands the skeleton: the body of results.json, and what is saved beside
    it: the member records (members.csv, the Optuna study and TensorBoard runs), an Orbax tree, the
    study's own Optuna study (bayes_search) and its search ranges."""

    body: dict[str, Any]
    members: list[dict[str, Any]] | None = None
    orbax: Any = None
    optuna_study: Any = None
    ranges: Mapping[str, tuple[float, float, bool]] | None = None
