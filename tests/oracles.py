"""Dense float64 oracles built independently of pinnlsr's vmap/chunking code paths."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jacrev

from pinnlsr import operators as op
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term


class TinyPoisson(PDEProblem):
    """-Δu = f on [0,1]² with a weighted boundary term; small point sets for oracle checks."""

    name = "tiny_poisson"
    input_names = ("x", "y")

    def __init__(self, n_pde: int = 7, n_bc: int = 5, bc_weight: float = 3.0):
        self.n_pde, self.n_bc, self.bc_weight = n_pde, n_bc, bc_weight

    def terms(self):
        def interior(n, generator):
            return torch.rand(n, 2, generator=generator, dtype=torch.float64)

        def boundary(n, generator):
            s = torch.rand(n, generator=generator, dtype=torch.float64)
            return torch.stack([s, (torch.arange(n) % 2).to(torch.float64)], 1)

        return [Term("pde", self.pde, interior, self.n_pde),
                Term("bc", self.bc, boundary, self.n_bc, self.bc_weight)]

    def pde(self, u, x):
        return -op.laplacian(u, x) - 2 * math.pi**2 * torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])

    def bc(self, u, x):
        return u(x)

    def exact(self, x):
        return (torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])).unsqueeze(1)

    def test_points(self):
        g = torch.linspace(0, 1, 21, dtype=torch.float64)
        gx, gy = torch.meshgrid(g, g, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)


def tiny_mlp(seed: int = 0, out_dim: int = 1, widths=(6, 5)) -> nn.Module:
    return MLP(2, out_dim, widths, "tanh", generator=torch.Generator().manual_seed(seed))


def dense_residual_jacobian(problem: TinyPoisson, model: nn.Module, points: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(f0 (n,), G (n, m)) with the Laplacian by plain autograd, one point at a time, and
    the parameter Jacobian by torch.func.jacrev of the whole stacked vector."""
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(theta):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return out

    def stacked(theta):
        params = unflatten(theta)
        rows = []
        pde_pts, bc_pts = points["pde"], points["bc"]
        for x in pde_pts:
            def u_scalar(xp):
                return functional_call(model, params, (xp.unsqueeze(0),))[0, 0]
            h = torch.func.hessian(u_scalar)(x)
            f = 2 * math.pi**2 * torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])
            rows.append(math.sqrt(1.0 / len(pde_pts)) * (-(h[0, 0] + h[1, 1]) - f))
        for x in bc_pts:
            rows.append(math.sqrt(problem.bc_weight / len(bc_pts)) * functional_call(model, params, (x.unsqueeze(0),))[0, 0])
        return torch.stack(rows)

    return stacked(theta0), jacrev(stacked)(theta0)


def dense_output_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J (n·k, m), rows point-major, by torch.func.jacrev of the whole output."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def out(theta):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + s.numel()].view(s)
            i += s.numel()
        return functional_call(model, params, (x,)).reshape(-1)

    return jacrev(out)(theta0)


def check_products_against_dense(prob, n_vjp: int, atol_factor: float = 1.0, **vjp_options) -> torch.Tensor:
    """Jv, Jᵀw and the dense J of an interop problem (``residual(params=...)``, ``theta``,
    ``jvp``, ``vjp``, ``jacobian``) against torch.autograd's dense Jacobian of its residual.
    Tolerances are relative to the largest entry; returns that dense Jacobian."""
    theta = prob.theta()
    oracle = torch.autograd.functional.jacobian(lambda t: prob.residual(params=prob.spec.unflatten(t)), theta)
    assert oracle.shape == (prob.n_rows, theta.numel())
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(theta.numel(), 3, generator=gen, dtype=theta.dtype)
    W = torch.randn(prob.n_rows, n_vjp, generator=gen, dtype=theta.dtype)
    atol = 1e-12 * float(oracle.abs().max()) * atol_factor
    torch.testing.assert_close(prob.jvp(theta, V), oracle @ V, rtol=0, atol=atol)
    torch.testing.assert_close(prob.vjp(theta, W, **vjp_options), oracle.T @ W, rtol=0, atol=atol)
    return oracle
