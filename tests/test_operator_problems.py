"""Operator problems: per-instance LSR of a PI-DeepONet, the CLI pipeline and bad input."""
import json
import os

import pytest
import torch

from pinnlsr.operator_learning import (physics_loss, predict_operator, rank_scan, refine_instances,
                                       relative_errors, train_pideeponet)
from problems.deeponet_advection import DeepONetAdvection
from problems.deeponet_antiderivative import DeepONetAntiderivative
from problems.deeponet_antiderivative import run_cli as antiderivative_cli
from problems.deeponet_burgers import DeepONetBurgers
from problems.deeponet_diffusion_reaction import DeepONetDiffusionReaction

FULL = os.environ.get("PINNLSR_FULL") == "1"


@pytest.fixture(scope="module")
def pretrained_antiderivative():
    problem = DeepONetAntiderivative()
    net = problem.default_deeponet(torch.Generator().manual_seed(0), widths=(30, 30), latent=30)
    train = problem.sample_functions(200, torch.Generator().manual_seed(1))
    train_pideeponet(problem, net, train, 80, batch_size=8, lr=2e-3, final_lr=1e-4,
                     generator=torch.Generator().manual_seed(2), printer=None)
    return problem, net


def test_pretraining_lowers_the_physics_loss(pretrained_antiderivative):
    problem, net = pretrained_antiderivative
    fresh = problem.default_deeponet(torch.Generator().manual_seed(0), widths=(30, 30), latent=30)
    fns = problem.sample_functions(20, torch.Generator().manual_seed(9))
    trained, _ = physics_loss(problem, net, fns, torch.Generator().manual_seed(0))
    initial, _ = physics_loss(problem, fresh, fns, torch.Generator().manual_seed(0))
    assert float(trained) < 0.2 * float(initial)


def test_per_instance_lsr_reduces_antiderivative_error_50x(pretrained_antiderivative):
    problem, net = pretrained_antiderivative
    test = problem.sample_functions(4, torch.Generator().manual_seed(3))
    refs = problem.references(test)
    before = relative_errors(predict_operator(net, problem.sensors(test), problem.test_points()), refs)
    out = refine_instances(problem, net, test, refs, rank=40, seed=0)
    rows = out["instances"]
    for b, row in zip(before.tolist(), rows):
        assert row["before"].rel_l2 == pytest.approx(b, rel=1e-10)  # the two evaluations agree
        assert row["after"].rel_l2 * 50 <= row["before"].rel_l2, row
        assert row["after"].residual < row["before"].residual
    # the caller's network is not modified by refinement
    again = relative_errors(predict_operator(net, problem.sensors(test), problem.test_points()), refs)
    assert torch.equal(before, again)


def test_rank_scan_prints_and_picks_a_scanned_rank(pretrained_antiderivative, capsys):
    problem, net = pretrained_antiderivative
    fns = problem.sample_functions(2, torch.Generator().manual_seed(4))
    rank, table = rank_scan(problem, net, fns, (2, 10, 40))
    lin = [row["linearized_residual_mean"] for row in table]
    assert rank in (2, 10, 40) and lin[0] > lin[-1]
    assert lin[[2, 10, 40].index(rank)] <= 2 * min(lin)
    assert "<- chosen" in capsys.readouterr().out


def test_wrong_sensor_grid_and_nan_inputs(pretrained_antiderivative):
    problem, _ = pretrained_antiderivative
    with pytest.raises(ValueError, match="100 sensors"):
        problem.check_sensors(torch.zeros(3, 50, dtype=torch.float64))
    bad = torch.zeros(3, 100, dtype=torch.float64)
    bad[1, 4] = float("nan")
    with pytest.raises(ValueError, match=r"functions \[1\] have NaN"):
        problem.check_sensors(bad)


def briefly_pretrained(problem):
    """(problem, a DeepONet after 30 Adam steps, one test function, its reference, LSR point counts)."""
    net = problem.default_deeponet(torch.Generator().manual_seed(0), widths=(20, 20), latent=20)
    train = problem.sample_functions(50, torch.Generator().manual_seed(1))
    train_pideeponet(problem, net, train, 30, batch_size=4, lr=2e-3,
                     generator=torch.Generator().manual_seed(2), printer=None)
    test = problem.sample_functions(1, torch.Generator().manual_seed(3))
    return problem, net, test, problem.references(test), {"pde": 300, "ic": 40, "bc": 40}


@pytest.mark.parametrize("factory", [DeepONetDiffusionReaction, DeepONetAdvection, DeepONetBurgers])
def test_space_time_problems_refine_and_reduce_the_residual(factory):
    """A briefly pretrained DeepONet, refined on one instance with few points: the residual and
    the error against the reference solver go down."""
    problem, net, test, refs, counts = briefly_pretrained(factory())
    row = refine_instances(problem, net, test, refs, rank=120, counts=counts)["instances"][0]
    assert row["after"].residual < 0.5 * row["before"].residual
    assert row["after"].rel_l2 < 0.5 * row["before"].rel_l2


