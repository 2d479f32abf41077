"""scripts/fit_capacity.py: its Levenberg–Marquardt fit converges where the target is reachable,
and its command writes capacity.json with every stage."""
import json

import pytest
import torch

from pinnlsr.models import MLP, ParamSpec
from scripts_helper import load_script



@pytest.fixture(scope="module")
def capacity():
    return load_script("fit_capacity")


class _Plain:
    name, input_names, output_names = "plain", ("x", "t"), ("u",)


def test_levenberg_marquardt_approaches_a_reachable_target(capacity):
    """Targets from the same architecture at parameters 1e-2 away (the minimum is zero): every
    accepted step lowers the training residual and eight steps cut the error 100-fold."""
    gen = torch.Generator().manual_seed(0)
    teacher = MLP(2, 1, (8, 8), "tanh", generator=gen)
    student = MLP(2, 1, (8, 8), "tanh", generator=gen)
    spec = ParamSpec.of(teacher)
    theta = spec.flatten(teacher)
    spec.assign(student, theta + 1e-2 * torch.randn(theta.shape, generator=gen, dtype=theta.dtype))
    x = torch.rand(400, 2, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        y = teacher(x)
    fit = capacity.reference_fit(_Plain(), x[:200], y[:200])
    validation = capacity.reference_fit(_Plain(), x[200:], y[200:])
    with torch.no_grad():
        before = float((student(x) - y).norm() / y.norm())
    history = capacity.levenberg_marquardt(fit, validation, student, steps=8, log=lambda _: None)
    with torch.no_grad():
        after = float((student(x) - y).norm() / y.norm())
    assert after < before / 100
    assert [h["step"] for h in history] == list(range(len(history)))
    assert all(b["train_residual"] < a["train_residual"] for a, b in zip(history, history[1:]))


def test_split_reference_is_disjoint_and_checks_the_count(capacity):
    x = torch.arange(20, dtype=torch.float64).reshape(10, 2)
    y = x[:, :1].clone()
    (xt, yt), (xv, yv) = capacity.split_reference(x, y, 4, seed=0)
    assert xt.shape == (4, 2) and xv.shape == (4, 2)
    assert not set(xt[:, 0].tolist()) & set(xv[:, 0].tolist())
    assert torch.equal(yt[:, 0], xt[:, 0]) and torch.equal(yv[:, 0], xv[:, 0])
    with pytest.raises(ValueError, match="--points 6"):
        capacity.split_reference(x, y, 6, seed=0)


def test_command_writes_every_stage(capacity, tmp_path):
    from shared_data import data_folder

    data_folder()  # skipped without the shared data (fails under CI)
    out = tmp_path / "cap"
    assert capacity.main(["--problem", "allen_cahn1d", "--widths", "8", "8", "--points", "300", "--adam-steps",
                          "30", "--lbfgs-steps", "5", "--lm-steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "capacity.json").read_text())
    assert [s["stage"] for s in result["stages"]] == ["adam", "lbfgs", "levenberg_marquardt"]
    assert result["n_params"] == 3 * 8 + 8 + 8 * 8 + 8 + 8 + 1 and result["widths"] == [8, 8]
    assert result["lm_history"] and all(0 < h["rank_used"] <= result["n_params"] for h in result["lm_history"])
    errors = [s["rel_l2"] for s in result["stages"]]
    assert errors[2] < errors[0] < 1.0
