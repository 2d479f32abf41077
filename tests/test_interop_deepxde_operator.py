"""pinnlsr.interop.deepxde_operator against DeepXDE's own PI-DeepONet losses (skipped without DeepXDE).

Oracles: DeepXDE's training losses (model.outputs_losses_train) for one input function, a dense
torch.autograd.functional.jacobian of the whole instance residual, and the antiderivative of the
input function by quadrature. Everything in float64 on tiny DeepONets.
"""
import os

os.environ.setdefault("DDE_BACKEND", "pytorch")

import numpy as np
import pytest
import torch

dde = pytest.importorskip("deepxde")
if getattr(dde.backend, "backend_name", None) != "pytorch":  # pragma: no cover
    pytest.skip("DeepXDE is not on the PyTorch backend in this session", allow_module_level=True)

from pinnlsr.interop import deepxde as px  # noqa: E402
from pinnlsr.interop import deepxde_operator as pxo  # noqa: E402
from pinnlsr.reference_solvers import antiderivative  # noqa: E402
from oracles import check_products_against_dense  # noqa: E402

N_SENSORS = 10


@pytest.fixture(autouse=True)
def float64_deepxde():
    """DeepXDE's float64 mode and seeds are global: restore torch's default dtype afterwards."""
    old = torch.get_default_dtype()
    dde.config.set_default_float("float64")
    dde.config.set_random_seed(0)
    yield
    dde.config.real.set_float32()
    torch.set_default_dtype(old)


def antiderivative_model(num_func=6, width=16, hard_ic=False, loss_weights=(1.0, 2.0)):
    """u' = v on [0, 1], u(0) = 0 (soft IC, or a hard x·N transform), v from a GRF."""

    def pde(x, u, v):
        return dde.grad.jacobian(u, x) - v

    geom = dde.geometry.TimeDomain(0, 1)
    ic = dde.icbc.IC(geom, lambda _: 0, lambda _, on_initial: on_initial)
    pde_data = dde.data.PDE(geom, pde, ic, num_domain=12, num_boundary=2, num_test=20)
    space = dde.data.GRF(length_scale=0.2, N=200)
    eval_pts = np.linspace(0, 1, N_SENSORS)[:, None]
    data = dde.data.PDEOperatorCartesianProd(pde_data, space, eval_pts, num_func)
    net = dde.nn.DeepONetCartesianProd([N_SENSORS, width, width], [1, width, width], "tanh", "Glorot normal")
    if hard_ic:
        net.apply_output_transform(lambda inputs, outputs: outputs * inputs[1].T)
    model = dde.Model(data, net)
    model.compile("adam", lr=2e-3, loss_weights=None if hard_ic else list(loss_weights))
    return model, space


def test_instance_residual_equals_deepxde_losses_per_function(monkeypatch):
    model, _ = antiderivative_model()
    data = model.data
    V, X = data.train_x
    monkeypatch.setattr(data, "batch_size", 1)  # DeepXDE's loss over a batch of one function
    for i in (0, 3):
        prob = pxo.DeepONetInstanceProblem(model, i)
        assert prob.term_names == ["pde", "bc0:IC"] and prob.pointwise
        theirs = model.outputs_losses_train((V[i:i + 1], X), None, data.train_aux_vars[i:i + 1])[1].detach()
        ours = torch.tensor(prob.term_losses())
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
        f = prob.residual_at(prob.theta())
        assert abs(float(f @ f) - float(theirs.sum())) <= 1e-12 * float(theirs.sum())
    # the whole-batch loss is the mean of the per-instance losses
    monkeypatch.setattr(data, "batch_size", None)
    theirs = model.outputs_losses_train(data.train_x, None, data.train_aux_vars)[1].detach()
    ours = torch.tensor([pxo.DeepONetInstanceProblem(model, i).term_losses() for i in range(len(V))]).mean(0)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)


