import pytest
import torch

from pinnlsr.models import ParamSpec
from pinnlsr.residual import output_rows
from pinnlsr.linearize import JacobianOperator
from pinnlsr.subspace import full_basis, randomized_basis, sketch_svd, svd_basis

from oracles import dense_output_jacobian, tiny_mlp


def projector(v):
    q, _ = torch.linalg.qr(v)
    return q @ q.T


@pytest.fixture
def setup():
    model = tiny_mlp(seed=4, widths=(6, 5))  # m = 18 + 35 + 6 = 59
    x = torch.rand(80, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rows = output_rows(model, x)
    theta = ParamSpec.of(model).flatten(model)
    return rows, theta, dense_output_jacobian(model, x)


def test_svd_basis_matches_dense_svd(setup):
    rows, theta, j = setup
    basis = svd_basis(rows, theta, rank=10)
    _, s, vh = torch.linalg.svd(j, full_matrices=False)
    assert torch.allclose(basis.V, vh[:10].T / s[:10], atol=1e-10) or torch.allclose(
        projector(basis.V), projector(vh[:10].T), atol=1e-10)
    # scaled basis: J V has orthonormal columns
    jv = j @ basis.V
    assert torch.allclose(jv.T @ jv, torch.eye(10, dtype=torch.float64), atol=1e-10)
    assert basis.method == "svd" and basis.rank == 10


@pytest.mark.parametrize("mode", ["explicit", "matrix_free"])
def test_randomized_basis_recovers_top_space(setup, mode):
    rows, theta, j = setup
    _, s, vh = torch.linalg.svd(j, full_matrices=False)
    # an exactly low-rank operator: the range finder must recover its row space exactly
    k = 8
    basis = randomized_basis(rows, theta, rank=k, oversampling=10, power_iterations=2,
                             generator=torch.Generator().manual_seed(0), mode=mode)
    assert basis.method == "randomized" and basis.V.shape == (rows.m, k)
    # with power iterations the top-k singular values are reproduced accurately
    jv = j @ basis.V
    assert torch.allclose(jv.T @ jv, torch.eye(k, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(basis.singular_values[:k], s[:k], rtol=1e-4)
    # and the captured space is close to the top singular space
    err = torch.linalg.matrix_norm(projector(basis.V) @ vh[:3].T - vh[:3].T)
    assert err < 1e-3


def test_randomized_full_width_equals_exact(setup):
    rows, theta, j = setup
    m = rows.m
    basis = randomized_basis(rows, theta, rank=m, oversampling=0, generator=torch.Generator().manual_seed(1),
                             scale=False, rcond=0.0)
    assert torch.allclose(projector(basis.V), torch.eye(m, dtype=torch.float64), atol=1e-8)


def test_seed_reproducible_and_full(setup):
    rows, theta, _ = setup
    b1 = randomized_basis(rows, theta, 6, generator=torch.Generator().manual_seed(7))
    b2 = randomized_basis(rows, theta, 6, generator=torch.Generator().manual_seed(7))
    b3 = randomized_basis(rows, theta, 6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(b1.V, b2.V) and not torch.equal(b1.V, b3.V)
    f = full_basis(rows.m, torch.float64, "cpu")
    assert f.method == "full" and torch.equal(f.V, torch.eye(rows.m, dtype=torch.float64))


def test_sketch_without_left_vectors_gives_the_same_basis(setup):
    # the pipelines skip U (the SVD of the tall G Q through its R factor); W and S are unchanged
    rows, theta, j = setup
    op = JacobianOperator(rows, theta, "explicit")
    omega = torch.randn(op.shape[0], 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w, s, u = sketch_svd(op, 4, 1, omega=omega)
    w_l, s_l, u_l = sketch_svd(op, 4, 1, omega=omega, left=True)
    assert u is None and u_l.shape == (op.shape[0], 5)
    torch.testing.assert_close(s, s_l, rtol=1e-13, atol=0)
    sign = torch.sign((w * w_l).sum(0))
    torch.testing.assert_close(w * sign, w_l, rtol=0, atol=1e-10)
    torch.testing.assert_close(j @ w_l, u_l * s_l, rtol=0, atol=1e-10 * float(s_l[0]))
