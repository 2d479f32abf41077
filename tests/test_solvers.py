import numpy as np
import pytest
import torch

from pinnlsr.solvers import solve, solve_qr, solve_svd


def system(n=40, r=12, seed=0, cond=1e3):
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -np.log10(cond), r, dtype=torch.float64)
    a = u @ torch.diag(s) @ v.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return a, b


@pytest.mark.parametrize("method", ["svd", "qr"])
def test_matches_lstsq(method):
    a, b = system()
    sol = solve(a, b, method)
    ref = torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    assert torch.allclose(sol.z, ref, atol=1e-10)
    assert sol.residual_norm == pytest.approx(float((a @ ref - b).norm()), rel=1e-12)
    assert sol.cond == pytest.approx(1e3, rel=1e-8)
    np_ref = np.linalg.lstsq(a.numpy(), b.numpy(), rcond=None)[0]
    assert np.allclose(sol.z.numpy(), np_ref, atol=1e-10)


def test_tikhonov_matches_normal_equations():
    a, b = system(cond=1e8)
    lam = 1e-3
    ref = torch.linalg.solve(a.T @ a + lam**2 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ b)
    assert torch.allclose(solve_svd(a, b, rcond=0.0, tikhonov=lam).z, ref, atol=1e-8)
    assert torch.allclose(solve_qr(a, b, tikhonov=lam).z, ref, atol=1e-8)


def test_truncation_drops_small_singular_values():
    a, b = system(cond=1e12)
    sol = solve_svd(a, b, rcond=1e-6)
    s = torch.linalg.svdvals(a)
    assert sol.rank_used == int((s > 1e-6 * s[0]).sum()) < a.shape[1]
    u, s_, vh = torch.linalg.svd(a, full_matrices=False)
    k = sol.rank_used
    assert torch.allclose(sol.z, vh[:k].T @ ((u[:, :k].T @ b) / s_[:k]), atol=1e-10)


def test_bad_inputs():
    a, b = system()
    with pytest.raises(ValueError, match="shape"):
        solve(a, b[:-1])
    with pytest.raises(ValueError, match="float32"):
        solve(a, b.float())
    with pytest.raises(FloatingPointError, match="NaN"):
        solve(a, b * float("nan"))
    with pytest.raises(ValueError, match="QR needs at least as many rows"):
        solve_qr(a[:5], b[:5])
    with pytest.raises(ValueError, match="unknown least-squares method"):
        solve(a, b, "lu")
    with pytest.raises(ValueError, match="empty"):
        solve(a[:, :0], b)


def test_tall_svd_solve_goes_through_r_and_matches_the_dense_svd():
    """n >= 2r: the SVD of R11 of [A | b] gives the same z, singular values and residual."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(300, 12, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, -9, 12, dtype=torch.float64))
    b = torch.randn(300, generator=g, dtype=torch.float64)
    sol = solve_svd(a, b, rcond=1e-7)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    keep = s > 1e-7 * s[0]
    z = vh[keep].T @ ((u[:, keep].T @ b) / s[keep])
    assert sol.rank_used == int(keep.sum()) < 12
    assert torch.allclose(sol.singular_values, s, rtol=1e-12, atol=0)
    assert torch.allclose(sol.z, z, rtol=1e-9, atol=1e-12)
    assert abs(sol.residual_norm - float((a @ z - b).norm())) <= 1e-12 * float(b.norm())
