"""Gaussian random fields on [0, 1]: the input functions of the operator problems.

Two samplers, as in Wang, Wang & Perdikaris (2021, physics-informed DeepONets):

- :func:`rbf_grf`: zero-mean GP with the RBF kernel k(x, x') = s² exp(-|x - x'|² / (2 l²)), sampled at
  ``n_grid`` equispaced points by a Cholesky factor (their code: l = 0.2 for the antiderivative,
  s = 1, 512 grid points, jitter 1e-10), and then evaluated anywhere by linear interpolation;
- :func:`periodic_grf`: the periodic field N(0, σ²(-Δ + τ² I)^(-γ)) of their Burgers data (σ = 25²,
  τ = 5, γ = 4: ``GRF.m``), a random Fourier series on [0, 1).

A batch of sampled functions is a :class:`FunctionBatch` (grid values plus linear interpolation).
Randomness comes only from the ``torch.Generator`` passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class FunctionBatch:
    """B input functions known on an equispaced grid of [0, 1] and linear in between.

    ``grid`` (G,), ``values`` (B, G). With ``periodic`` the grid covers [0, 1) and evaluation
    wraps around (values at x and x + 1 agree)."""

    grid: torch.Tensor
    values: torch.Tensor
    periodic: bool = False

    def __post_init__(self):
        if self.grid.ndim != 1 or self.values.ndim != 2 or self.values.shape[1] != self.grid.shape[0]:
            raise ValueError(
                f"FunctionBatch: need grid (G,) and values (B, G), got {tuple(self.grid.shape)} and "
                f"{tuple(self.values.shape)}"
            )
        if not torch.isfinite(self.values).all():
            raise ValueError("FunctionBatch: the input function values contain NaN or Inf")

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, idx) -> "FunctionBatch":
        v = self.values[idx]
        return FunctionBatch(self.grid, v.unsqueeze(0) if v.ndim == 1 else v, self.periodic)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Values at x: (P,) -> (B, P) (same points for every function), or (B, P) -> (B, P)."""
        g, v = self.grid, self.values
        x = torch.as_tensor(x, dtype=v.dtype, device=v.device)
        if self.periodic:
            x = torch.remainder(x, 1.0)
            g = torch.cat([g, g[:1] + 1.0])
            v = torch.cat([v, v[:, :1]], dim=1)
        h = (g[-1] - g[0]) / (g.shape[0] - 1)
        pos = ((x - g[0]) / h).clamp(0, g.shape[0] - 1)
        i0 = pos.floor().long().clamp(max=g.shape[0] - 2)
        w = pos - i0
        if x.ndim == 1:
            return v[:, i0] * (1 - w) + v[:, i0 + 1] * w
        if x.ndim == 2 and x.shape[0] == v.shape[0]:
            return torch.gather(v, 1, i0) * (1 - w) + torch.gather(v, 1, i0 + 1) * w
        raise ValueError(f"FunctionBatch: evaluate at (P,) or ({len(self)}, P) points, got {tuple(x.shape)}")


def rbf_grf(n_samples: int, length_scale: float = 0.2, n_grid: int = 512, output_scale: float = 1.0,
            generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
            jitter: float = 1e-10) -> FunctionBatch:
    """``n_samples`` draws of the RBF-kernel GP on ``n_grid`` points of [0, 1] (Cholesky sampling).

    Falls back to a symmetric eigendecomposition (negative eigenvalues clipped) when the Cholesky
    factorization of K + jitter·I fails (very smooth kernels on fine grids)."""
    if n_samples < 1 or n_grid < 2 or length_scale <= 0:
        raise ValueError(f"rbf_grf: need n_samples >= 1, n_grid >= 2, length_scale > 0; got "
                         f"{n_samples}, {n_grid}, {length_scale}")
    x = torch.linspace(0, 1, n_grid, dtype=torch.float64)
    k = output_scale * torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length_scale**2)
    factor, info = torch.linalg.cholesky_ex(k + jitter * torch.eye(n_grid, dtype=torch.float64))
    if int(info) != 0:
        lam, q = torch.linalg.eigh(k)
        factor = q * lam.clamp(min=0).sqrt()
    xi = torch.randn(n_grid, n_samples, generator=generator, dtype=torch.float64)
    values = (factor @ xi).T
    return FunctionBatch(x.to(dtype), values.to(dtype))


def periodic_grf(n_samples: int, n_grid: int = 1024, sigma: float = 25.0**2, tau: float = 5.0,
                 gamma: float = 4.0, n_modes: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64) -> FunctionBatch:
    """Zero-mean periodic field N(0, σ²(-Δ + τ² I)^(-γ)) on [0, 1), on ``n_grid`` points.

    u(x) = Σ_{k=1}^{K} a_k (ξ_k cos 2πkx + η_k sin 2πkx), a_k = √2 σ ((2πk)² + τ²)^(-γ/2), with ξ, η
    standard normal and K = n_modes (default n_grid / 2), as in Wang et al.'s ``GRF.m``."""
    if n_samples < 1 or n_grid < 4:
        raise ValueError(f"periodic_grf: need n_samples >= 1 and n_grid >= 4, got {n_samples}, {n_grid}")
    n_modes = n_modes or n_grid // 2
    k = torch.arange(1, n_modes + 1, dtype=torch.float64)
    amp = math.sqrt(2) * abs(sigma) * ((2 * math.pi * k) ** 2 + tau**2) ** (-gamma / 2)
    xi = torch.randn(n_samples, n_modes, generator=generator, dtype=torch.float64)
    eta = torch.randn(n_samples, n_modes, generator=generator, dtype=torch.float64)
    x = torch.arange(n_grid, dtype=torch.float64) / n_grid
    phase = 2 * math.pi * k[:, None] * x[None, :]  # (K, G)
    values = (xi * amp) @ torch.cos(phase) + (eta * amp) @ torch.sin(phase)
    return FunctionBatch(x.to(dtype), values.to(dtype), periodic=True)
