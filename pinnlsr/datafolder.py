"""Where the shared reference data lives.

The reference files sit outside the repository, in ``../shared/data`` beside the clone or in the
folder named by the ``PINNLSR_DATA`` environment variable. A missing folder or file raises
``FileNotFoundError`` saying where it looked and how to point at the right place.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["ENV_VAR", "data_dir", "data_file", "existing_file"]

ENV_VAR = "PINNLSR_DATA"


def data_dir(path: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Resolve the shared reference-data folder.

    Order: explicit ``path``; else the ``PINNLSR_DATA`` environment variable; else
    ``<repo root>/../shared/data`` (repo root = parent of the ``pinnlsr`` package folder);
    else ``./../shared/data`` relative to the current working directory.

    Raises ``FileNotFoundError`` saying where it looked when none exists.
    """
    if path is not None:
        p = pathlib.Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"reference data folder {str(p)!r} (given explicitly) does not exist; "
                f"pass an existing folder or set {ENV_VAR}"
            )
        return p.resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        p = pathlib.Path(env).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"{ENV_VAR}={env!r} is not an existing folder; point {ENV_VAR} at the "
                "shared reference data folder (the one holding README.md, deepxde/, pinnacle/ ...)"
            )
        return p.resolve()
    repo_root = pathlib.Path(__file__).resolve().parent.parent
    candidates = [repo_root.parent / "shared" / "data", pathlib.Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"reference data folder not found (looked in: {looked}); set the environment "
        f"variable {ENV_VAR} to the shared data folder or pass path=..."
    )


def data_file(relpath: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Path of ``relpath`` inside :func:`data_dir` (``root`` overrides); must exist."""
    p = data_dir(root) / relpath
    if not p.exists():
        raise FileNotFoundError(
            f"reference file {str(p)!r} not found in the data folder; check the name "
            f"(see README.md there) or set {ENV_VAR} to the right folder"
        )
    return p


def existing_file(path: str | os.PathLike[str]) -> pathlib.Path:
    """``path`` as a ``Path``; ``FileNotFoundError`` naming it unless it is an existing file."""
    p = pathlib.Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"reference file {str(p)!r} not found; check the path or set {ENV_VAR} "
            "to the shared data folder"
        )
    return p