def test_cli_writes_metrics_and_reuses_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--adam-steps", "20", "--n-train", "50", "--n-test", "3", "--rank", "20", "--widths", "20", "20",
            "--latent", "20", "--out", str(out)]
    assert antiderivative_cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["device"], metrics["dtype"], metrics["sizes"]["steps"]) == ("cpu", "float64", 20)
    names = [s["name"] for s in metrics["stages"]]
    assert names == ["pretrained", "lsr"]
    for stage in metrics["stages"]:
        for key in ("rel_l2_mean", "rel_l2_std", "n_instances", "seconds_per_instance"):
            assert key in stage
        assert stage["n_instances"] == 3
        # the run output contract's keys: the mean rel. L2, the worst instance's max error, the mean residual
        assert stage["rel_l2"] == stage["rel_l2_mean"]
        assert 0 < stage["max_abs_err"] < float("inf") and 0 < stage["residual"] < float("inf")
    pretrained, refined = metrics["stages"]
    assert refined["residual"] == refined["residual_after_mean"] < pretrained["residual"] == refined["residual_before_mean"]
    assert refined["max_abs_err"] < pretrained["max_abs_err"]
    assert metrics["stages"][1]["rel_l2_mean"] < metrics["stages"][0]["rel_l2_mean"]
    assert (out / "model.pt").is_file() and (out / "error_per_instance.png").is_file()
    assert (out / "instance_0.png").is_file()
    # the checkpoint reproduces the pretrained numbers
    again = tmp_path / "again"
    argv2 = ["--checkpoint", str(out / "model.pt"), "--n-test", "3", "--rank", "20", "--widths", "20", "20",
             "--latent", "20", "--out", str(again), "--no-plot"]
    assert antiderivative_cli(argv2) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert m2["stages"][0]["rel_l2_mean"] == pytest.approx(metrics["stages"][0]["rel_l2_mean"], rel=1e-12)
    # a checkpoint of another architecture is a clear error (exit code 2)
    capsys.readouterr()
    argv3 = ["--checkpoint", str(out / "model.pt"), "--n-test", "1", "--rank", "5", "--widths", "30", "30",
             "--no-plot"]
    assert antiderivative_cli(argv3) == 2
    assert "does not match the model" in capsys.readouterr().err


@pytest.mark.slow
def test_antiderivative_reduction_factor_at_size():
    """Mean error reduction on many instances (reduced size in CI; PINNLSR_FULL=1: 100 instances)."""
    problem = DeepONetAntiderivative()
    net = problem.default_deeponet(torch.Generator().manual_seed(0), widths=(30, 30), latent=30)
    train = problem.sample_functions(300, torch.Generator().manual_seed(1))
    train_pideeponet(problem, net, train, 600 if FULL else 40, batch_size=16, lr=2e-3, final_lr=1e-4,
                     generator=torch.Generator().manual_seed(2), printer=None)
    n = 100 if FULL else 8
    test = problem.sample_functions(n, torch.Generator().manual_seed(3))
    rows = refine_instances(problem, net, test, problem.references(test), rank=40)["instances"]
    before = sum(r["before"].rel_l2 for r in rows) / n
    after = sum(r["after"].rel_l2 for r in rows) / n
    assert before / after >= 200


def test_burgers_gauss_newton_instances_and_cli_stages(tmp_path):
    """Per-instance tangent Gauss–Newton after LSR: its first step is the one-shot LSR result, its
    best iterate is never worse on the residual, and the CLI reports lsr and gauss_newton stages."""
    from problems.deeponet_burgers import run_cli as burgers_cli

    problem, net, test, refs, counts = briefly_pretrained(DeepONetBurgers(n_test_x=32, n_test_t=11))
    one_shot = refine_instances(problem, net, test, refs, rank=60, counts=counts)["instances"][0]
    row = refine_instances(problem, net, test, refs, rank=60, counts=counts, gauss_newton=3)["instances"][0]
    assert row["before"].rel_l2 == pytest.approx(one_shot["before"].rel_l2, rel=1e-12)
    assert row["lsr"].residual == pytest.approx(one_shot["after"].residual, rel=1e-3)
    assert row["after"].residual <= row["lsr"].residual < row["before"].residual
    assert 1 <= row["iterations"] <= 3 and row["seconds"] >= row["seconds_lsr"]

    out = tmp_path / "burgers"
    argv = ["--adam-steps", "5", "--n-train", "8", "--n-test", "2", "--rank", "15", "--widths", "10", "10",
            "--latent", "10", "--points", "pde=120", "ic=20", "bc=20", "--gn-iters", "2",
            "--out", str(out), "--no-plot"]
    assert burgers_cli(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["pretrained", "lsr", "gauss_newton"]
    for stage in metrics["stages"]:
        assert stage["n_instances"] == 2 and "seconds_per_instance" in stage
    assert metrics["stages"][2]["residual_after_mean"] <= metrics["stages"][1]["residual_after_mean"]
    assert {(s["refine_path"], s["instances_per_block"]) for s in metrics["stages"][1:]} == {("batched", 2)}
    # one instance at a time: the same numbers
    loop = tmp_path / "burgers_loop"
    assert burgers_cli(argv[:-3] + ["--refine", "loop", "--out", str(loop), "--no-plot"]) == 0
    again = json.loads((loop / "metrics.json").read_text())
    assert again["stages"][2]["refine_path"] == "loop"
    for a, b in zip(metrics["stages"][1:], again["stages"][1:]):
        assert b["rel_l2_mean"] == pytest.approx(a["rel_l2_mean"], rel=1e-9)
        assert b["max_abs_err"] == pytest.approx(a["max_abs_err"], rel=1e-9)
        assert b["residual"] == pytest.approx(a["residual"], rel=1e-9)
        assert b["residual_after_mean"] == pytest.approx(a["residual_after_mean"], rel=1e-9)
