"""pinnlsr.datafolder: where the shared reference data lives; the tests' skip-or-fail rule for it."""
from __future__ import annotations

import pytest

from pinnlsr import datafolder
from shared_data import data_folder, missing, reference_file


def test_data_dir_explicit_and_env(tmp_path, monkeypatch):
    assert datafolder.data_dir(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv(datafolder.ENV_VAR, str(tmp_path))
    assert datafolder.data_dir() == tmp_path.resolve()


def test_data_dir_missing_raises(tmp_path, monkeypatch):
    missing_dir = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        datafolder.data_dir(missing_dir)
    monkeypatch.setenv(datafolder.ENV_VAR, str(missing_dir))
    with pytest.raises(FileNotFoundError, match="PINNLSR_DATA"):
        datafolder.data_dir()


def test_data_file_and_existing_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.npz").write_bytes(b"")
    assert datafolder.data_file("sub/a.npz", root=tmp_path) == tmp_path.resolve() / "sub" / "a.npz"
    with pytest.raises(FileNotFoundError, match="b.npz"):
        datafolder.data_file("sub/b.npz", root=tmp_path)
    assert datafolder.existing_file(tmp_path / "sub" / "a.npz").name == "a.npz"
    with pytest.raises(FileNotFoundError, match="sub"):
        datafolder.existing_file(tmp_path / "sub")  # a folder is not a file


def test_data_dir_default_finds_shared():
    assert (data_folder() / "README.md").exists()
    assert reference_file("deepxde/Burgers.npz").is_file()


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("1", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception),
                                        (None, pytest.skip.Exception)])
def test_missing_data_fails_under_ci_and_skips_elsewhere(monkeypatch, tmp_path, ci, outcome):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="not available"):
        missing("reference file x not available")
    monkeypatch.setenv(datafolder.ENV_VAR, str(tmp_path))
    with pytest.raises(outcome, match="nothere.npz"):
        reference_file("nothere.npz")
    monkeypatch.setenv(datafolder.ENV_VAR, str(tmp_path / "gone"))
    with pytest.raises(outcome, match="folder not available"):
        data_folder()
