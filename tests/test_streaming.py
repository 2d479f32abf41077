"""Streaming least squares (TSQR over row batches) against the dense path."""
import math

import pytest
import torch

from pinnlsr.problem import PDEProblem, Term

from pinnlsr import jacobian as jac
from pinnlsr.lsr import lsr
from pinnlsr.models import ParamSpec
from pinnlsr.residual import residual_rows
from pinnlsr.solvers import solve
from pinnlsr.streaming import dense_factor, streaming_lstsq, tsqr
from pinnlsr.subspace import svd_basis
from pinnlsr.residual import output_rows

from oracles import TinyPoisson, dense_residual_jacobian, tiny_mlp


def _system(n_pde=60, n_bc=20, widths=(8, 8)):
    problem = TinyPoisson(n_pde=n_pde, n_bc=n_bc)
    model = tiny_mlp(widths=widths)
    points = problem.sample_points(torch.Generator().manual_seed(5))
    spec = ParamSpec.of(model)
    rows = residual_rows(problem, model, points, spec)
    return problem, model, points, rows, spec.flatten(model)


@pytest.mark.parametrize("mode,batch", [("explicit", 4), ("matrix_free", 7), ("explicit", 1000)])
def test_tsqr_factor_matches_dense_oracle(mode, batch):
    problem, model, points, rows, theta = _system(n_pde=24, n_bc=8)
    f0, g = dense_residual_jacobian(problem, model, points)
    v = torch.randn(g.shape[1], 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factor = tsqr(rows, theta, v, mode=mode, points_per_batch=batch)
    a, b = g @ v, -f0
    # A = Q R with the same R up to row signs: RᵀR = AᵀA, Rᵀc = Aᵀb, ρ² = ||b||² - ||c||²
    assert torch.allclose(factor.R.T @ factor.R, a.T @ a, rtol=1e-10, atol=1e-10)
    assert torch.allclose(factor.R.T @ factor.c, a.T @ b, rtol=1e-10, atol=1e-10)
    assert torch.triu(factor.R).equal(factor.R)
    ref = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1)
    assert factor.rho == pytest.approx(float((a @ ref - b).norm()), rel=1e-8)
    assert factor.b_norm == pytest.approx(float(b.norm()), rel=1e-12)
    assert factor.n_rows == rows.n_rows
    expected_batches = sum(-(-p.shape[0] // batch) for p in points.values())
    assert factor.n_batches == expected_batches


@pytest.mark.parametrize("solver,tikhonov", [("svd", 0.0), ("qr", 0.0), ("svd", 1e-3), ("qr", 1e-3)])
def test_streaming_lstsq_equals_dense_solve(solver, tikhonov):
    _, model, points, rows, theta = _system()
    basis = svd_basis(output_rows(model, torch.cat(list(points.values()))), theta, 40)
    a = jac.apply(rows, theta, basis.V)
    dense = solve(a, -rows.values(theta), solver, 1e-14 if solver == "svd" else None, tikhonov)
    stream = streaming_lstsq(rows, theta, basis.V, solver=solver, rcond=1e-14, tikhonov=tikhonov, points_per_batch=9)
    assert (stream.z - dense.z).norm() <= 1e-9 * dense.z.norm()
    assert stream.residual_norm == pytest.approx(dense.residual_norm, rel=1e-9)
    assert stream.rank_used == dense.rank_used


def test_rank_deficient_basis_gives_the_dense_truncated_svd_solution():
    _, model, points, rows, theta = _system()
    basis = svd_basis(output_rows(model, torch.cat(list(points.values()))), theta, 20)
    v = torch.cat([basis.V, basis.V[:, :5] + basis.V[:, 5:10]], 1)  # 25 columns of rank 20
    a = jac.apply(rows, theta, v)
    dense = solve(a, -rows.values(theta), "svd", 1e-10)
    stream = streaming_lstsq(rows, theta, v, solver="svd", rcond=1e-10, points_per_batch=11)
    assert dense.rank_used == stream.rank_used == 20
    assert (stream.z - dense.z).norm() <= 1e-8 * dense.z.norm()


def test_dense_factor_matches_tsqr():
    _, _, _, rows, theta = _system()
    v = torch.randn(rows.m, 15, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    d = dense_factor(jac.apply(rows, theta, v), -rows.values(theta))
    s = tsqr(rows, theta, v, points_per_batch=13)
    signs = torch.sign(d.R.diagonal()) * torch.sign(s.R.diagonal())
    assert torch.allclose(d.R, signs.unsqueeze(1) * s.R, rtol=1e-10, atol=1e-12)
    assert torch.allclose(d.c, signs * s.c, rtol=1e-10, atol=1e-12)
    assert d.rho == pytest.approx(s.rho, rel=1e-8)


class TinyFit(PDEProblem):
    """Supervised fit of sin(πx)·y on random points: one data term with targets."""

    name = "tiny_fit"
    input_names = ("x", "y")

    def __init__(self, n=120):
        self.x = torch.rand(n, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def exact(self, x):
        return (torch.sin(math.pi * x[:, 0]) * x[:, 1]).unsqueeze(1)

    def terms(self):
        return [Term("data", lambda u, x, y: u(x) - y, self.x, targets=self.exact(self.x))]


def test_memory_budget_sets_the_batches_and_lsr_streaming_equals_dense():
    problem, model = TinyFit(), tiny_mlp(widths=(10, 10))
    points = problem.sample_points(torch.Generator())
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    budget = 15 * 4 * rows.m * 8  # about 15 rows of G per batch
    factor = tsqr(rows, theta, torch.eye(rows.m, dtype=torch.float64)[:, :10], memory_budget=budget)
    assert factor.n_batches > 5
    dense = lsr(problem, model, points=points, rank=30, subspace="svd", compute_errors=False)
    stream = lsr(problem, model, points=points, rank=30, subspace="svd", compute_errors=False,
                 least_squares="streaming", memory_budget=budget)
    assert (stream.z - dense.z).norm() <= 1e-9 * dense.z.norm()
    assert stream.diagnostics["linearized_residual"] == pytest.approx(dense.diagnostics["linearized_residual"], rel=1e-9)
    with pytest.raises(ValueError, match="least_squares"):
        lsr(problem, model, points=points, rank=5, subspace="svd", compute_errors=False, least_squares="sparse")


def test_tsqr_rejects_a_basis_of_the_wrong_shape():
    _, _, _, rows, theta = _system()
    with pytest.raises(ValueError, match="basis must have shape"):
        tsqr(rows, theta, torch.zeros(rows.m + 1, 3, dtype=torch.float64))
