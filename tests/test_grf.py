"""Gaussian random field samplers: reproducibility, covariance, periodicity, interpolation."""
import math

import pytest
import torch

from pinnlsr.grf import FunctionBatch, periodic_grf, rbf_grf


def test_same_seed_same_functions():
    a = rbf_grf(3, generator=torch.Generator().manual_seed(7))
    b = rbf_grf(3, generator=torch.Generator().manual_seed(7))
    c = rbf_grf(3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.values, b.values) and not torch.allclose(a.values, c.values)
    p = periodic_grf(2, 64, generator=torch.Generator().manual_seed(7))
    q = periodic_grf(2, 64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(p.values, q.values)


def test_rbf_covariance_matches_kernel():
    fb = rbf_grf(4000, length_scale=0.2, n_grid=101, generator=torch.Generator().manual_seed(0))
    v = fb.values
    cov = (v.T @ v) / v.shape[0]
    for i, j in ((50, 50), (50, 70), (10, 30), (0, 40)):
        expected = math.exp(-0.5 * ((i - j) / 100) ** 2 / 0.2**2)
        assert abs(float(cov[i, j]) - expected) < 0.06, (i, j, float(cov[i, j]), expected)


def test_periodic_field_variance_and_periodicity():
    fb = periodic_grf(3000, 128, generator=torch.Generator().manual_seed(1))
    k = torch.arange(1, 65, dtype=torch.float64)
    var = (2 * 625.0**2 * ((2 * math.pi * k) ** 2 + 25) ** -4).sum()
    emp = fb.values.square().mean()
    assert abs(float(emp / var) - 1) < 0.08
    x = torch.tensor([0.1, 0.37, 0.999], dtype=torch.float64)
    assert torch.allclose(fb(x), fb(x + 1.0), atol=1e-12)
    # between the last node and 1 the field wraps to the first node
    assert torch.allclose(fb(torch.tensor([1.0], dtype=torch.float64))[:, 0], fb.values[:, 0])


def test_interpolation_is_exact_for_linear_functions():
    grid = torch.linspace(0, 1, 11, dtype=torch.float64)
    fb = FunctionBatch(grid, torch.stack([2 * grid + 1, -grid]))
    x = torch.rand(20, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert torch.allclose(fb(x), torch.stack([2 * x + 1, -x]), atol=1e-14)
    paired = fb(torch.stack([x, x.flip(0)]))
    assert torch.allclose(paired, torch.stack([2 * x + 1, -x.flip(0)]), atol=1e-14)


def test_nan_values_are_rejected():
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    vals = torch.zeros(2, 5, dtype=torch.float64)
    vals[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        FunctionBatch(grid, vals)
