import math

import pytest
import torch

from pinnlsr.gauss_newton import tangent_gauss_newton
from pinnlsr.lsr import lsr
from pinnlsr.models import MLP
from pinnlsr.problem import PDEProblem, Term
from problems.burgers1d import Burgers1D

from oracles import TinyPoisson, tiny_mlp


def small_burgers(seed=0):
    problem = Burgers1D(n_interior=80, n_boundary=16, n_initial=16, widths=(8, 8))
    gen = torch.Generator().manual_seed(seed)
    return problem, problem.default_model(gen), problem.sample_points(gen)


def test_gauss_newton_lowers_the_burgers_residual_monotonically():
    problem, model, points = small_burgers()
    res = tangent_gauss_newton(problem, model, points=points, max_iters=5, patience=10, compute_errors=False)
    residuals = [h["residual"] for h in res.history]
    assert len(residuals) >= 4
    assert all(b < a for a, b in zip(residuals, residuals[1:])), residuals
    assert residuals[-1] < 0.8 * residuals[0]
    # each accepted step's linearized prediction is consistent: ||f + A δ|| <= ||f|| before the step
    for prev, h in zip(res.history, res.history[1:]):
        assert h["linearized_residual"] <= prev["residual"] * (1 + 1e-12)
    # the returned predictor is the record with the lowest validation residual
    best = min(range(len(res.history)), key=lambda i: res.history[i]["validation_residual"])
    assert res.best_iteration == best
    assert torch.equal(res.model.z.detach(), res.z)


@pytest.mark.parametrize("damping", [1e-30, 1e-20])
def test_gauss_newton_first_step_is_one_shot_lsr_for_a_linear_pde(damping):
    # with the default centre (1e-20) too: the search tries μ down to 0 on the first Jacobian
    problem = TinyPoisson(n_pde=150, n_bc=50)
    model = tiny_mlp(widths=(8, 8))
    points = problem.sample_points(torch.Generator().manual_seed(4))
    one_shot = lsr(problem, model, points=points, subspace="full", compute_errors=False)
    gn = tangent_gauss_newton(problem, model, points=points, validation_points=points, subspace="full",
                              max_iters=1, damping=damping, compute_errors=False)
    assert gn.history[1]["residual"] == pytest.approx(one_shot.diagnostics["after"].residual, rel=1e-6)
    # z itself is ill-determined along near-null directions of G: compare what the solve fixes, to
    # the rounding of a solve with cond(G) near 1/rcond (one path reduces [A | f] to R first)
    f0 = one_shot.diagnostics["before"].residual
    assert gn.history[1]["linearized_residual"] == pytest.approx(
        one_shot.diagnostics["linearized_residual"], rel=1e-6, abs=1e-10 * f0)


class Exponential(PDEProblem):
    """r = exp(10 u) - 1 at each point: from u ≈ -3 the undamped Gauss–Newton step overflows."""

    name = "exponential"
    input_names = ("x",)

    def terms(self):
        pts = torch.linspace(0, 1, 20, dtype=torch.float64).unsqueeze(1)
        return [Term("pde", lambda u, x: torch.exp(10 * u(x)) - 1, pts)]


