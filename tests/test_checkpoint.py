"""pinnlsr.checkpoint: state dicts saved atomically and loaded without running code, with clear
errors for files that hold more than tensors or do not match the network."""
import os
import pickle

import pytest
import torch

from pinnlsr.checkpoint import load_into, load_state_dict, resolve_factory, save_state_dict
from pinnlsr.models import MLP

from oracles import tiny_mlp


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_round_trip_and_the_layouts_of_other_tools(tmp_path):
    model = tiny_mlp(seed=1)
    path = save_state_dict(model, tmp_path / "run" / "model.pt", extra={"step": 3})
    other = tiny_mlp(seed=2)
    assert load_into(other, path) == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    for key in ("state_dict", "model_state_dict"):  # Lightning-style and DeepXDE checkpoints
        torch.save({key: model.state_dict(), "epoch": 5}, tmp_path / f"{key}.pt")
        assert set(load_state_dict(tmp_path / f"{key}.pt")) == set(model.state_dict())
    torch.save({k: v.float() for k, v in model.state_dict().items()}, tmp_path / "f32.pt")
    assert "converted" in load_into(tiny_mlp(), tmp_path / "f32.pt")[0]


def test_files_that_would_run_code_or_do_not_fit_are_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": RunsCode()}, f)
    with pytest.raises(ValueError, match="refuses to execute|not a readable"):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save({"model": tiny_mlp().state_dict()}, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="does not match the model"):
        load_into(MLP(2, 1, (7,)), tmp_path / "small.pt")
    bad = tiny_mlp().state_dict()
    bad[next(iter(bad))][0, 0] = float("nan")
    torch.save(bad, tmp_path / "nan.pt")
    with pytest.raises(FloatingPointError, match="NaN"):
        load_into(tiny_mlp(), tmp_path / "nan.pt")


def test_factories_by_module_or_file(tmp_path):
    assert resolve_factory("oracles:tiny_mlp") is tiny_mlp
    (tmp_path / "net.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(2, 1)\n")
    assert isinstance(resolve_factory(f"{tmp_path / 'net.py'}:build")(), torch.nn.Linear)
    for spec, message in [("oracles", "module:name"), ("no_such_module_x:f", "not found"),
                          ("oracles:nothing", "no attribute"), ("oracles:math", "not callable"),
                          (f"{tmp_path / 'gone.py'}:f", "does not exist")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            resolve_factory(spec)