def test_instance_jacobian_products_match_dense_oracle():
    model, space = antiderivative_model(num_func=3, width=6)
    feats = space.random(1)
    v = space.eval_batch(feats, np.linspace(0, 1, N_SENSORS)[:, None])[0]
    prob = pxo.DeepONetInstanceProblem(model, v, lambda x: space.eval_batch(feats, x),
                                       anchors=np.linspace(0.05, 0.95, 7)[:, None], chunk=4)
    oracle = check_products_against_dense(prob, n_vjp=5)
    torch.testing.assert_close(prob.jacobian(prob.theta(), batch=5), oracle, rtol=0,
                               atol=1e-13 * float(oracle.abs().max()))
    from deepxde.gradients import gradients_reverse as gr
    assert not gr.jacobian._Jacobians.Js


def test_instance_lsr_reduces_antiderivative_error():
    model, space = antiderivative_model(num_func=20, width=20, hard_ic=True)
    model.train(iterations=300, verbose=0)
    dde.config.set_random_seed(7)
    feats = space.random(1)
    v = space.eval_batch(feats, np.linspace(0, 1, N_SENSORS)[:, None])[0]
    fun = lambda s: space.eval_batch(feats, np.asarray(s).reshape(-1, 1))[0]  # noqa: E731
    x = np.linspace(0, 1, 101)
    reference = (x[:, None], antiderivative(fun, x, n=20000)[:, None])
    res = pxo.refine_instance(model, v, lambda p: fun(p[:, 0]), anchors=np.linspace(0, 1, 80)[1:-1, None],
                              rank=60, seed=0, reference=reference)
    d = res.diagnostics
    assert d["rank"] == 60 and d["subspace"] == "randomized"
    assert d["after"].rel_l2 < d["before"].rel_l2 / 50, d
    np.testing.assert_allclose(pxo.predict_instance(model, v, reference[0]), px.predict(res.problem.net,
                                                                                         reference[0]))
    assert float(res.predictor(torch.zeros(1, 1, dtype=torch.float64)).detach().abs()) < 1e-14  # hard IC kept


def test_operator_bad_inputs_give_clear_errors():
    model, space = antiderivative_model(num_func=2, width=4)
    with pytest.raises(TypeError, match="refine_instance"):
        px.DeepXDEProblem(model)  # the PINN interop points to the per-instance one
    geom = dde.geometry.Interval(0, 1)
    pinn = dde.Model(dde.data.PDE(geom, lambda x, y: dde.grad.hessian(y, x), [], 8, 2),
                     dde.nn.FNN([1, 4, 1], "tanh", "Glorot uniform"))
    with pytest.raises(TypeError, match="PDEOperatorCartesianProd"):
        pxo.DeepONetInstanceProblem(pinn, np.zeros(N_SENSORS), np.zeros(10))
    with pytest.raises(ValueError, match="sensor"):
        pxo.DeepONetInstanceProblem(model, np.zeros(N_SENSORS - 1), model.data.train_aux_vars[0])
    with pytest.raises(ValueError, match="aux has"):
        pxo.DeepONetInstanceProblem(model, model.data.train_x[0][0], np.zeros(3))
    with pytest.raises(ValueError, match="callable"):
        pxo.DeepONetInstanceProblem(model, 0, anchors=np.array([[0.5]]))
    # network output size disagreeing with the problem (the IC is on output component 1)
    pde_data = dde.data.PDE(dde.geometry.TimeDomain(0, 1), lambda x, u, v: dde.grad.jacobian(u, x) - v,
                            dde.icbc.IC(dde.geometry.TimeDomain(0, 1), lambda _: 0, lambda _, on: on, component=1),
                            num_domain=6, num_boundary=2)
    data = dde.data.PDEOperatorCartesianProd(pde_data, space, np.linspace(0, 1, N_SENSORS)[:, None], 2)
    net = dde.nn.DeepONetCartesianProd([N_SENSORS, 4, 4], [1, 4, 4], "tanh", "Glorot normal")
    with pytest.raises(ValueError, match="output size"):
        pxo.DeepONetInstanceProblem(dde.Model(data, net), 0)
