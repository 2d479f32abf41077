"""pinnlsr.interop.deepxde against DeepXDE itself (skipped when DeepXDE is not installed).

Oracles: DeepXDE's own training losses (model.outputs_losses_train) for the imported residual, a
dense torch.autograd.functional.jacobian of the whole residual for the Jacobian products, exact
solutions for the refinements. Everything in float64 on tiny networks.
"""
import os
import sys
import types

os.environ.setdefault("DDE_BACKEND", "pytorch")

import numpy as np
import pytest
import torch

dde = pytest.importorskip("deepxde")
if getattr(dde.backend, "backend_name", None) != "pytorch":  # pragma: no cover
    pytest.skip("DeepXDE is not on the PyTorch backend in this session", allow_module_level=True)

from pinnlsr.interop import deepxde as px  # noqa: E402
from oracles import check_products_against_dense  # noqa: E402


@pytest.fixture(autouse=True)
def float64_deepxde():
    """DeepXDE's float64 mode sets torch's default dtype globally: restore both afterwards."""
    old = torch.get_default_dtype()
    dde.config.set_default_float("float64")
    torch.manual_seed(0)
    yield
    dde.config.real.set_float32()
    torch.set_default_dtype(old)


def _net(sizes, activation="tanh"):
    return dde.nn.FNN(sizes, activation, "Glorot uniform")


def poisson_1d_all_bcs():
    """-u'' = π² sin(πx) on [-1, 1] with a BC of every stationary kind (consistent with u = sin πx)."""

    def pde(x, y):
        return -dde.grad.hessian(y, x) - np.pi**2 * torch.sin(np.pi * x)

    geom = dde.geometry.Interval(-1, 1)
    left = lambda x, on: on and np.isclose(x[0], -1)  # noqa: E731
    right = lambda x, on: on and np.isclose(x[0], 1)  # noqa: E731
    bcs = [
        dde.icbc.DirichletBC(geom, lambda x: np.sin(np.pi * x), left),
        dde.icbc.NeumannBC(geom, lambda x: np.pi * np.cos(np.pi * x), right),  # du/dn = u' at x = 1
        dde.icbc.RobinBC(geom, lambda x, y: y - np.pi, right),  # du/dn = u - π  (u(1) = 0, u'(1) = -π)
        dde.icbc.OperatorBC(geom, lambda x, y, X: dde.grad.hessian(y, x), left),  # u''(-1) = 0
        dde.icbc.PointSetBC(np.array([[0.5], [-0.25]]), np.sin(np.pi * np.array([[0.5], [-0.25]]))),
    ]
    data = dde.data.PDE(geom, pde, bcs, 12, 2, solution=lambda x: np.sin(np.pi * x), num_test=50)
    model = dde.Model(data, _net([1, 12, 12, 1]))
    model.compile("adam", lr=1e-3, loss_weights=[1.0, 2.0, 0.5, 3.0, 0.25, 4.0])
    return model


def burgers_periodic_ic():
    """u_t + u u_x = ν u_xx, periodic in x (values and slopes), IC sin(πx): nonlinear, TimePDE."""

    def pde(x, y):
        u_x = dde.grad.jacobian(y, x, i=0, j=0)
        u_t = dde.grad.jacobian(y, x, i=0, j=1)
        return u_t + y * u_x - 0.05 * dde.grad.hessian(y, x, i=0, j=0)

    geom = dde.geometry.GeometryXTime(dde.geometry.Interval(-1, 1), dde.geometry.TimeDomain(0, 0.5))
    bcs = [
        dde.icbc.PeriodicBC(geom, 0, lambda x, on: on, derivative_order=0),
        dde.icbc.PeriodicBC(geom, 0, lambda x, on: on, derivative_order=1),
        dde.icbc.IC(geom, lambda x: np.sin(np.pi * x[:, 0:1]), lambda _, on: on),
    ]
    data = dde.data.TimePDE(geom, pde, bcs, num_domain=20, num_boundary=6, num_initial=6)
    model = dde.Model(data, _net([2, 8, 8, 1]))
    model.compile("adam", lr=1e-3, loss_weights=[1.0, 2.0, 3.0, 4.0])
    return model


@pytest.mark.parametrize("build", [poisson_1d_all_bcs, burgers_periodic_ic])
def test_residual_equals_deepxde_training_losses(build):
    model = build()
    prob = px.DeepXDEProblem(model)
    data = model.data
    theirs = model.outputs_losses_train(data.train_x, data.train_y, data.train_aux_vars)[1].detach()
    ours = torch.tensor(prob.term_losses())
    assert len(prob.term_names) == len(theirs) == len(prob.weights)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    f = prob.residual_at(prob.theta())
    assert f.shape == (prob.n_rows,)
    assert abs(float(f @ f) - float(theirs.sum())) <= 1e-12 * float(theirs.sum())


