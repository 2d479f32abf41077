"""The six problems of the nonlinear benchmark: they build, their residuals are finite, closed-form
solutions satisfy their own PDE and boundary terms, and reference data has the problem's shape."""
import dataclasses
import importlib

import pytest
import torch
from torch import nn

from pinnlsr.metrics import reference_on
from pinnlsr.models import ParamSpec
from pinnlsr.residual import residual_rows

SMALL = dict(n_interior=16, widths=(6,))
PROBLEMS = {
    "burgers1d": ("Burgers1D", dict(SMALL, n_boundary=8, n_initial=8)),
    "allen_cahn1d": ("AllenCahn1D", dict(SMALL, n_initial=8)),
    "helmholtz2d": ("Helmholtz2D", dict(SMALL, n_boundary=8)),
    "kovasznay": ("Kovasznay", dict(SMALL, n_boundary=8)),
    "poisson2d_hard": ("Poisson2DHard", dict(SMALL, n_boundary=8)),
    "lid_driven": ("LidDriven", dict(SMALL, n_boundary=8)),
}


def build(name):
    cls, kwargs = PROBLEMS[name]
    return getattr(importlib.import_module(f"problems.{name}"), cls)(**kwargs)


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_builds_with_finite_residual_and_reference(name):
    problem = build(name)
    gen = torch.Generator().manual_seed(0)
    model = problem.default_model(gen)
    rows = residual_rows(problem, model, problem.sample_points(gen))
    norms = rows.norms(ParamSpec.of(model).flatten(model))
    assert all(torch.isfinite(torch.tensor(v)) for v in norms.values())
    x, u = reference_on(problem, torch.float64, "cpu")
    assert x.shape[1] == problem.dim and u.shape == (x.shape[0], problem.n_outputs)


class ClosedForm(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.unused = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x):
        return self.fn(x) + 0 * self.unused


@pytest.mark.parametrize("name", ["helmholtz2d", "kovasznay", "poisson2d_hard"])
def test_exact_solution_has_zero_residual(name):
    problem = build(name)
    model = ClosedForm(problem.exact)
    rows = residual_rows(problem, model, problem.sample_points(torch.Generator().manual_seed(1)))
    for term, value in rows.norms(ParamSpec.of(model).flatten(model)).items():
        assert value < 1e-12, (term, value)


def test_periodic_allen_cahn_network_is_periodic():
    problem = build("allen_cahn1d")
    model = problem.default_model(torch.Generator().manual_seed(0))
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    left = torch.stack([-torch.ones_like(t), t], 1)
    right = torch.stack([torch.ones_like(t), t], 1)
    assert torch.allclose(model(left), model(right), atol=1e-12)



@pytest.mark.slow
def test_poisson2d_hard_lsr_from_the_sine_network_reaches_the_multiscale_solution():
    """Reduced size (2-[30]x3-1, 2,000 + 400 points, 500 Adam steps): Adam alone stays near relative
    error 1 (spectral bias), whole-space LSR from its network reaches 2.4e-5 against the exact
    solution (measured; the default size reaches 5e-7)."""
    from pinnlsr.lsr import lsr
    from pinnlsr.train import train_adam

    problem = importlib.import_module("problems.poisson2d_hard").Poisson2DHard(
        n_interior=2000, n_boundary=400, widths=(30, 30, 30))
    gen = torch.Generator().manual_seed(0)
    model = problem.default_model(gen)
    points = problem.sample_points(gen)
    train_adam(problem, model, points, 500, 1e-3, 1e-4, progress=False)
    d = lsr(problem, model, points=points, subspace="full").diagnostics
    assert d["before"].rel_l2 > 0.5
    assert d["after"].rel_l2 < 1e-4


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_default_run_has_a_valid_subspace(name):
    """What ``python -m problems.NAME`` runs must not fail at the LSR stage after its training: a
    network too large for the whole space needs a rank in the module's DEFAULTS."""
    from pinnlsr.lsr import resolve_subspace
    from pinnlsr.runner import build_parser

    module = importlib.import_module(f"problems.{name}")
    problem = module.PROBLEM()
    args = build_parser(problem, getattr(module, "DEFAULTS", {})).parse_args([])
    n_params = ParamSpec.of(problem.default_model(torch.Generator().manual_seed(0))).numel
    assert resolve_subspace(n_params, args.rank, args.subspace) in ("full", "randomized", "svd")


def test_runner_refuses_a_missing_rank_before_training(capsys):
    from pinnlsr.runner import main

    module = importlib.import_module("problems.allen_cahn1d")
    defaults = dataclasses.replace(module.DEFAULTS, rank=None)
    code = main(module.AllenCahn1D, argv=["--adam-steps", "100000", "--quiet"], defaults=defaults)
    assert code == 2 and "needs a rank" in capsys.readouterr().err


def test_benchmark_settings_have_a_valid_subspace():
    """scripts/benchmark_pinns.py at full size: every problem's LSR / ILSR settings resolve."""
    from pinnlsr.lsr import resolve_subspace
    from scripts_helper import load_script

    bench = load_script("benchmark_pinns")
    for name, (module, cls) in bench.PROBLEMS.items():
        problem = getattr(importlib.import_module(module), cls)()
        n_params = ParamSpec.of(problem.default_model(torch.Generator().manual_seed(0))).numel
        assert resolve_subspace(n_params, bench.settings(name, quick=False).rank, "auto"), name


