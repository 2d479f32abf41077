"""Rank scan: one QR of G·V solves every nested rank; selection by residual or validation."""
import math

import pytest
import torch

from pinnlsr.lsr import lsr
from pinnlsr.metrics import model_errors, predict
from pinnlsr.models import LinearizedModel, ParamSpec
from pinnlsr.problem import PDEProblem, Term
from pinnlsr.plotting import plot_rank_scan
from pinnlsr.rank import RankScan, default_ranks, lsr_rank_scan, scan_factor, select_rank
from pinnlsr.residual import residual_rows
from pinnlsr.streaming import dense_factor

from oracles import TinyPoisson, dense_residual_jacobian, tiny_mlp


class TinyFit(PDEProblem):
    """Supervised fit of sin(πx)·y from n random samples (a data term with targets); ``targets``
    overrides the labels (e.g. to make a validation set the trained model already fits)."""

    name = "tiny_fit"
    input_names = ("x", "y")

    def __init__(self, n=150, seed=9, targets=None):
        self.x = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.y = self.exact(self.x) if targets is None else targets

    def exact(self, x):
        return (torch.sin(math.pi * x[:, 0]) * x[:, 1]).unsqueeze(1)

    def test_points(self):
        return torch.rand(200, 2, generator=torch.Generator().manual_seed(99), dtype=torch.float64)

    def terms(self):
        return [Term("data", lambda u, x, y: u(x) - y, self.x, targets=self.y)]