def test_jacobian_products_through_dde_grad_match_dense_oracle():
    prob = px.DeepXDEProblem(burgers_periodic_ic())
    oracle = check_products_against_dense(prob, n_vjp=70, atol_factor=10, batch=32)
    torch.testing.assert_close(prob.jacobian(prob.theta()), oracle, rtol=0, atol=1e-13 * float(oracle.abs().max()))
    # DeepXDE's global gradient caches are left empty
    from deepxde.gradients import gradients_reverse as gr
    assert not gr.jacobian._Jacobians.Js and not gr.hessian._Hessians.Hs


def test_blocked_jacobian_and_non_pointwise_fallback():
    """G is formed block by block for pointwise pdes; a pde coupling points is detected and gets the
    full-graph Jacobian; both match the dense oracle."""
    model = burgers_periodic_ic()
    blocked = px.DeepXDEProblem(model, chunk=3)
    assert blocked.pointwise
    theta = blocked.theta()
    full = px.DeepXDEProblem(model, pointwise=False).jacobian(theta)
    torch.testing.assert_close(blocked.jacobian(theta, batch=4), full, rtol=0, atol=1e-13 * float(full.abs().max()))

    def coupled(x, y):  # the mean over all points: not pointwise
        return -dde.grad.hessian(y, x) + y.mean() - 1.0

    geom = dde.geometry.Interval(-1, 1)
    data = dde.data.PDE(geom, coupled, dde.icbc.DirichletBC(geom, lambda x: 0 * x, lambda x, on: on), 10, 2)
    prob = px.DeepXDEProblem(dde.Model(data, _net([1, 6, 1])), chunk=4)
    assert not prob.pointwise and any("not pointwise" in n for n in prob.notes)
    th = prob.theta()
    oracle = torch.autograd.functional.jacobian(lambda t: prob.residual(params=prob.spec.unflatten(t)), th)
    torch.testing.assert_close(prob.jacobian(th), oracle, rtol=0, atol=1e-13 * float(oracle.abs().max()))


def test_levenberg_marquardt_accepts_only_decreasing_steps_and_keeps_best_validation_state():
    model = burgers_periodic_ic()
    prob = px.DeepXDEProblem(model)
    res = px.gauss_newton(model, problem=prob, iterations=6, validation=64, seed=3, damping=1e-6)
    d, hist = res.diagnostics, res.history
    accepted = [h["residual"] for h in hist if h["accepted"]]
    assert accepted and all(b < a for a, b in zip([d["before"].residual] + accepted, accepted))
    vals = [d["before"].validation] + [h["validation"] for h in hist if h["accepted"]]
    assert d["validation_points"] == 64 and d["after"].validation == pytest.approx(min(vals), rel=1e-12)
    X_val = prob.sample_pde_points(64, seed=3)
    assert d["after"].validation == pytest.approx(prob.validation_residual(prob.spec.flatten(res.network), X_val),
                                                  rel=1e-10)
    assert d["after"].residual < d["before"].residual


def test_lsr_solves_linear_problem_with_every_bc_kind():
    model = poisson_1d_all_bcs()
    X = np.linspace(-1, 1, 101)[:, None]
    res = px.refine(model, anchors=np.linspace(-0.98, 0.98, 40)[:, None], reference=(X, np.sin(np.pi * X)))
    d = res.diagnostics
    assert d["after"].residual < 1e-8 * d["before"].residual
    assert d["after"].rel_l2 < 1e-6 < d["before"].rel_l2
    before = [p.detach().clone() for p in model.net.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.net.parameters()))  # not modified


def test_hard_constraint_output_transform_refines_exactly_on_boundary():
    """Helmholtz-style hard Dirichlet transform (1 - x²)·N(x): the refined predictor keeps u(±1) = 0."""

    def pde(x, y):
        return -dde.grad.hessian(y, x) - np.pi**2 * torch.sin(np.pi * x)

    geom = dde.geometry.Interval(-1, 1)
    data = dde.data.PDE(geom, pde, [], 30, 2, solution=lambda x: np.sin(np.pi * x), num_test=64)
    net = _net([1, 16, 16, 1])
    net.apply_output_transform(lambda x, y: (1 - x**2) * y)
    model = dde.Model(data, net)
    model.compile("adam", lr=1e-3)
    res = px.refine(model)
    d = res.diagnostics
    assert d["before"].rel_l2 > 0.1 and d["after"].rel_l2 < 1e-6
    edge = res.predictor(torch.tensor([[-1.0], [1.0]], dtype=torch.float64))
    assert edge.abs().max() < 1e-14
    rnd = px.refine(model, subspace="randomized", rank=32, oversampling=0, problem=res.problem)
    assert rnd.diagnostics["rank"] == 32 and rnd.diagnostics["after"].rel_l2 < 1e-6


