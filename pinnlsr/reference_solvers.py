"""Reference solvers for the operator problems, one input function at a time (NumPy / SciPy).

Each takes the input function as a callable ``f(x: ndarray) -> ndarray`` (e.g. one row of a
:class:`pinnlsr.grf.FunctionBatch` via :func:`as_callable`) plus a resolution, and returns the
solution at the requested points. Every solver converges under refinement (tests/test_reference_solvers.py):

- :func:`antiderivative`: s(x) = ∫_0^x f, composite trapezoid on ``n`` cells (exact for the
  piecewise-linear GRF samples when the cells contain their grid), O(h²);
- :func:`diffusion_reaction`: s_t = D s_xx + k s² + f(x) on [0,1]², s = 0 at t = 0 and x = 0, 1;
  second-order finite differences in x, implicit Radau time stepping (tight tolerances), O(h²);
- :func:`advection`: s_t + f(x) s_x = 0, f > 0, s(x,0) = sin(πx), s(0,t) = sin(πt/2); exact
  characteristics with the travel time τ(x) = ∫_0^x 1/f by the trapezoid rule, O(h²);
- :func:`burgers`: s_t + s s_x = ν s_xx periodic on [0, 1), s(x,0) = f(x); Fourier pseudo-spectral in
  x (2/3 dealiasing) with integrating-factor RK4 in time;
- :func:`burgers_hopf_cole`: the exact solution of u_t + u u_x = ν u_xx, u(x, 0) = -sin(πx) on
  [-1, 1] (the burgers1d benchmark) by the Hopf–Cole transform, its Gaussian convolution integral
  evaluated by the trapezoid rule in log-space (exponentially convergent; 1e-15 between 40,001 and
  80,001 nodes). It checks ``deepxde/Burgers.npz`` to 3e-12 rel. L2.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import sparse
from scipy.integrate import solve_ivp
from scipy.interpolate import CubicSpline

Function = Callable[[np.ndarray], np.ndarray]


def as_callable(batch, index: int = 0) -> Function:
    """Function ``index`` of a FunctionBatch as a NumPy callable (linear interpolation)."""
    one = batch[index]

    def f(x):
        import torch

        return one(torch.as_tensor(np.asarray(x, dtype=np.float64).ravel())).numpy()[0].reshape(np.shape(x))

    return f


def _check_finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{what}: the input function has NaN or Inf values")
    return values


def antiderivative(f: Function, x: np.ndarray, n: int = 4096, grid: np.ndarray | None = None) -> np.ndarray:
    """s(x) = ∫_0^x f on [0, 1] by the composite trapezoid rule with ``n`` cells (plus the nodes
    of ``grid`` when given, which makes it exact for functions linear between those nodes).
    x: (P,) -> (P,)."""
    nodes = np.linspace(0.0, 1.0, n + 1)
    if grid is not None:
        nodes = np.union1d(nodes, np.asarray(grid, dtype=np.float64))
    vals = _check_finite(f(nodes), "antiderivative")
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (vals[1:] + vals[:-1]) * np.diff(nodes))])
    x = np.asarray(x, dtype=np.float64)
    # exact for f linear on the cell containing x
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    h = x - nodes[i]
    fx = vals[i] + (vals[i + 1] - vals[i]) * h / (nodes[i + 1] - nodes[i])
    return cum[i] + 0.5 * (vals[i] + fx) * h


def diffusion_reaction(f: Function, x: np.ndarray, t: np.ndarray, nx: int = 400, D: float = 0.01,
                       k: float = 0.01, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """s_t = D s_xx + k s² + f(x) on [0,1] × [0,1], zero initial and boundary values.

    Method of lines on ``nx`` cells (central differences), Radau IIA in time with a sparse
    Jacobian; the solution at the tensor grid x (Nx,), t (Nt,) is returned as (Nt, Nx) (cubic
    interpolation in x between nodes)."""
    xs = np.linspace(0.0, 1.0, nx + 1)
    h = 1.0 / nx
    src = _check_finite(f(xs[1:-1]), "diffusion_reaction")
    m = nx - 1
    lap = sparse.diags([np.ones(m - 1), -2 * np.ones(m), np.ones(m - 1)], [-1, 0, 1]) * (D / h**2)
    lap = lap.tocsr()

    def rhs(_, s):
        return lap @ s + k * s**2 + src

    def jac(_, s):
        return lap + sparse.diags(2 * k * s)

    t = np.asarray(t, dtype=np.float64)
    t_eval = np.unique(np.concatenate([[0.0], t]))
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), np.zeros(m), method="Radau", t_eval=t_eval,
                    jac=jac, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"diffusion_reaction: time integration failed: {sol.message}")
    full = np.zeros((len(t_eval), nx + 1))
    full[:, 1:-1] = sol.y.T
    idx = np.searchsorted(t_eval, t)
    out = full[idx]
    if np.array_equal(np.asarray(x), xs):
        return out
    return CubicSpline(xs, out, axis=1)(np.asarray(x, dtype=np.float64))


def advection(f: Function, x: np.ndarray, t: np.ndarray, n: int = 8192) -> np.ndarray:
    """s_t + f(x) s_x = 0 on [0,1]², f > 0, s(x,0) = sin(πx), s(0,t) = sin(πt/2), by characteristics.

    τ(x) = ∫_0^x dξ / f(ξ) is the time a characteristic needs from 0 to x (trapezoid rule on ``n``
    cells). A point (x, t) with t >= τ(x) carries the inflow value sin(π (t - τ(x)) / 2); otherwise
    the initial value sin(π x0) with τ(x0) = τ(x) - t. x, t: (P,) paired points -> (P,)."""
    nodes = np.linspace(0.0, 1.0, n + 1)
    speed = _check_finite(f(nodes), "advection")
    if np.any(speed <= 0):
        raise ValueError("advection: the speed f(x) must be positive everywhere (got min "
                         f"{speed.min():.3g}); shift the field, e.g. f = v - min v + 1")
    inv = 1.0 / speed
    tau = np.concatenate([[0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) / n)])
    x = np.asarray(x, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    tx = np.interp(x, nodes, tau)
    inflow = t >= tx
    out = np.empty_like(x)
    out[inflow] = np.sin(0.5 * math.pi * (t[inflow] - tx[inflow]))
    x0 = np.interp(tx[~inflow] - t[~inflow], tau, nodes)
    out[~inflow] = np.sin(math.pi * x0)
    return out


def burgers(f: Function, x: np.ndarray, t: np.ndarray, n: int = 512, nu: float = 0.01,
            dt: float = 1e-4) -> np.ndarray:
    """Periodic viscous Burgers s_t + s s_x = ν s_xx on [0, 1), s(x, 0) = f(x), for t in [0, max t].

    Fourier pseudo-spectral on ``n`` points with 2/3 dealiasing; integrating-factor RK4 with step
    ``dt`` (the viscous part exact). Returns (Nt, Nx) on the tensor grid t (Nt,) × x (Nx,), by
    exact trigonometric interpolation in x."""
    xs = np.arange(n) / n
    u = _check_finite(np.asarray(f(xs), dtype=np.float64), "burgers")
    kk = 2 * math.pi * np.fft.rfftfreq(n, d=1.0 / n)
    keep = np.abs(np.fft.rfftfreq(n, d=1.0 / n)) <= n / 3
    t = np.asarray(t, dtype=np.float64)
    t_max = float(t.max())
    steps = max(1, int(math.ceil(t_max / dt - 1e-9)))
    times = np.linspace(0.0, steps * dt, steps + 1)
    h = times[1] - times[0] if steps else dt
    e = np.exp(-nu * kk**2 * h / 2)
    e2 = e * e

    def nonlinear(v_hat):
        v = np.fft.irfft(v_hat, n)
        return -0.5j * kk * np.fft.rfft(v * v) * keep

    v_hat = np.fft.rfft(u) * keep
    snapshots = {}
    order = np.argsort(t)
    j = 0
    for step in range(steps + 1):
        while j < len(order) and t[order[j]] <= times[step] + 0.5 * h:
            snapshots[order[j]] = v_hat.copy()
            j += 1
        if step == steps or j == len(order):
            break
        a = h * nonlinear(v_hat)
        b = h * nonlinear(e * (v_hat + a / 2))
        c = h * nonlinear(e * v_hat + b / 2)
        d = h * nonlinear(e2 * v_hat + e * c)
        v_hat = e2 * v_hat + (e2 * a + 2 * e * (b + c) + d) / 6
        if not np.all(np.isfinite(v_hat)):
            raise RuntimeError("burgers: the spectral solve blew up; decrease dt or increase n")
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((len(t), len(x)))
    # trigonometric interpolation: u(x) = Re Σ c_k e^{2πikx} with rfft weights
    ks = np.fft.rfftfreq(n, d=1.0 / n)
    w = np.full(len(ks), 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0
    basis = np.exp(2j * math.pi * np.outer(x, ks))  # (Nx, K)
    for i in range(len(t)):
        out[i] = (basis @ (w * snapshots[i])).real / n
    return out


def burgers_hopf_cole(x: np.ndarray, t: float, nu: float = 0.01 / math.pi, nodes: int = 40001,
                      half_width: float = 3.0, chunk: int = 64) -> np.ndarray:
    """u(x, t) (len(x),) of u_t + u u_x = ν u_xx, u(x, 0) = -sin(πx), u(±1, t) = 0 (exact).

    Hopf–Cole: u = -∫ sin(π(x-η)) F(x-η) G(η) dη / ∫ F(x-η) G(η) dη with F(y) = exp(-cos(πy)/(2πν))
    and the heat kernel G(η) = exp(-η²/(4νt)); the integrands span e^{±1/(2πν)}, so they are scaled
    by their largest exponent per point (log-sum-exp) and summed by the trapezoid rule on
    ``nodes`` points of [-half_width, half_width] (the kernel is below e^{-700} beyond)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if t == 0:
        return -np.sin(math.pi * x)
    if t < 0 or nu <= 0:
        raise ValueError(f"burgers_hopf_cole: need t >= 0 and nu > 0, got t={t}, nu={nu}")
    eta = np.linspace(-half_width, half_width, nodes)
    kernel = -eta**2 / (4 * nu * t)
    out = np.empty_like(x)
    for i in range(0, len(x), chunk):
        y = x[i:i + chunk, None] - eta  # (c, nodes)
        phi = -np.cos(math.pi * y) / (2 * math.pi * nu) + kernel
        w = np.exp(phi - phi.max(axis=1, keepdims=True))
        out[i:i + chunk] = -(np.sin(math.pi * y) * w).sum(axis=1) / w.sum(axis=1)
    return out
