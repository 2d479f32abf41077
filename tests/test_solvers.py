import math

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


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (25, 25)])
def test_damped_steps_match_the_stacked_problem(shape):
    """One factorization (through R when tall) gives every damped step; oracle: the stacked
    least-squares problem [A; √μ I] z ≈ [b; 0] solved by LAPACK, float64."""
    from pinnlsr.solvers import DampedLeastSquares

    gen = torch.Generator().manual_seed(1)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64)
    b = torch.randn(shape[0], generator=gen, dtype=torch.float64)
    dls = DampedLeastSquares(a, b, rcond=0.0)
    for mu in (1e-6, 1e-2, 3.0):
        stacked = torch.cat([a, mu**0.5 * torch.eye(shape[1], dtype=a.dtype)])
        rhs = torch.cat([b, b.new_zeros(shape[1])])
        ref = torch.linalg.lstsq(stacked, rhs.unsqueeze(1)).solution.squeeze(1)
        z = dls.solve(mu)
        torch.testing.assert_close(z, ref, rtol=0, atol=1e-10 * float(ref.abs().max()))
        assert dls.residual_norm(z) == pytest.approx(float((a @ z - b).norm()), rel=1e-11)
    pinv = torch.linalg.lstsq(a, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    torch.testing.assert_close(dls.solve(0.0), pinv, rtol=0, atol=1e-10)
    assert dls.sigma_max == pytest.approx(float(torch.linalg.matrix_norm(a, 2)), rel=1e-12)


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (25, 25)])
def test_another_right_hand_side_from_the_kept_factorization(shape):
    """with_rhs (Qᵀb through the kept Householder reflectors, or Uᵀb when A itself was decomposed)
    gives the damped steps and residuals of factorizing [A | b2] afresh, float64."""
    from pinnlsr.solvers import DampedLeastSquares

    gen = torch.Generator().manual_seed(2)
    a = torch.randn(*shape, generator=gen, dtype=torch.float64)
    b, b2 = torch.randn(2, shape[0], generator=gen, dtype=torch.float64)
    kept = DampedLeastSquares(a, b, rcond=0.0, reusable=True)
    assert kept.reusable and not DampedLeastSquares(a, b).reusable
    assert (kept._householder is not None) == (shape[0] >= 2 * shape[1])
    other, fresh = kept.with_rhs(b2), DampedLeastSquares(a, b2, rcond=0.0)
    for mu in (0.0, 1e-3, 2.0):
        z = other.solve(mu)
        torch.testing.assert_close(z, fresh.solve(mu), rtol=0, atol=1e-11 * float(z.abs().max()))
        assert other.residual_norm(z) == pytest.approx(float((a @ z - b2).norm()), rel=1e-11)
    # the kept factorization still answers for its own b
    torch.testing.assert_close(kept.solve(0.0), DampedLeastSquares(a, b, rcond=0.0).solve(0.0), rtol=0, atol=1e-11)
    with pytest.raises(ValueError, match="reusable=True"):
        DampedLeastSquares(a, b).with_rhs(b2)
    with pytest.raises(ValueError, match="shape"):
        kept.with_rhs(b2[:-1])
    with pytest.raises(ValueError, match="single system"):
        DampedLeastSquares(a.expand(2, *shape), b.expand(2, -1), reusable=True)


def test_gain_ratio():
    from pinnlsr.solvers import gain_ratio

    assert gain_ratio(2.0, 1.0, 1.0) == pytest.approx(1.0)
    assert gain_ratio(2.0, 1.5, 1.0) == pytest.approx((4 - 2.25) / 3)
    assert gain_ratio(1.0, 0.5, 1.0) == 1.0  # no predicted decrease


def _search_problem(seed=0):
    """A tall ill-conditioned A (60, 8) with σ from 1 down to 1e-12 and a b with a component off its range."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(60, 8, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    a = u @ torch.diag(torch.logspace(0, -12, 8, dtype=torch.float64)) @ v.T
    return a, torch.randn(60, generator=gen, dtype=torch.float64)


def test_damping_search_on_a_linear_problem_reaches_the_truncated_svd_step_in_one_linearization():
    from pinnlsr.solvers import DampedLeastSquares, DampingSearch

    a, b = _search_problem()
    step = DampedLeastSquares(a, b, rcond=1e-14)
    evaluate = lambda d: (float((a @ d - b).norm()), None)
    search = DampingSearch(1e-4)
    trial, tries, refused = search.choose(step, float(b.norm()), evaluate)
    # the least damped steps fit best: the search runs down to μ = 0, the plain truncated-SVD step
    torch.testing.assert_close(trial.delta, step.solve(0.0), rtol=0, atol=1e-12 * float(step.solve(0.0).norm()))
    assert trial.mu == 0.0 and refused == 0 and tries == search.decades + search.above + 2
    assert search.mu == pytest.approx(1e-4 * step.sigma_max**2 * 1e-12)  # centred below the last decade


def test_damping_search_keeps_the_step_with_the_lowest_validation_score():
    from pinnlsr.solvers import DampedLeastSquares, DampingSearch

    a, b = _search_problem(1)
    step = DampedLeastSquares(a, b, rcond=1e-14)
    evaluate = lambda d: (float((a @ d - b).norm()), None)
    # a held-out score that penalizes the long steps along the small singular directions
    target = step.solve(1e-8)
    validate = lambda d, _: float((d - target).norm())
    search = DampingSearch(1e-4, patience=2)
    trial, tries, _ = search.choose(step, float(b.norm()), evaluate, validate)
    assert trial.mu == pytest.approx(1e-8)
    assert tries < search.decades + search.above + 2  # stopped after the score rose twice
    assert search.mu == pytest.approx(1e-8)  # the next linearization centres there


def test_damping_search_grows_the_damping_until_a_step_is_finite():
    from pinnlsr.solvers import DampedLeastSquares, DampingSearch

    a, b = _search_problem(2)
    step = DampedLeastSquares(a, b, rcond=1e-14)
    # steps longer than 1 overflow the (nonlinear) residual: only strongly damped ones are finite
    evaluate = lambda d: (float((a @ d - b).norm()) if float(d.norm()) < 1.0 else math.inf, None)
    trial, tries, refused = DampingSearch(1e-20, max_tries=30).choose(step, float(b.norm()), evaluate)
    assert trial is not None and float(trial.delta.norm()) < 1.0 and refused == tries - 1
    trial, tries, refused = DampingSearch(1e-20, max_tries=3).choose(step, float(b.norm()), evaluate)
    assert trial is None and refused == tries  # no finite step within the tries: the caller stops
    with pytest.raises(ValueError, match="patience"):
        DampingSearch(1e-3, patience=0)
