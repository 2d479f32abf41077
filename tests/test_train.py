"""pinnlsr.train: Adam and L-BFGS on ||f(θ)||², the best state kept, the loss matching the stacked
rows, logging and stopping rules."""
import math

import pytest
import torch

from pinnlsr.models import ParamSpec
from pinnlsr.residual import residual_rows
from pinnlsr.train import Objective, train_adam, train_lbfgs

from oracles import TinyPoisson, tiny_mlp


def setup():
    problem = TinyPoisson(n_pde=30, n_bc=12)
    return problem, tiny_mlp(), problem.sample_points(torch.Generator().manual_seed(2))


def loss_of(problem, model, points):
    theta = ParamSpec.of(model).flatten(model)
    return float(residual_rows(problem, model, points).values(theta).square().sum())


def test_objective_is_the_squared_residual_norm_with_its_gradient():
    problem, model, points = setup()
    objective = Objective(problem, model, points)
    theta = objective.spec.flatten(model)
    loss, grad = objective.value_and_grad(theta)
    assert float(loss) == pytest.approx(loss_of(problem, model, points), rel=1e-12)
    th = theta.clone().requires_grad_(True)
    exact, = torch.autograd.grad(residual_rows(problem, model, points).values(th).square().sum(), th)
    torch.testing.assert_close(grad, exact, rtol=1e-10, atol=1e-12)
    assert objective.value(theta) == pytest.approx(float(loss), rel=1e-12)


def test_adam_lowers_the_loss_logs_and_keeps_the_best_state():
    problem, model, points = setup()
    before = loss_of(problem, model, points)
    hist = train_adam(problem, model, points, 60, lr=1e-2, log_every=20, progress=False)
    assert hist.step == [0, 20, 40, 59] and len(hist.loss) == 4 and not hist.diverged
    after = loss_of(problem, model, points)
    assert after < 0.8 * before
    assert after <= min(hist.loss) * (1 + 1e-12)  # the model ends at the best state seen


def test_a_diverging_adam_run_leaves_the_best_model_behind():
    problem, model, points = setup()
    start = loss_of(problem, model, points)
    hist = train_adam(problem, model, points, 30, lr=50.0, final_lr=None, log_every=1, progress=False)
    assert loss_of(problem, model, points) <= start
    assert all(math.isfinite(p.detach().abs().max().item()) for p in model.parameters())
    assert hist.best_step >= 0 or hist.diverged


def test_lbfgs_lowers_the_loss_and_max_seconds_stops_a_run():
    problem, model, points = setup()
    before = loss_of(problem, model, points)
    train_lbfgs(problem, model, points, 5, progress=False)
    assert loss_of(problem, model, points) < 0.1 * before
    hist = train_adam(problem, model, points, 10_000, lr=1e-3, log_every=5, max_seconds=0.0, progress=False)
    assert hist.step[-1] < 10  # stopped at the first logged step
    with pytest.raises(ValueError, match=">= 0"):
        train_adam(problem, model, points, -1)
    with pytest.raises(ValueError, match=">= 0"):
        train_lbfgs(problem, model, points, -1)