def test_lid_driven_crowds_pde_points_at_the_lid_corners():
    from problems.lid_driven import LidDriven

    def near_corners(x, radius):
        r = torch.minimum(torch.hypot(x[:, 0], 1 - x[:, 1]), torch.hypot(1 - x[:, 0], 1 - x[:, 1]))
        return float((r < radius).float().mean())

    x = LidDriven().sample_pde_points(4000, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2) and bool(((x >= 0) & (x <= 1)).all())
    # 20% in the two 0.1 squares, graded: far more within 0.01 of a corner than uniform points (0.016%)
    assert near_corners(x, 0.01) > 0.03
    uniform = LidDriven(corner_fraction=0.0).sample_pde_points(4000, torch.Generator().manual_seed(0))
    assert near_corners(uniform, 0.01) < 0.002
    in_squares = LidDriven(corner_grading=1.0).sample_pde_points(4000, torch.Generator().manual_seed(0))
    assert float(((in_squares[:, 1] > 0.9) & ((in_squares[:, 0] < 0.1) | (in_squares[:, 0] > 0.9))).float().mean()) \
        == pytest.approx(0.2 + 0.8 * 0.02, abs=0.02)
    with pytest.raises(ValueError, match="corner_fraction"):
        LidDriven(corner_fraction=1.0)


def test_lid_driven_reports_errors_outside_the_singular_corners_beside_all_nodes():
    """rel_l2_outside_corners leaves out the 18 reference nodes within 0.01 of the two lid corners;
    the all-node rel_l2 is always reported beside it."""
    from pinnlsr.metrics import model_errors
    from problems.lid_driven import LidDriven

    from shared_data import reference_file

    reference_file("pinnacle/lid_driven_a4.dat")  # skipped without the shared data, an error under CI
    problem = LidDriven(n_interior=10, n_boundary=8, widths=(6,))
    x, u = problem.reference()
    mask = problem.error_regions(x)["outside_corners"]
    assert int((~mask).sum()) == 18

    class Reference(torch.nn.Module):  # the reference itself, off by 1 at the corner nodes only
        def forward(self, points):
            out = u.clone()
            out[~mask] += 1.0
            return out[: points.shape[0]] if points.shape[0] == u.shape[0] else out

    errors = model_errors(problem, Reference(), torch.float64, "cpu")
    assert errors["rel_l2_outside_corners"] == 0.0 and errors["max_abs_err_outside_corners"] == 0.0
    assert errors["rel_l2"] > 0 and errors["max_abs_err"] == 1.0


def test_lid_driven_area_gauge_is_the_mean_of_p_over_a_corner_square():
    """The gauge term is the Gauss–Legendre mean of p over [0, 0.05]² (exact for polynomials of
    degree < 2·gauge_nodes in each variable; gauge_size 0: p(0,0)); its rows come from jets at the
    quadrature nodes and equal the dense jacrev oracle; the reference's mean there is ~0."""
    from torch.func import functional_call, jacrev

    from pinnlsr import engine
    from problems.lid_driven import LidDriven, gauge_quadrature

    s = 0.05
    offsets, weights = gauge_quadrature(s, 3)
    assert offsets.shape == (9, 2) and abs(float(weights.sum()) - 1) < 1e-15
    mean = float((weights * offsets[:, 0] ** 5 * offsets[:, 1] ** 2).sum())
    assert abs(mean - s**5 / 6 * s**2 / 3) <= 1e-14 * s**7
    assert gauge_quadrature(0.0, 3) == (None, None)

    problem = LidDriven(n_interior=10, n_boundary=8, widths=(6,), gauge_nodes=3)  # default size 0.05
    origin = torch.zeros(2, dtype=torch.float64)
    p_field = lambda z: torch.stack([z[0], z[1], z[0] ** 2 - 2 * z[1] ** 3 + 0.3])  # noqa: E731
    area_mean = s**2 / 3 - 2 * s**3 / 4 + 0.3
    assert abs(float(problem.pressure_gauge(p_field, origin)) - area_mean) <= 1e-15
    point_gauge = LidDriven(n_interior=10, n_boundary=8, widths=(6,), gauge_size=0.0)
    assert float(point_gauge.pressure_gauge(p_field, origin)) == 0.3
    with pytest.raises(ValueError, match="gauge_size"):
        LidDriven(gauge_size=-0.1)

    model = problem.default_model(generator=torch.Generator().manual_seed(0))
    points = problem.sample_points(torch.Generator().manual_seed(1))
    rows = residual_rows(problem, model, points)
    theta = ParamSpec.of(model).flatten(model)
    eng = engine.StructuredJacobian(rows, theta)
    assert eng.plans["p0"].kind == "jet" and eng.plans["p0"].n_anchors == 9
    spec = ParamSpec.of(model)

    def gauge_of(flat):
        out = functional_call(model, spec.unflatten(flat), (offsets,))
        return (weights * out[:, 2]).sum().reshape(1)

    dense = jacrev(gauge_of)(theta)
    start = sum(b.points.shape[0] * b.q for b in rows.blocks[:-1])
    got = torch.cat([g for _, g in engine.iter_rows(rows, theta, engine=eng)])
    assert rows.blocks[-1].name == "p0"
    assert (got[start:] - problem.bc_weight**0.5 * dense).abs().max() <= 1e-10  # one gauge row, weight w

    from shared_data import reference_file

    reference_file("pinnacle/lid_driven_a4.dat")  # skipped without the shared data, an error under CI
    from scipy.interpolate import griddata

    x, u = problem.reference()
    near = x.abs().max(dim=1).values <= 0.2
    o, w = gauge_quadrature(s, 6)
    p_nodes = griddata(x[near].numpy(), u[near, 2].numpy(), o.numpy(), method="cubic")
    assert abs(float((w.numpy() * p_nodes).sum())) < 1e-6 * float(u[:, 2].abs().max())