def test_gauss_newton_nonlinear_and_write_back_float32():
    """-u'' + u³ = f with u = sin(πx); the model is float32, refined in float64, written back."""

    def pde(x, y):
        s = torch.sin(np.pi * x)
        return -dde.grad.hessian(y, x) + y**3 - (np.pi**2 * s + s**3)

    dde.config.real.set_float32()
    torch.set_default_dtype(torch.float32)
    geom = dde.geometry.Interval(-1, 1)
    bc = dde.icbc.DirichletBC(geom, lambda x: np.sin(np.pi * x), lambda x, on: on)
    data = dde.data.PDE(geom, pde, bc, 30, 2, solution=lambda x: np.sin(np.pi * x), num_test=64)
    model = dde.Model(data, _net([1, 12, 12, 1]))
    model.compile("adam", lr=5e-3)
    model.train(iterations=300, verbose=0)
    assert next(model.net.parameters()).dtype == torch.float32
    res = px.gauss_newton(model, iterations=10)
    d = res.diagnostics
    assert any("float32" in n for n in d["notes"])
    assert d["after"].residual < 0.05 * d["before"].residual and d["after"].rel_l2 < 0.1 * d["before"].rel_l2
    X = np.linspace(-1, 1, 33)[:, None].astype(np.float32)
    err_before = np.abs(model.predict(X) - np.sin(np.pi * X)).max()
    info = px.write_back(model, res)
    assert "rounded" in info["note"]
    err_after = np.abs(model.predict(X) - np.sin(np.pi * X)).max()  # DeepXDE's own predict, float32
    assert err_after < 0.1 * err_before
    np.testing.assert_allclose(model.predict(X), res.predict(X), atol=1e-5)


def test_load_checkpoint_from_model_save(tmp_path):
    model = poisson_1d_all_bcs()
    path = model.save(str(tmp_path / "ckpt"))
    fresh = _net([1, 12, 12, 1])
    ignored = px.load_checkpoint(fresh, path)
    assert ignored == ["optimizer_state_dict"]
    for a, b in zip(fresh.parameters(), model.net.parameters()):
        assert torch.equal(a, b)
    (tmp_path / "x.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match="pickle"):
        px.load_checkpoint(fresh, tmp_path / "x.pkl")


def test_bad_inputs_give_clear_errors(monkeypatch):
    model = poisson_1d_all_bcs()
    # a TensorFlow/JAX model: another backend, or a net that is not a torch module
    monkeypatch.setattr(dde.backend, "backend_name", "tensorflow")
    with pytest.raises(RuntimeError, match="DDE_BACKEND=pytorch"):
        px.DeepXDEProblem(model)
    monkeypatch.setattr(dde.backend, "backend_name", "pytorch")
    with pytest.raises(TypeError, match="PyTorch backend"):
        px.DeepXDEProblem(types.SimpleNamespace(net=object(), data=model.data))
    # unsupported data object
    X = np.linspace(0, 1, 8)[:, None]
    dataset = dde.data.DataSet(X_train=X, y_train=X, X_test=X, y_test=X)
    with pytest.raises(TypeError, match="supports dde.data.PDE and dde.data.TimePDE"):
        px.DeepXDEProblem(dde.Model(dataset, _net([1, 4, 1])))
    # network output size disagreeing with the problem
    geom = dde.geometry.Interval(0, 1)
    bc = dde.icbc.DirichletBC(geom, lambda x: 0 * x, lambda x, on: on, component=1)
    data = dde.data.PDE(geom, lambda x, y: dde.grad.hessian(y, x), bc, 8, 2)
    with pytest.raises(ValueError, match="output size"):
        px.DeepXDEProblem(dde.Model(data, _net([1, 4, 1])))
    data = dde.data.PDE(geom, lambda x, y: y[:, 1:2] - dde.grad.jacobian(y, x, i=0), [], 8, 2)
    with pytest.raises(ValueError, match="output size"):
        px.DeepXDEProblem(dde.Model(data, _net([1, 4, 1])))
    # DeepXDE missing
    monkeypatch.setitem(sys.modules, "deepxde", None)
    with pytest.raises(ImportError, match="pip install"):
        px.import_deepxde()


def test_deepxde_operator_feeds_the_shared_range_finder():
    """The DeepXDE backend has the Jacobian-operator interface: its products equal its dense G,
    and the shared randomized SVD on it gives G's singular values (full width: exact)."""
    from pinnlsr.subspace import sketch_svd

    prob = px.DeepXDEProblem(burgers_periodic_ic())
    op = px.DeepXDEJacobian(prob, prob.theta())
    G = op.dense()
    assert op.shape == tuple(G.shape) and set(op.backends) == set(prob.term_names)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.shape[1], 3, generator=gen, dtype=G.dtype)
    w = torch.randn(op.shape[0], 2, generator=gen, dtype=G.dtype)
    scale = float(G.abs().max())
    torch.testing.assert_close(op.matmul(v), G @ v, rtol=0, atol=1e-12 * scale * float(v.abs().max()))
    torch.testing.assert_close(op.rmatmul(w), G.T @ w, rtol=0, atol=1e-12 * scale * float(w.abs().max()))
    k = min(op.shape)
    W, S, U = sketch_svd(op, k, 0, generator=torch.Generator().manual_seed(0), left=True)
    exact = torch.linalg.svdvals(G)
    torch.testing.assert_close(S[:10], exact[:10], rtol=1e-10, atol=0)
    torch.testing.assert_close(U[:, :5] * S[:5], G @ W[:, :5], rtol=0, atol=1e-10 * float(S[0]))
