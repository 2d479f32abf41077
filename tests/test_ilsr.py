import math

import pytest
import torch

import pinnlsr.ilsr as ilsr_module
from pinnlsr.ilsr import iterative_lsr
from pinnlsr.models import ParamSpec
from pinnlsr.train import TrainHistory
from problems.burgers1d import Burgers1D

SETTINGS = dict(gn_iterations=2, gn_patience=1, align_iterations=2, dtau=None, compute_errors=False, seed=3)


def tiny_burgers():
    problem = Burgers1D(n_interior=48, n_boundary=12, n_initial=12, widths=(6, 6))
    return problem, problem.default_model(torch.Generator().manual_seed(0))


def _strip(history):
    return [{k: v for k, v in rec.items() if not k.startswith("seconds")} for rec in history]


class Interrupt(Exception):
    pass


def test_resumed_run_continues_with_the_same_history(tmp_path):
    problem, model = tiny_burgers()
    full = iterative_lsr(problem, model, outer_iterations=2, checkpoint=tmp_path / "full.pt", **SETTINGS)
    assert [r["iteration"] for r in full.history] == [0, 1, 2]

    def stop_after_first(rec):
        if rec["iteration"] == 1:
            raise Interrupt

    path = tmp_path / "cut.pt"
    with pytest.raises(Interrupt):
        iterative_lsr(problem, model, outer_iterations=2, checkpoint=path, callback=stop_after_first, **SETTINGS)
    resumed = iterative_lsr(problem, model, outer_iterations=2, checkpoint=path, **SETTINGS)
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.best_iteration == full.best_iteration
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(resumed.model(x), full.model(x))


def test_a_diverging_alignment_is_rejected_and_the_best_state_kept(monkeypatch):
    problem, model = tiny_burgers()
    start = ParamSpec.of(model).flatten(model)

    def diverging_fit(problem, model, points, iterations, **kwargs):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return TrainHistory(diverged=True)

    monkeypatch.setattr(ilsr_module, "train_lbfgs", diverging_fit)
    res = iterative_lsr(problem, model, outer_iterations=2, **SETTINGS)
    assert [r["accepted"] for r in res.history] == [True, False, False]
    # the network never took the diverged parameters ...
    assert torch.equal(ParamSpec.of(res.network).flatten(res.network), start)
    # ... and the result is the state with the lowest validation residual, which is finite
    vals = [r["validation_residual"] for r in res.history]
    assert res.diagnostics["validation_residual"] == min(vals)
    assert math.isfinite(res.diagnostics["validation_residual"])
    assert res.best_iteration == vals.index(min(vals))


@pytest.mark.parametrize("accept, values, verdict", [
    # (network_val, aligned_val, predictor_val, distance_before, distance_after)
    ("closer", (1.0, 0.9, 0.01, 0.5, 0.05), "residual"),
    ("closer", (1.0, 1.3, 0.01, 0.5, 0.05), "distance"),     # worse residual, nearer a better predictor
    ("residual", (1.0, 1.3, 0.01, 0.5, 0.05), None),
    ("closer", (1.0, 1.3, 2.0, 0.5, 0.05), None),            # the predictor is no better than the network
    ("closer", (1.0, 1.3, 0.01, 0.5, 0.6), None),            # the fit moved away from it
    ("closer", (1.0, math.nan, 0.01, 0.5, 0.05), None),      # diverged
])
def test_alignment_verdict(accept, values, verdict):
    assert ilsr_module.alignment_verdict(accept, 1.0, *values) == verdict


def test_an_alignment_nearer_a_better_predictor_is_taken_though_its_residual_is_worse(monkeypatch):
    """The fit is the real one; only the validation residual of the aligned network is reported
    1000 times too large. "residual" keeps the starting network, "closer" takes the fit."""
    problem = Burgers1D(n_interior=200, n_boundary=20, n_initial=20, widths=(8, 8))
    model = problem.default_model(torch.Generator().manual_seed(0))
    start = ParamSpec.of(model).flatten(model)
    real_fit, real_norm = ilsr_module.train_lbfgs, ilsr_module.residual_norm

    def fit_and_mark(problem, model, points, iterations, **kwargs):
        model.aligned = True
        return real_fit(problem, model, points, iterations, **kwargs)

    def norm(problem, module, points):
        return real_norm(problem, module, points) * (1e3 if getattr(module, "aligned", False) else 1.0)

    monkeypatch.setattr(ilsr_module, "train_lbfgs", fit_and_mark)
    monkeypatch.setattr(ilsr_module, "residual_norm", norm)
    settings = {**SETTINGS, "align_iterations": 5}
    kept = iterative_lsr(problem, model, outer_iterations=1, accept="residual", **settings)
    assert [r["accepted"] for r in kept.history] == [True, False]
    assert torch.equal(ParamSpec.of(kept.network).flatten(kept.network), start)
    taken = iterative_lsr(problem, model, outer_iterations=1, accept="closer", **settings)
    rec = taken.history[1]
    assert rec["accepted"] and rec["accepted_by"] == "distance"
    assert rec["validation_residual"] < taken.history[0]["validation_residual"]
    assert not torch.equal(ParamSpec.of(taken.network).flatten(taken.network), start)


