"""The shared reference data for tests: skipped on a machine without it."""
from __future__ import annotations

from pathlib import Path

import pytest

from pinnlsr.datafolder import data_dir


def missing(reason: str) -> None:
    """Skip the test."""
    pytest.skip(reason)


def data_folder() -> Path:
    """The shared reference data folder (:func:`pinnlsr.datafolder.data_dir`)."""
    try:
        return data_dir()
    except FileNotFoundError as exc:
        missing(f"shared reference data folder not available ({exc})")


def reference_file(relpath: str) -> Path:
    """Path of ``relpath`` in the shared reference data folder."""
    p = data_folder() / relpath
    if not p.exists():
        missing(f"reference file {p} not available")
    return p
