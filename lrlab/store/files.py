"""Files written atomically (a temporary file, then a rename): JSON with NaN as null, and Orbax
trees of arrays.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any

import jax
import numpy as np


def atomic_write(path: pathlib.Path, write) -> None:
    """Calls write(file) on a temporary file beside `path`, then renames it into place."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what any other tool's output gets
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def finite_or_none(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically; NaN becomes null."""
    text = json.dumps(finite_or_none(obj), indent=1, default=json_default, allow_nan=False)
    atomic_write(pathlib.Path(path), lambda f: f.write(text.encode()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_orbax(directory: str | os.PathLike, tree: Any) -> None:
    """Saves a pytree of arrays with Orbax (its own atomic commit: a temporary dir, then rename)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(pathlib.Path(directory).absolute(), tree, force=True)
        ckptr.wait_until_finished()


def restore_orbax(directory: str | os.PathLike) -> Any:
    """Restores what `save_orbax` wrote, as numpy arrays."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.restore(pathlib.Path(directory).absolute())
    return jax.tree_util.tree_map(np.asarray, tree)
