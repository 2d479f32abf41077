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


def test_the_optimizer_factory_updates_the_model_through_shaped_views_of_theta():
    """One SGD step through the factory: θ1 = θ0 - lr·∇L(θ0), with the model's parameter shapes."""
    problem, model, points = setup()
    spec = ParamSpec.of(model)
    theta0 = spec.flatten(model)
    _, grad = Objective(problem, model, points).value_and_grad(theta0)
    made = []

    def sgd(params, lr):
        made.append([p.shape for p in params])
        return torch.optim.SGD(params, lr=lr)

    hist = train_adam(problem, model, points, 1, lr=1e-3, final_lr=None, optimizer=sgd, progress=False)
    assert made == [list(spec.shapes)]
    assert hist.best_step == 1  # the step lowered the loss, so the model holds θ1
    torch.testing.assert_close(spec.flatten(model), theta0 - 1e-3 * grad, rtol=0, atol=1e-15)


def test_the_callback_sees_the_model_at_the_logged_step():
    problem, model, points = setup()
    seen = []
    train_adam(problem, model, points, 30, lr=1e-2, log_every=10, progress=False,
               callback=lambda step, loss: seen.append((loss, loss_of(problem, model, points))))
    assert len(seen) == 4 and seen[0][0] > seen[-1][0]
    for logged, of_model in seen:
        assert of_model == pytest.approx(logged, rel=1e-12)


def test_the_schedule_holds_the_final_rate_after_decay_steps_and_min_steps_outlast_max_seconds():
    problem, model, points = setup()
    rates = []

    class SGD(torch.optim.SGD):  # records the learning rate of every step
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    hist = train_adam(problem, model, points, 12, lr=1e-3, final_lr=1e-4, decay_steps=4, optimizer=SGD,
                      log_every=1, max_seconds=0.0, min_steps=8, progress=False)
    assert hist.step[-1] == 7  # stopped at the first logged step once min_steps were done
    assert rates[:5] == pytest.approx([1e-3 * 0.1 ** (k / 4) for k in range(5)], rel=1e-12)
    assert rates[4:] == pytest.approx([1e-4] * 4, rel=1e-12)


def test_soap_lowers_the_loss_and_keeps_the_best_state():
    pytest.importorskip("pytorch_optimizer")
    from pinnlsr.train import soap_optimizer

    problem, model, points = setup()
    before = loss_of(problem, model, points)
    made = []
    soap = soap_optimizer()

    def factory(params, lr):
        made.append(soap(params, lr))
        return made[-1]

    hist = train_adam(problem, model, points, 60, lr=1e-2, log_every=20, optimizer=factory, progress=False)
    assert type(made[0]).__name__ == "SOAP" and made[0].param_groups[0]["weight_decay"] == 0.0
    after = loss_of(problem, model, points)
    assert after < 0.8 * before and not hist.diverged
    assert after <= min(hist.loss) * (1 + 1e-12)


def test_soap_without_its_package_names_the_install_command(monkeypatch):
    import sys

    from pinnlsr.train import soap_optimizer

    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match="pip install pytorch-optimizer"):
        soap_optimizer()


def test_bfgs_lowers_the_loss_below_lbfgs_and_ends_at_its_best_state():
    from pinnlsr.train import train_bfgs

    problem, model, points = setup()
    start = ParamSpec.of(model).flatten(model)
    before = loss_of(problem, model, points)
    hist = train_bfgs(problem, model, points, 40, log_every=10, progress=False)
    after = loss_of(problem, model, points)
    assert hist.step == [9, 19, 29, 39] and not hist.diverged
    assert after <= min(hist.loss) * (1 + 1e-12) and after == pytest.approx(hist.best_loss, rel=1e-12)
    ParamSpec.of(model).assign(model, start)
    train_lbfgs(problem, model, points, 2, progress=False)  # 40 loss evaluations at most
    assert after < 0.1 * before and after < loss_of(problem, model, points)


def test_bfgs_stops_at_its_wall_time_with_the_best_state_it_evaluated(monkeypatch):
    """On a clock that advances one second per reading, a 10-second budget allows at most ten loss
    evaluations; the model ends at the lowest loss among them, and a zero budget changes nothing."""
    from types import SimpleNamespace

    import pinnlsr.train as train
    from pinnlsr.train import train_bfgs

    clock = iter(range(10**6))
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    evaluated = []
    value_and_grad = Objective.value_and_grad

    def counted(self, theta):
        loss, grad = value_and_grad(self, theta)
        evaluated.append(float(loss))
        return loss, grad

    monkeypatch.setattr(Objective, "value_and_grad", counted)
    problem, model, points = setup()
    start = ParamSpec.of(model).flatten(model)
    train_bfgs(problem, model, points, 10**6, log_every=1, max_seconds=10.0, progress=False)
    assert 2 <= len(evaluated) <= 10
    assert loss_of(problem, model, points) == pytest.approx(min(evaluated), rel=1e-12)
    assert min(evaluated) < evaluated[0]
    ParamSpec.of(model).assign(model, start)
    evaluated.clear()
    hist = train_bfgs(problem, model, points, 10**6, max_seconds=0.0, progress=False)
    assert evaluated == [] and hist.step == []
    assert torch.equal(ParamSpec.of(model).flatten(model), start)


def test_bfgs_refuses_a_network_over_its_size_limit():
    from pinnlsr.train import train_bfgs

    problem, model, points = setup()
    with pytest.raises(ValueError, match="max_params=10"):
        train_bfgs(problem, model, points, 5, max_params=10)
    with pytest.raises(ValueError, match=">= 0"):
        train_bfgs(problem, model, points, -1)