def test_a_diverging_step_is_rejected_and_damping_grows():
    problem = Exponential()
    model = MLP(1, 1, (6,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.net[-1].bias.fill_(-3.0)
    res = tangent_gauss_newton(problem, model, max_iters=4, damping=1e-14, patience=10, compute_errors=False)
    first = res.history[1]
    assert first["rejected"] >= 1  # the overflowing trial steps were refused ...
    residuals = [h["residual"] for h in res.history]
    assert all(b < a for a, b in zip(residuals, residuals[1:]))  # ... and the residual still fell
    assert all(math.isfinite(r) for r in residuals)


class SineData(PDEProblem):
    """Supervised fit of sin(3x) on fixed points: a data term whose targets belong to its points."""

    input_names = ("x",)

    def __init__(self, seed):
        x = torch.rand(40, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.name = f"sine_data_{seed}"
        self._terms = [Term("data", lambda u, x, y: u(x) - y, x, targets=torch.sin(3 * x))]

    def terms(self):
        return self._terms


def test_validation_problem_scores_steps_with_its_own_targets():
    from pinnlsr.models import ParamSpec
    from pinnlsr.residual import residual_rows

    train, held_out = SineData(0), SineData(1)
    model = MLP(1, 1, (6,), generator=torch.Generator().manual_seed(0))
    res = tangent_gauss_newton(train, model, validation=held_out, rank=10, max_iters=3, patience=10,
                               compute_errors=False)
    spec = ParamSpec.of(model)
    expected = residual_rows(held_out, model, {"data": held_out.terms()[0].points}).values(spec.flatten(model)).norm()
    assert res.history[0]["validation_residual"] == pytest.approx(float(expected), rel=1e-12)
    assert torch.equal(res.validation_points["data"], held_out.terms()[0].points)
    # the held-out fit improves with the training fit on this smooth target
    assert res.history[res.best_iteration]["validation_residual"] < 0.5 * res.history[0]["validation_residual"]
    with pytest.raises(ValueError, match="not both"):
        tangent_gauss_newton(train, model, validation=held_out, validation_points={"data": torch.zeros(3, 1)})


def test_targets_are_never_paired_with_other_points():
    from pinnlsr.residual import residual_rows

    problem = SineData(0)
    model = MLP(1, 1, (6,), generator=torch.Generator().manual_seed(0))
    other = {"data": torch.rand(40, 1, dtype=torch.float64)}
    with pytest.raises(ValueError, match="targets belong to its own fixed points"):
        residual_rows(problem, model, other)
    rows = residual_rows(problem, model, other, targets={"data": torch.sin(3 * other["data"])})
    assert rows.n_rows == 40


def test_shifted_jacobian_equals_differentiating_the_predictor_in_z():
    from pinnlsr.gauss_newton import shifted_jacobian, z_jacobian
    from pinnlsr.models import LinearizedModel, ParamSpec
    from pinnlsr.residual import residual_rows

    problem, model, points = small_burgers(1)
    m = ParamSpec.of(model).numel
    gen = torch.Generator().manual_seed(2)
    V = torch.randn(m, 7, generator=gen, dtype=torch.float64) / m**0.5
    z = torch.randn(7, generator=gen, dtype=torch.float64)
    lin = LinearizedModel(model, V, z)
    direct = z_jacobian(residual_rows(problem, lin, points), z, m, None)
    shifted = shifted_jacobian(problem, lin, points)
    assert direct.shape == shifted.shape == (residual_rows(problem, lin, points).n_rows, 7)
    assert torch.allclose(shifted, direct, rtol=1e-10, atol=1e-10 * float(direct.abs().max()))


@pytest.mark.parametrize("rank", [20, None])  # 112 rows: QR then the SVD of R (20), the SVD of A (105)
def test_chord_steps_reuse_the_factorization_and_lower_both_residuals(monkeypatch, rank):
    """chord_steps: after a step, further steps from the same factorization with the updated
    residual. They are taken (the history counts them), they factorize nothing more, and the
    first iteration (same z, same Jacobian, same first step as without them) ends lower in both
    the training and the validation residual than without them."""
    import pinnlsr.gauss_newton as gn_module

    problem, model, points = small_burgers()
    kwargs = dict(points=points, rank=rank, max_iters=2, patience=10, compute_errors=False, seed=0)
    plain = tangent_gauss_newton(problem, model, **kwargs)
    built = []
    real = gn_module.DampedLeastSquares

    class Counting(real):
        def __init__(self, *args, **kw):
            built.append(kw.get("reusable", False))
            super().__init__(*args, **kw)

    monkeypatch.setattr(gn_module, "DampedLeastSquares", Counting)
    chords = tangent_gauss_newton(problem, model, chord_steps=4, **kwargs)
    assert built == [True, True]  # one factorization per Jacobian, kept for the chords
    taken = [h["chord_steps"] for h in chords.history]
    assert taken[0] == 0 and taken[1] >= 1 and max(taken) <= 4
    assert all(h["chord_steps"] == 0 for h in plain.history)
    first, first_plain = chords.history[1], plain.history[1]
    assert first["linearized_residual"] == pytest.approx(first_plain["linearized_residual"], rel=1e-12)
    assert first["residual"] < first_plain["residual"]
    assert first["validation_residual"] < first_plain["validation_residual"]
    with pytest.raises(ValueError, match="chord_steps"):
        tangent_gauss_newton(problem, model, chord_steps=-1, **kwargs)


def test_both_jacobians_give_the_same_gauss_newton_run():
    problem, model, points = small_burgers()
    runs = [tangent_gauss_newton(problem, model, points=points, rank=20, max_iters=3, patience=10,
                                 compute_errors=False, jacobian=j) for j in ("shifted", "direct")]
    for a, b in zip(runs[0].history, runs[1].history):
        assert a["residual"] == pytest.approx(b["residual"], rel=1e-8)


def test_a_budget_below_the_dense_step_streams_its_r_factor():
    """With a memory budget too small for the dense (n, r) matrix, each step folds the rows of
    [A | -f] into their R factor batch by batch: the same run as the dense step, to rounding."""
    from pinnlsr.gauss_newton import fits_dense

    problem, model, points = small_burgers()
    kwargs = dict(points=points, rank=40, max_iters=3, patience=10, compute_errors=False, seed=0)
    dense = tangent_gauss_newton(problem, model, **kwargs)
    n = sum(v.shape[0] for v in points.values())
    budget = 60_000  # bytes: under four times the 112 x 41 float64 matrix, above a few points' rows
    assert not fits_dense(n, 41, 8, budget, "cpu") and fits_dense(n, 41, 8, 10**7, "cpu")
    streamed = tangent_gauss_newton(problem, model, memory_budget=budget, **kwargs)
    assert len(streamed.history) == len(dense.history) >= 3
    for a, b in zip(streamed.history, dense.history):
        assert a["residual"] == pytest.approx(b["residual"], rel=1e-9)
    torch.testing.assert_close(streamed.z, dense.z, rtol=0, atol=1e-8 * float(dense.z.abs().max()))



def test_first_step_from_the_lsr_factorization_is_the_run_that_factorizes_itself(monkeypatch):
    """The one-shot LSR's factorization of [G V | -f0] is Gauss–Newton's first: passing it gives the
    same run, to rounding, with one Jacobian fewer."""
    import pinnlsr.gauss_newton as gn_module

    problem, model, points = small_burgers()
    one_shot = lsr(problem, model, points=points, rank=20, seed=0, compute_errors=False)
    kwargs = dict(points=points, basis=one_shot.basis, max_iters=3, patience=10, compute_errors=False)
    own = tangent_gauss_newton(problem, model, **kwargs)
    calls = []
    real = gn_module.shifted_jacobian
    monkeypatch.setattr(gn_module, "shifted_jacobian", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = tangent_gauss_newton(problem, model, first_step=one_shot.solution.factorization, **kwargs)
    assert len(reused.history) == len(own.history) == 4
    assert len(calls) == len(reused.history) - 2  # every iteration but the first formed its A
    for a, b in zip(reused.history, own.history):
        assert a["residual"] == pytest.approx(b["residual"], rel=1e-9)
    torch.testing.assert_close(reused.z, own.z, rtol=0, atol=1e-8 * float(own.z.abs().max()))
    assert reused.diagnostics["jacobian_backends"] == own.diagnostics["jacobian_backends"]
    # one iteration formed no Jacobian: no path to name (the LSR that made the factorization names it)
    single = tangent_gauss_newton(problem, model, first_step=one_shot.solution.factorization,
                                  **{**kwargs, "max_iters": 1})
    assert single.diagnostics["jacobian_backends"] == {}


def test_a_first_step_for_other_rows_or_rcond_is_refused():
    problem, model, points = small_burgers()
    one_shot = lsr(problem, model, points=points, rank=20, seed=0, compute_errors=False)
    step = one_shot.solution.factorization
    fewer = {k: v[:-2] for k, v in points.items()}
    with pytest.raises(ValueError, match="first_step factorizes a system of shape"):
        tangent_gauss_newton(problem, model, points=fewer, basis=one_shot.basis, first_step=step, max_iters=1)
    with pytest.raises(ValueError, match="first_step was made with rcond"):
        tangent_gauss_newton(problem, model, points=points, basis=one_shot.basis, first_step=step, rcond=1e-8,
                             max_iters=1)
    assert lsr(problem, model, points=points, rank=20, tikhonov=1e-3,
               compute_errors=False).solution.factorization is None  # a filtered solve is no LM factorization
