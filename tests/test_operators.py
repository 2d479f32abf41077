import math

import pytest
import torch
from torch.func import jacrev, vmap

from pinnlsr import operators as op


def field(x):
    """u(x, y, z) = (sin(x) e^{2y} z², x y z): closed-form derivatives below."""
    return torch.stack([torch.sin(x[0]) * torch.exp(2 * x[1]) * x[2] ** 2, x[0] * x[1] * x[2]])


X = torch.tensor([0.3, -0.7, 1.1], dtype=torch.float64)


def test_value_gradient_partials():
    s, c, e, z = math.sin(0.3), math.cos(0.3), math.exp(-1.4), 1.1
    assert op.value(field, X) == pytest.approx(s * e * z**2, abs=1e-14)
    g = op.gradient(field, X)
    assert torch.allclose(g, torch.tensor([c * e * z**2, 2 * s * e * z**2, 2 * s * e * z], dtype=torch.float64), atol=1e-13)
    assert float(op.partial(field, X, 0, 0)) == pytest.approx(-s * e * z**2, abs=1e-13)
    assert float(op.partial(field, X, 1, 1, 1)) == pytest.approx(8 * s * e * z**2, abs=1e-12)
    assert float(op.partial(field, X, 0, 1, 2)) == pytest.approx(4 * c * e * z, abs=1e-13)
    assert float(op.partial(field, X, 2, component=1)) == pytest.approx(0.3 * -0.7, abs=1e-14)
    assert float(op.partial(field, X)) == pytest.approx(s * e * z**2)


def test_laplacian_hessian_divergence_jacobian():
    s, e, z = math.sin(0.3), math.exp(-1.4), 1.1
    lap = -s * e * z**2 + 4 * s * e * z**2 + 2 * s * e
    assert float(op.laplacian(field, X)) == pytest.approx(lap, abs=1e-12)
    assert float(op.laplacian(field, X, dims=(0, 1))) == pytest.approx(3 * s * e * z**2, abs=1e-12)
    h = op.hessian(field, X)
    assert torch.allclose(h, h.T, atol=1e-13) and float(torch.trace(h)) == pytest.approx(lap, abs=1e-12)
    # div of (u0, u1, u0): ∂x u0 + ∂y u1 + ∂z u0
    v = lambda x: torch.stack([field(x)[0], field(x)[1], field(x)[0]])
    expected = math.cos(0.3) * e * z**2 + 0.3 * 1.1 + 2 * s * e * z
    assert float(op.divergence(v, X)) == pytest.approx(expected, abs=1e-12)
    assert op.jacobian(field, X).shape == (2, 3)
    with pytest.raises(ValueError, match="out of range"):
        op.partial(field, X, 3)
    with pytest.raises(ValueError, match="same length"):
        op.divergence(v, X, components=(0,), dims=(0, 1))


def test_operators_compose_with_vmap_and_parameter_jacobians():
    """u(x; a) = a0 sin(a1 x0) + a2 x1²: Laplacian and its parameter gradient in closed form."""
    a = torch.tensor([1.5, 2.0, -0.5], dtype=torch.float64)
    pts = torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def lap(params, x):
        u = lambda xp: (params[0] * torch.sin(params[1] * xp[0]) + params[2] * xp[1] ** 2).reshape(1)
        return op.laplacian(u, x)

    vals = vmap(lap, in_dims=(None, 0))(a, pts)
    x0 = pts[:, 0]
    assert torch.allclose(vals, -a[0] * a[1] ** 2 * torch.sin(a[1] * x0) + 2 * a[2], atol=1e-12)
    jac = vmap(jacrev(lap), in_dims=(None, 0))(a, pts)
    expected = torch.stack([
        -a[1] ** 2 * torch.sin(a[1] * x0),
        -a[0] * (2 * a[1] * torch.sin(a[1] * x0) + a[1] ** 2 * x0 * torch.cos(a[1] * x0)),
        torch.full_like(x0, 2.0),
    ], 1)
    assert torch.allclose(jac, expected, atol=1e-11)


def poisson_neumann():
    """-Δu = 2π² sin(πx) cos(πy) on [0, 1]²: u given on x = 0, 1, ∂u/∂n given on y = 0, 1 (the
    README's Neumann example: the outward normals ride along as per-point targets)."""
    from pinnlsr import PDEProblem, Term
    from pinnlsr.geometry import Box

    exact = lambda x: (torch.sin(math.pi * x[:, 0]) * torch.cos(math.pi * x[:, 1])).unsqueeze(1)
    grad = lambda x: math.pi * torch.stack([torch.cos(math.pi * x[0]) * torch.cos(math.pi * x[1]),
                                            -torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])])
    box = Box((0.0, 0.0), (1.0, 1.0))
    xb = box.sample_boundary(100, generator=torch.Generator().manual_seed(1))
    on_y = (xb[:, 1] < 1e-12) | (xb[:, 1] > 1 - 1e-12)

    class Problem(PDEProblem):
        name, input_names = "poisson_neumann", ("x", "y")

        def terms(self):
            return [Term("pde", lambda u, x: -op.laplacian(u, x) - 2 * math.pi**2 * torch.sin(math.pi * x[0])
                         * torch.cos(math.pi * x[1]), box.sample_interior, n_points=200),
                    Term("dirichlet", lambda u, x: u(x) - exact(x[None])[0], xb[~on_y]),
                    Term("neumann", lambda u, x, n: op.gradient(u, x) @ n - grad(x) @ n, xb[on_y],
                         targets=box.boundary_normal(xb[on_y]))]

        def exact(self, x):
            return exact(x)

        def test_points(self):
            return torch.rand(300, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    return Problem()


def test_neumann_condition_with_normals_as_targets():
    from pinnlsr import MLP, lsr

    problem = poisson_neumann()
    gen = torch.Generator().manual_seed(0)
    model = MLP(2, 1, (20, 20), generator=gen)
    result = lsr(problem, model, points=problem.sample_points(gen))
    assert result.diagnostics["after"].rel_l2 < 1e-5 < result.diagnostics["before"].rel_l2
