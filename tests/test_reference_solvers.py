"""Reference solvers of the operator problems: exact cases and convergence under refinement."""

import numpy as np
import pytest

from pinnlsr import reference_solvers as rs


def _ratios(errors):
    return [a / b for a, b in zip(errors, errors[1:])]


def test_antiderivative_exact_for_piecewise_linear_and_converges():
    grid = np.linspace(0, 1, 9)
    vals = np.sin(5 * grid)
    f = lambda x: np.interp(x, grid, vals)  # noqa: E731
    x = np.linspace(0, 1, 33)
    def exact_integral(xi):  # trapezoid over the grid nodes below xi is exact for a linear interpolant
        nodes = np.append(grid[grid < xi], xi)
        return np.trapezoid(f(nodes), nodes) if xi > 0 else 0.0

    exact = np.array([exact_integral(xi) for xi in x])
    assert np.abs(rs.antiderivative(f, x, n=4, grid=grid) - exact).max() < 1e-14
    g = lambda x: np.cos(3 * x) + x  # noqa: E731
    truth = np.sin(3 * x) / 3 + x**2 / 2
    errors = [np.abs(rs.antiderivative(g, x, n) - truth).max() for n in (8, 16, 32)]
    assert all(r >= 2 for r in _ratios(errors)), errors


def test_diffusion_reaction_converges():
    f = lambda x: 3 * np.sin(np.pi * x) + x  # noqa: E731
    x = t = np.linspace(0, 1, 11)
    ref = rs.diffusion_reaction(f, x, t, nx=320)
    errors = [np.abs(rs.diffusion_reaction(f, x, t, nx=n) - ref).max() for n in (10, 20, 40)]
    assert all(r >= 2 for r in _ratios(errors)), errors
    assert errors[-1] < 2e-3
    # zero initial and boundary values
    assert np.abs(ref[0]).max() < 1e-15 and np.abs(ref[:, [0, -1]]).max() < 1e-15


def test_diffusion_reaction_steady_linear_case():
    """k = 0, f = D π² sin(πx): s → sin(πx)(1 - exp(-D π² t))."""
    D = 0.01
    f = lambda x: D * np.pi**2 * np.sin(np.pi * x)  # noqa: E731
    x, t = np.linspace(0, 1, 21), np.array([0.5, 1.0])
    s = rs.diffusion_reaction(f, x, t, nx=200, D=D, k=0.0)
    exact = np.sin(np.pi * x)[None] * (1 - np.exp(-D * np.pi**2 * t))[:, None]
    assert np.abs(s - exact).max() < 1e-5


def test_advection_constant_speed_is_exact_and_variable_speed_converges():
    x, t = np.meshgrid(np.linspace(0, 1, 21), np.linspace(0, 1, 21))
    x, t = x.ravel(), t.ravel()
    s = rs.advection(lambda z: np.ones_like(z), x, t, n=64)
    exact = np.where(t >= x, np.sin(np.pi * (t - x) / 2), np.sin(np.pi * (x - t)))
    assert np.abs(s - exact).max() < 1e-12
    speed = lambda z: 1.5 + np.sin(2 * np.pi * z)  # noqa: E731
    ref = rs.advection(speed, x, t, n=2**16)
    errors = [np.abs(rs.advection(speed, x, t, n=n) - ref).max() for n in (16, 32, 64)]
    assert all(r >= 2 for r in _ratios(errors)), errors
    with pytest.raises(ValueError, match="positive"):
        rs.advection(lambda z: z - 0.5, x, t)


def test_burgers_converges_in_space_and_time():
    f = lambda x: 0.5 * np.sin(2 * np.pi * x) + 0.2 * np.cos(4 * np.pi * x)  # noqa: E731
    x, t = np.arange(16) / 16, np.linspace(0, 0.5, 6)
    ref = rs.burgers(f, x, t, n=256, dt=2.5e-4)
    assert np.abs(ref[0] - f(x)).max() < 1e-12
    space = [np.abs(rs.burgers(f, x, t, n=n, dt=2.5e-4) - ref).max() for n in (24, 32, 48)]
    assert all(r >= 2 for r in _ratios(space)), space
    times = [np.abs(rs.burgers(f, x, t, n=256, dt=dt) - ref).max() for dt in (0.02, 0.01, 0.005)]
    assert all(r >= 2 for r in _ratios(times)), times
    # mean is conserved
    assert abs(rs.burgers(f, np.arange(256) / 256, [0.5], n=256)[0].mean() - f(np.arange(256) / 256).mean()) < 1e-12


def test_nan_input_function_is_rejected():
    bad = lambda x: np.where(x > 0.5, np.nan, 1.0)  # noqa: E731
    x = np.linspace(0, 1, 5)
    for call in (lambda: rs.antiderivative(bad, x), lambda: rs.diffusion_reaction(bad, x, x, nx=20),
                 lambda: rs.advection(bad, x, x), lambda: rs.burgers(bad, x, x, n=32)):
        with pytest.raises(ValueError, match="NaN"):
            call()


def test_hopf_cole_burgers_converges_and_confirms_the_shared_reference():
    """The exact Burgers solution by quadrature: converged to 1e-14 in its nodes, and the shared
    spectral reference (deepxde/Burgers.npz) agrees with it to 1e-10 rel. L2, far below the 1e-6
    that burgers1d's accuracy claims need."""
    from pinnlsr.reference_solvers import burgers_hopf_cole
    from shared_data import reference_file

    x = np.linspace(-1, 1, 33)
    for t in (0.1, 0.5, 0.99):
        a, b = burgers_hopf_cole(x, t), burgers_hopf_cole(x, t, nodes=80001, half_width=4.0)
        assert np.abs(a - b).max() <= 1e-14
    np.testing.assert_array_equal(burgers_hopf_cole(x, 0.0), -np.sin(np.pi * x))
    assert abs(burgers_hopf_cole(np.array([0.0]), 0.7)[0]) <= 1e-12  # odd in x: zero at the shock
    with np.load(reference_file("deepxde/Burgers.npz"), allow_pickle=False) as d:
        xs, ts, usol = d["x"].ravel(), d["t"].ravel(), d["usol"]
    cols = [0, 25, 50, 67, 99]  # t = 0, 0.25, 0.5, 0.67 (the steepest shock) and 0.99
    exact = np.stack([burgers_hopf_cole(xs, float(ts[j])) for j in cols], 1)
    rel = np.linalg.norm(usol[:, cols] - exact) / np.linalg.norm(exact)
    assert rel <= 1e-10, rel
