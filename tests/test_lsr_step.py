"""pinnlsr.lsr.lsr_step, the streamed randomized-basis LSR step, against the dense oracle."""
import pytest
import torch

from pinnlsr.lsr import lsr_step
from pinnlsr.residual import output_rows

from oracles import dense_output_jacobian
from test_engine import budget_for, setup  # noqa: F401  (the fixture)


def dense_step(f0, g, j, omega, rank, rcond=1e-14):
    """The LSR step on dense matrices: the oracle for lsr_step."""
    q, _ = torch.linalg.qr(j.T @ omega)
    _, s, vh = torch.linalg.svd(j @ q, full_matrices=False)
    v = (q @ vh[:rank].T) / s[:rank]
    a = g @ v
    z = torch.linalg.lstsq(a, -f0, rcond=None, driver="gelsd").solution
    return v, z, float((a @ z + f0).norm())


@pytest.mark.parametrize("per_chunk", [None, 2])  # whole, and streamed TSQR in chunks
def test_lsr_step_matches_dense_oracle(setup, per_chunk):
    problem, model, points, rows, theta, f0, g = setup
    budget = None if per_chunk is None else budget_for(rows, per_chunk, 10)
    x_all = torch.cat(list(points.values()))
    out = output_rows(model, x_all)
    j = dense_output_jacobian(model, x_all)
    rank = 6
    omega = torch.randn(out.n_rows, rank + 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    res = lsr_step(rows, out, theta, rank, omega=omega, memory_budget=budget)
    v, z, linres = dense_step(f0, g, j, omega, rank)
    assert res.rank == rank
    assert abs(res.linearized_residual - linres) <= 1e-10 * linres
    assert abs(res.residual_before - float(f0.norm())) <= 1e-12 * float(f0.norm())
    # the basis is the dense one up to the sign of each direction; z follows the signs
    signs = torch.sign((res.V * v).sum(0))
    assert (res.V - v * signs).abs().max() <= 1e-8 * v.abs().max()
    assert (res.z - z * signs).norm() <= 1e-8 * z.norm()
    # J V is orthonormal (scaled basis)
    jv = j @ res.V
    assert (jv.T @ jv - torch.eye(rank, dtype=torch.float64)).abs().max() <= 1e-8




def test_lsr_step_reuses_engines_and_names_nan_terms(setup):
    problem, model, points, rows, theta, f0, g = setup
    out = output_rows(model, torch.cat(list(points.values())))
    omega = torch.randn(out.n_rows, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    first = lsr_step(rows, out, theta, 5, omega=omega)
    again = lsr_step(rows, out, theta, 5, omega=omega, engines=first.engines)
    assert (again.z - first.z).abs().max() == 0 and again.seconds["setup"] < first.seconds["setup"]
    with pytest.raises(ValueError, match="other Rows"):
        lsr_step(rows, out, theta, 5, omega=omega, engines=first.engines[::-1])
    bad = theta.clone()
    bad[-1] = float("nan")  # the output bias: NaN values of u, not of its derivatives (-Δu is finite)
    with pytest.raises(FloatingPointError, match="'bc'"):
        lsr_step(rows, out, bad, 5, omega=omega, engines=first.engines)
