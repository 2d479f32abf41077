"""The shared reference data for tests: skipped on a machine without it, an error under CI.

CI runs with ``../shared/data`` beside the clone (environment variable ``CI`` set), so there a
missing folder or file fails the test instead of skipping it silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pinnlsr.datafolder import data_dir


def under_ci() -> bool:
    """Whether the environment variable ``CI`` is set (to anything but "", "0" or "false")."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def missing(reason: str) -> None:
    """Fail the test under CI, skip it elsewhere."""
    if under_ci():
        pytest.fail(f"{reason}; CI must run with the shared data folder at ../shared/data", pytrace=False)
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
