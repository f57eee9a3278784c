"""Objects named `MODULE:NAME` (big_vision's convention), imported on demand: a user's task builder
or optimizer factory given on the command line.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from lrlab import errors


def load_callable(spec: str, what: str) -> Any:
    """`module.path:attribute` imported by name (big_vision's convention for configs); ValueError
    with a one-line reason."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not MODULE:NAME (a {what} importable by name, e.g. my_pkg.tasks:cifar)")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - the user's module: any import error is theirs
        raise ValueError(f"cannot import {module_name} ({errors.one_line(e)})") from None
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        raise ValueError(f"{module_name} has no {attr}") from None