def test_scan_solutions_equal_separate_solves_at_each_rank():
    problem = TinyPoisson(n_pde=40, n_bc=16)
    model = tiny_mlp(widths=(6, 6))
    points = problem.sample_points(torch.Generator().manual_seed(1))
    f0, g = dense_residual_jacobian(problem, model, points)
    v = torch.randn(g.shape[1], 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, b = g @ v, -f0
    scan = scan_factor(dense_factor(a, b), ranks=list(range(1, 31)))
    assert scan.ranks == list(range(31))
    assert scan.linearized_residual[0] == pytest.approx(float(b.norm()), rel=1e-12)
    for r in range(1, 31):
        ref = torch.linalg.lstsq(a[:, :r], b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
        z = scan.z(r)
        assert (z - ref).norm() <= 1e-10 * max(1.0, float(ref.norm())), r
        assert scan.linearized_residual[r] == pytest.approx(float((a[:, :r] @ ref - b).norm()), rel=1e-10)
        assert scan.Z[r:, r].abs().max() == 0 if r < 30 else True


def test_lsr_rank_scan_matches_lsr_at_each_rank_and_its_errors():
    problem, model = TinyFit(), tiny_mlp(widths=(8, 8))
    res = lsr_rank_scan(problem, model, ranks=[3, 10, 25, 60], criterion="residual")
    assert res.scan.ranks == [0, 3, 10, 25, 60]
    assert res.rank == 60 and res.diagnostics["subspace"] == "svd"
    for j, r in enumerate(res.scan.ranks[1:], start=1):
        one = lsr(problem, model, rank=r, subspace="svd", compute_errors=False, rcond=None)
        assert (res.scan.z(r) - one.z).norm() <= 1e-10 * one.z.norm()
        assert res.scan.linearized_residual[j] == pytest.approx(one.diagnostics["linearized_residual"], rel=1e-8)
        refined = LinearizedModel(model, res.V[:, :r], res.scan.z(r))
        err = model_errors(problem, refined, torch.float64, "cpu")["rel_l2"]
        assert res.scan.test_errors["rel_l2"][j] == pytest.approx(err, rel=1e-10)
    before = model_errors(problem, model, torch.float64, "cpu")["rel_l2"]
    assert res.scan.test_errors["rel_l2"][0] == pytest.approx(before, rel=1e-12)
    assert res.diagnostics["after"].rel_l2 == pytest.approx(res.scan.test_errors["rel_l2"][-1], rel=1e-10)
    # a data term is linear in the predictor: the linearized residual is the residual after
    assert res.diagnostics["after"].residual == pytest.approx(res.diagnostics["linearized_residual"], rel=1e-8)


def test_streamed_scan_equals_dense_scan():
    problem, model = TinyFit(), tiny_mlp(widths=(8, 8))
    dense = lsr_rank_scan(problem, model, ranks=[5, 20, 50], rank_errors=False, compute_errors=False)
    budget = 10 * 4 * ParamSpec.of(model).numel * 8
    stream = lsr_rank_scan(problem, model, ranks=[5, 20, 50], rank_errors=False, compute_errors=False,
                           least_squares="streaming", memory_budget=budget)
    assert stream.diagnostics["n_batches"] > 5
    assert torch.allclose(stream.scan.Z, dense.scan.Z, rtol=1e-9, atol=1e-9 * float(dense.scan.Z.abs().max()))
    assert stream.scan.linearized_residual == pytest.approx(dense.scan.linearized_residual, rel=1e-9)


def test_validation_error_per_rank_is_that_of_the_refined_predictor():
    train, model = TinyFit(n=150, seed=1), tiny_mlp(widths=(8, 8))
    noisy = train.y + 0.05 * torch.randn(train.y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    train = TinyFit(n=150, seed=1, targets=noisy)
    val = TinyFit(n=80, seed=7)
    res = lsr_rank_scan(train, model, validation=val, ranks=[2, 8, 30, 80, 105], rank_errors=False)
    val_points = val.sample_points(torch.Generator())
    for j, r in enumerate(res.scan.ranks):
        refined = LinearizedModel(model, res.V[:, :r], res.scan.z(r))
        rows = residual_rows(val, refined, val_points)
        expected = float(rows.values(ParamSpec.of(refined).flatten(refined)).norm())
        # (J V) z vs J (V z): V is scaled by 1/σ, so high ranks round differently
        assert res.scan.validation_error[j] == pytest.approx(expected, rel=1e-9 if r <= 30 else 1e-5), r
    best = min(range(len(res.scan.ranks)), key=lambda j: res.scan.validation_error[j])
    assert res.rank == res.scan.ranks[best] and res.scan.criterion == "validation"
    assert res.diagnostics["after"].validation <= res.diagnostics["before"].validation


def test_validation_selection_returns_rank_zero_when_every_refinement_hurts():
    train, model = TinyFit(n=150, seed=1), tiny_mlp(widths=(8, 8))
    val = TinyFit(n=60, seed=4)
    val.y = predict(model, val.x)  # the trained model is exact on the validation set
    res = lsr_rank_scan(train, model, validation=val, ranks=[1, 5, 20, 60])
    assert all(e > res.scan.validation_error[0] for e in res.scan.validation_error[1:])
    assert res.rank == 0 and res.model.z.numel() == 0
    x = val.test_points()
    assert torch.allclose(predict(res.model, x), predict(model, x), rtol=0, atol=1e-14)
    assert res.diagnostics["after"].rel_l2 == pytest.approx(res.diagnostics["before"].rel_l2, rel=1e-12)


def test_select_rank_rules_and_errors():
    scan = RankScan([0, 1, 2, 4], torch.zeros(4, 4), [1.0, 0.5, 0.101, 0.1], [1.0, 0.9, 1.1, 1.2])
    assert select_rank(scan, "residual") == 4
    assert select_rank(scan, "residual", rtol=0.05) == 2
    assert select_rank(scan) == 1 and scan.criterion == "validation"
    with pytest.raises(ValueError, match="criterion"):
        select_rank(scan, "aic")
    with pytest.raises(ValueError, match="validation set"):
        select_rank(RankScan([0, 1], torch.zeros(1, 2), [1.0, 0.5]), "validation")
    with pytest.raises(ValueError, match="not scanned"):
        scan.z(3)


def test_rank_deficient_factor_drops_the_singular_ranks():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 6, generator=g, dtype=torch.float64)
    a = torch.cat([a, a[:, :2] + a[:, 2:4]], 1)  # columns 7, 8 are dependent
    with pytest.warns(RuntimeWarning, match="rank deficient"):
        scan = scan_factor(dense_factor(a, torch.randn(50, generator=g, dtype=torch.float64)), ranks=[2, 6, 7, 8])
    assert scan.ranks == [0, 2, 6] and scan.dropped == [7, 8]
    with pytest.raises(ValueError, match="outside"):
        scan_factor(dense_factor(a, torch.ones(50, dtype=torch.float64)), ranks=[9])


def test_default_ranks_and_plot(tmp_path):
    ranks = default_ranks(500, n=40)
    assert ranks[0] == 1 and ranks[-1] == 500 and ranks == sorted(set(ranks)) and 30 <= len(ranks) <= 40
    assert default_ranks(1) == [1]
    scan = RankScan([0, 1, 2], torch.zeros(2, 3), [1.0, 0.5, 0.2], [1.0, 0.6, 0.7], {"rel_l2": [0.1, 0.05, 0.06]}, 1)
    path = plot_rank_scan(scan, tmp_path / "rank.png")
    assert path.exists() and path.stat().st_size > 1000
