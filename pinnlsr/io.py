"""Atomic file writes: text, JSON and anything written through a callback.

Every writer writes to a temporary file in the destination folder and renames it into place
(``os.replace``), so an interrupted write never destroys an existing file; the temporary file gets the
permissions of an ordinary new file. Reference data live in :mod:`pinnlsr.datafolder`,
:mod:`pinnlsr.readers`, :mod:`pinnlsr.datasets` and :mod:`pinnlsr.meshfiles` (VTU/XDMF export).
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

__all__ = ["atomic_write_json", "atomic_write_text", "readable_temp_file", "write_atomically"]


def readable_temp_file(folder, prefix: str, suffix: str) -> pathlib.Path:
    """A new empty temporary file in ``folder`` with the permissions of an ordinary new file
    (0666 minus the umask; ``mkstemp`` alone makes it 0600), for write-then-rename."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)
    return pathlib.Path(name)


def write_atomically(path, write, suffix: str = ".tmp") -> pathlib.Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place;
    on any failure the temporary file is removed and an existing ``path`` is left untouched."""
    dest = pathlib.Path(path)
    tmp = readable_temp_file(dest.parent, f".{dest.name}.", suffix)
    try:
        write(str(tmp))
        os.replace(tmp, dest)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return dest


def _unlink_quiet(p: pathlib.Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> pathlib.Path:
    """Write ``text`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    dest = pathlib.Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write_atomically(dest, write)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (pathlib.PurePath,)):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path, obj: Any) -> pathlib.Path:
    """Write ``obj`` as JSON (indent=2; numpy scalars/arrays and paths converted) atomically."""
    text = json.dumps(obj, indent=2, default=_json_default)
    return atomic_write_text(path, text + "\n")

