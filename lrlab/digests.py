"""Content digests for a run's identity: what the data holds and what the code says, so that a rerun
with other labels, another model body or another optimizer factory is never mistaken for the same run."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np


def text_digest(text: str) -> str:
    """A short digest of a text (12 hex digits)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def arrays_digest(arrays: Mapping[str, Any] | None) -> str | None:
    """A digest of named arrays' names, shapes, dtypes and bytes (BLAKE2b: MNIST's 47 MB in well under
    a second); None for no arrays."""
    if arrays is None:
        return None
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.shape}:{a.dtype};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def source_of(obj: Any) -> str:
    """The source code of a function or class (every class of its MRO outside Flax, for a class), or
    its qualified name where Python keeps no source (a builtin, a REPL definition)."""
    if not inspect.isclass(obj) and not inspect.isfunction(obj) and not inspect.ismethod(obj):
        obj = type(obj)
    targets = [c for c in obj.__mro__ if not c.__module__.startswith(("flax", "builtins"))] if inspect.isclass(obj) \
        else [obj]
    parts = []
    for target in targets:
        try:
            parts.append(inspect.getsource(target))
        except (OSError, TypeError):
            parts.append(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', repr(target))}")
    return "\n".join(parts)


def code_digest(obj: Any) -> str:
    """`text_digest` of `source_of(obj)`: changes when the code of a model or a factory changes."""
    return text_digest(source_of(obj))
