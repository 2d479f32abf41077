"""pinnlsr.io: atomic writes of text, JSON and callback-written files."""

from __future__ import annotations

import json
import os
import pathlib
import stat

import numpy as np
import pytest

from pinnlsr import io


def test_atomic_json_numpy(tmp_path):
    p = io.atomic_write_json(tmp_path / "a.json", {"n": np.int64(3), "x": np.float32(0.5), "arr": np.arange(3),
                                                   "p": pathlib.Path("q"), "s": {2, 1}})
    text = p.read_text()
    assert json.loads(text) == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "p": "q", "s": [1, 2]}
    assert '\n  "n": 3' in text  # indent=2
    with pytest.raises(TypeError, match="object"):
        io.atomic_write_json(tmp_path / "b.json", {"o": object()})
    assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_atomic_text_creates_the_folder(tmp_path):
    p = io.atomic_write_text(tmp_path / "new" / "deeper" / "a.txt", "hello")
    assert p.read_text() == "hello"


def test_atomic_json_failure_keeps_original(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    io.atomic_write_json(p, {"v": 1})
    before = p.read_text()

    def boom(*a, **k):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(RuntimeError):
        io.atomic_write_json(p, {"v": 2})
    assert p.read_text() == before
    assert os.listdir(tmp_path) == ["a.json"]


def test_atomic_text_replace_failure_keeps_original(tmp_path, monkeypatch):
    p = tmp_path / "a.txt"
    io.atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]  # no temporary files left behind


def test_write_atomically_callback_and_failure(tmp_path):
    p = io.write_atomically(tmp_path / "a.npz", lambda tmp: np.savez(tmp, x=np.arange(3)), suffix=".npz")
    with np.load(p, allow_pickle=False) as d:
        assert np.array_equal(d["x"], np.arange(3))

    def half_written(tmp):
        pathlib.Path(tmp).write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        io.write_atomically(p, half_written, suffix=".npz")
    with np.load(p, allow_pickle=False) as d:
        assert np.array_equal(d["x"], np.arange(3))
    assert os.listdir(tmp_path) == ["a.npz"]


def test_atomic_writes_make_ordinarily_readable_files(tmp_path):
    path = io.atomic_write_json(tmp_path / "m.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    tmp = io.readable_temp_file(tmp_path, ".x.", ".tmp")
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.") and tmp.name.endswith(".tmp")
    assert stat.S_IMODE(os.stat(tmp).st_mode) == 0o666 & ~umask