def test_alignment_loss_keeps_the_pde_as_a_weak_term():
    from pinnlsr.ilsr import AlignmentProblem
    from pinnlsr.residual import residual_rows

    problem, model = tiny_burgers()
    points = problem.sample_points(torch.Generator().manual_seed(5))
    x = torch.cat(list(points.values()))
    targets = torch.zeros(x.shape[0], 1, dtype=torch.float64)
    theta = ParamSpec.of(model).flatten(model)
    pde_loss = float(residual_rows(problem, model, points).values(theta).square().sum())
    with torch.no_grad():
        fit = float(model(x).square().mean())
    weak = AlignmentProblem(problem, x, targets, dtau=0.1)
    loss = float(residual_rows(weak, model, {**points, "align": x}).values(theta).square().sum())
    assert loss == pytest.approx(pde_loss + fit / 0.1, rel=1e-12)
    pure = AlignmentProblem(problem, x, targets, dtau=None)
    assert [t.name for t in pure.terms()] == ["align"]


class LinearInParameters(torch.nn.Module):
    """u(x) = w · φ(x) + b with fixed features φ: the network at θ0 + V z is the predictor."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(6, 1, dtype=torch.float64)

    def forward(self, x):
        k = torch.arange(1, 4, dtype=x.dtype)
        feats = torch.cat([torch.sin(k * x[:, :1] * x[:, 1:2]), torch.cos(k * x[:, :1] + x[:, 1:2])], 1)
        return self.head(feats)


def test_warm_start_moves_the_alignment_start_to_the_step_when_that_fits_better():
    from pinnlsr.ilsr import AlignmentProblem, _warm_start, residual_norm
    from pinnlsr.models import LinearizedModel

    problem = Burgers1D(n_interior=30, n_boundary=6, n_initial=6)
    points = problem.sample_points(torch.Generator().manual_seed(1))
    x = torch.cat(list(points.values()))
    gen = torch.Generator().manual_seed(2)
    for make, expected in ((LinearInParameters, 1.0), (lambda: tiny_burgers()[1], None)):
        net = make()
        spec = ParamSpec.of(net)
        delta = 0.3 * torch.randn(spec.numel, generator=gen, dtype=torch.float64)
        lin = LinearizedModel(net, torch.eye(spec.numel, dtype=torch.float64), delta)
        with torch.no_grad():
            targets = lin(x)
        align = AlignmentProblem(problem, x, targets, dtau=None)
        before = residual_norm(align, net, {"align": x})
        s = _warm_start(align, net, {"align": x}, delta, spec)
        after = residual_norm(align, net, {"align": x})
        assert after <= before and s in (0.0, 0.25, 0.5, 1.0)
        assert torch.allclose(spec.flatten(net), lin.theta0 + s * delta)
        if expected is not None:  # linear in θ: the step reproduces the predictor exactly
            assert s == expected and after < 1e-12 * before


def test_final_refinement_runs_in_the_whole_space_on_its_own_points_and_resumes_finished(tmp_path):
    """After the outer iterations one Gauss–Newton run from the current network in the whole
    parameter space on more points: one more history record, the best state when its validation
    residual is the lowest (on a linear PDE the whole space is far better than rank 10); a finished
    run does not run it again."""
    from oracles import TinyPoisson, tiny_mlp

    problem, model = TinyPoisson(n_pde=60, n_bc=20), tiny_mlp(widths=(8, 8))
    m = ParamSpec.of(model).numel
    final = dict(final_gn_iterations=2, final_counts={"pde": 150})
    path = tmp_path / "ilsr.pt"
    res = iterative_lsr(problem, model, outer_iterations=1, rank=10, checkpoint=path, **final, **SETTINGS)
    assert [r.get("final", False) for r in res.history] == [False, False, True]
    last = res.history[-1]
    assert last["rank"] == m and last["points"] == {"pde": 150, "bc": 20}
    assert 1 <= last["gn_iterations"] <= 2
    assert last["validation_residual"] < 0.1 * res.history[1]["validation_residual"]
    best = min(min(r["validation_residual"], r["network_validation_residual"]) for r in res.history)
    assert res.diagnostics["validation_residual"] == best == last["validation_residual"]
    assert res.best_iteration == 2 and res.diagnostics["best_state"] == "predictor"
    assert res.model.basis.shape == (m, m)  # the final predictor spans the whole space
    # no alignment after the final step: the network is the one the outer iteration aligned
    assert last["network_validation_residual"] == res.history[1]["network_validation_residual"]
    again = iterative_lsr(problem, model, outer_iterations=1, rank=10, checkpoint=path, **final, **SETTINGS)
    assert _strip(again.history) == _strip(res.history)
    with pytest.raises(ValueError, match="other settings"):
        iterative_lsr(problem, model, outer_iterations=1, rank=10, checkpoint=path, final_gn_iterations=3,
                      **SETTINGS)


def test_chord_steps_reach_every_gauss_newton_run_and_the_checkpoint_settings(tmp_path):
    """chord_steps goes to each outer iteration's and the final refinement's Gauss–Newton (the
    history counts the chord steps taken); a checkpoint written without them is not resumed with."""
    problem, model = tiny_burgers()
    path = tmp_path / "ilsr.pt"
    kwargs = dict(outer_iterations=2, rank=20, final_gn_iterations=1, final_rank=30, checkpoint=path, **SETTINGS)
    plain = iterative_lsr(problem, model, **kwargs)
    assert all(rec.get("chord_steps", 0) == 0 for rec in plain.history)
    with pytest.raises(ValueError, match="other settings"):
        iterative_lsr(problem, model, chord_steps=3, **kwargs)
    chords = iterative_lsr(problem, model, chord_steps=3, **{**kwargs, "checkpoint": tmp_path / "c.pt"})
    taken = [rec.get("chord_steps") for rec in chords.history[1:]]
    assert all(t is not None and 0 <= t <= 3 * SETTINGS["gn_iterations"] for t in taken) and sum(taken) >= 1
    assert chords.history[-1]["final"] and math.isfinite(chords.diagnostics["validation_residual"])


def test_final_refinement_at_a_given_rank():
    problem, model = tiny_burgers()
    res = iterative_lsr(problem, model, outer_iterations=1, rank=10, final_gn_iterations=1, final_rank=20,
                        **SETTINGS)
    assert res.history[-1]["final"] and res.history[-1]["rank"] == 20
    assert res.history[-1]["points"] == {"pde": 48, "bc": 12, "ic": 12}


def test_final_rank_equal_to_the_parameter_count_is_the_whole_space_for_any_size(monkeypatch):
    problem, model = tiny_burgers()
    m = ParamSpec.of(model).numel
    monkeypatch.setattr(ilsr_module, "FULL_SPACE_MAX_PARAMS", 10)  # the network counts as large
    calls, real = [], ilsr_module.tangent_gauss_newton

    def recorded(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("rank", "subspace")})
        return real(*args, **kwargs)

    monkeypatch.setattr(ilsr_module, "tangent_gauss_newton", recorded)
    for final_rank, expected in ((m, {"rank": None, "subspace": "full"}),
                                 (None, {"rank": 10, "subspace": "auto"})):
        calls.clear()
        res = iterative_lsr(problem, model, outer_iterations=1, rank=10, final_gn_iterations=1,
                            final_rank=final_rank, **SETTINGS)
        assert calls[-1] == expected and res.history[-1]["final"]
    assert res.history[-1]["rank"] == 10


@pytest.mark.parametrize("kwargs,fragment", [
    ({"final_gn_iterations": -1}, "final_gn_iterations must be >= 0"),
    ({"final_gn_iterations": 1, "final_rank": 10_000}, "final_rank must be between 1 and"),
    ({"final_gn_iterations": 1, "final_counts": {"pdf": 10}}, "does not sample"),
    ({"final_gn_iterations": 1, "final_counts": {"pde": 0}}, "at least 1 point"),
])
def test_final_refinement_options_that_cannot_run_are_refused(kwargs, fragment):
    problem, model = tiny_burgers()
    with pytest.raises(ValueError, match=fragment):
        iterative_lsr(problem, model, outer_iterations=1, rank=10, **kwargs, **SETTINGS)
