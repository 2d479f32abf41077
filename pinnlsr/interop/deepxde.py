"""Refine a trained DeepXDE model in place (PyTorch backend).

Three lines for a user who already has a ``dde.Model``::

    from pinnlsr.interop import deepxde as px
    result = px.refine(model)              # one-shot LSR in float64
    u = result.predictor(x)                # an nn.Module, called like model.net

The refinement problem is read from the model itself: ``model.data`` (``dde.data.PDE`` or
``TimePDE``: its ``pde`` function, its BCs/ICs and training points, anchors included), the loss
weights given to ``compile`` and ``model.net`` (feature and output transforms included, so hard
constraints stay exact). The stacked residual is

    f(θ) = concat_i sqrt(w_i / n_i) · e_i(θ),   ||f||² = Σ_i w_i mean(e_i²) = DeepXDE's training loss,

with e_i the PDE residuals (on the PDE points, as DeepXDE slices them) and then each BC's error, in
DeepXDE's order (``DeepXDEProblem.term_names``).

DeepXDE's ``pde(x, y)`` takes derivatives with ``dde.grad`` (``torch.autograd.grad`` with
``create_graph=True`` and a global cache), which ``torch.func`` transforms cannot trace. So the
Jacobian products are computed with plain autograd: G·v by forward-mode AD on the parameters over
DeepXDE's reverse-mode input derivatives (``torch.autograd.forward_ad`` dual parameters), Gᵀ·w by
one more reverse pass; DeepXDE's gradient cache is cleared around every evaluation. Both are exact
(tested against ``torch.autograd.functional.jacobian`` of the whole residual).

When ``pde(x, y)`` is pointwise (checked), the dense G is formed block by block (BC rows, then a
few PDE points at a time), which costs n·chunk instead of n² backward rows.

Nonlinear PDEs: :func:`gauss_newton` re-linearizes in parameter space (Levenberg–Marquardt with
Nielsen's damping update, only decreasing steps accepted, best state on fresh validation points).
Its result is a network of DeepXDE's own architecture, which :func:`write_back` copies into
``model.net``. The refined linear predictor of :func:`refine` is a different function from any
network; :func:`write_back` of an LSR result writes θ0 + V z (the network the step points to) and
says how far that is from the predictor.

float32 models are refined in float64 (a float64 copy of ``model.net``; the model itself is not
touched until :func:`write_back`, which casts back to the model's dtype and reports the loss).

Not supported (clear errors): TensorFlow/JAX/Paddle backends, forward-mode ``dde.config.autodiff``,
data objects other than PDE/TimePDE (physics-informed DeepONets, ``PDEOperatorCartesianProd``, are
refined one input function at a time by :mod:`pinnlsr.interop.deepxde_operator`), mini-batched
``PointSetBC``. External trainable variables (inverse problems) are held fixed.
"""
from __future__ import annotations

import copy
import importlib
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from ..models import LinearizedModel, ParamSpec
from ..solvers import DampedLeastSquares, LevenbergMarquardtDamping, gain_ratio, no_tf32, solve
from ..subspace import scaled_directions, sketch_svd

SUPPORTED_DATA = ("PDE", "TimePDE")
INSTALL_HINT = "install it with `pip install 'pinnlsr[deepxde]'` (or `pip install deepxde`)"


# --------------------------------------------------------------------------------------
# DeepXDE import and backend
# --------------------------------------------------------------------------------------
def import_deepxde():
    """Import DeepXDE on the PyTorch backend and return the module.

    When DeepXDE is not imported yet and the environment names no backend, sets
    ``DDE_BACKEND=pytorch`` first (DeepXDE reads ``DDE_BACKEND``, then ``DDEBACKEND``, then
    ``~/.deepxde/config.json``, else picks whatever is installed). Raises ImportError when DeepXDE
    is missing and RuntimeError when it runs on another backend.
    """
    if "deepxde" not in sys.modules and not os.environ.get("DDE_BACKEND") and not os.environ.get("DDEBACKEND"):
        os.environ["DDE_BACKEND"] = "pytorch"
    try:
        dde = importlib.import_module("deepxde")
    except ImportError as exc:
        raise ImportError(f"pinnlsr.interop.deepxde needs DeepXDE: {INSTALL_HINT}") from exc
    check_backend(dde)
    return dde


def check_backend(dde) -> None:
    """Raise a clear RuntimeError unless DeepXDE runs on PyTorch with reverse-mode autodiff."""
    name = getattr(dde.backend, "backend_name", None)
    if name != "pytorch":
        raise RuntimeError(
            f"DeepXDE is running on the {name!r} backend; pinnlsr refines PyTorch models only. "
            "Set the environment variable DDE_BACKEND=pytorch before Python imports deepxde "
            "(e.g. `DDE_BACKEND=pytorch python train.py`), retrain or restore the model there, then refine."
        )
    if getattr(dde.config, "autodiff", "reverse") != "reverse":
        raise RuntimeError(
            f"dde.config.autodiff is {dde.config.autodiff!r}; pinnlsr supports DeepXDE's default "
            "reverse-mode autodiff only: call dde.config.set_default_autodiff('reverse')"
        )


def _check_model(dde, model) -> None:
    check_backend(dde)
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"model.net is a {type(net).__module__}.{type(net).__name__}, not a torch.nn.Module: "
            "pinnlsr refines DeepXDE models built on the PyTorch backend (DDE_BACKEND=pytorch)"
        )
    data = getattr(model, "data", None)
    kind = type(data).__name__
    if not isinstance(data, dde.data.PDE):  # TimePDE is a subclass
        extra = (" (physics-informed DeepONets from dde.data.PDEOperatorCartesianProd: refine one input "
                 "function at a time with pinnlsr.interop.deepxde_operator.refine_instance)"
                 if "Operator" in kind else "")
        raise TypeError(
            f"model.data is a {kind}; pinnlsr.interop.deepxde supports dde.data."
            f"{' and dde.data.'.join(SUPPORTED_DATA)} only{extra}"
        )
    for i, bc in enumerate(data.bcs):
        if getattr(bc, "batch_size", None) is not None:
            raise ValueError(
                f"BC {i} ({type(bc).__name__}) uses batch_size={bc.batch_size}; refinement needs a fixed "
                "point set: rebuild it with batch_size=None"
            )
    if data.auxiliary_var_fn is not None and data.train_aux_vars is None:
        raise ValueError("model.data has an auxiliary_var_function but no train_aux_vars: call data.train_next_batch()")


def _loss_name(model) -> str | None:
    """The loss function compile() bound into the training closure, or None when not found."""
    fn = getattr(model, "outputs_losses_train", None)
    seen, stack = set(), [fn]
    while stack:
        f = stack.pop()
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        for cell in getattr(f, "__closure__", None) or ():
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            if callable(v) and getattr(v, "__module__", "") == "deepxde.losses":
                return v.__name__
            if callable(v) and hasattr(v, "__closure__"):
                stack.append(v)
    return None


# --------------------------------------------------------------------------------------
# the refinement problem
# --------------------------------------------------------------------------------------
def refinement_notes(model, dtype: torch.dtype) -> list[str]:
    """What the refinement of ``model`` in ``dtype`` changes or assumes; a ValueError for a
    loss other than the mean squared error."""
    notes = []
    src_dtype = next(model.net.parameters()).dtype
    if src_dtype != dtype:
        notes.append(f"model.net is {src_dtype}; refining a {dtype} copy")
    loss = _loss_name(model)
    if loss is not None and loss != "mean_squared_error":
        raise ValueError(f"the model was compiled with loss {loss!r}; LSR refines the mean-squared loss only "
                         "(compile with loss='MSE')")
    if loss is None:
        notes.append("could not read the compiled loss; assuming 'MSE' (DeepXDE's default)")
    return notes


class DeepXDEProblem:
    """The weighted residual of a compiled ``dde.Model`` as a function of a float64 copy of its net.

    Attributes: ``net`` (the copy, ``dtype``), ``spec`` (its trainable parameters), ``X`` (n_x, d)
    the training inputs (BC points first, then PDE points, as ``data.train_x``), ``term_names``,
    ``weights``, ``n_rows`` (length of f), ``notes`` (what was converted or ignored).

    ``anchors`` (k, d): extra PDE points for the refinement only, appended after the training
    points (``model.data`` is not changed); the BC points stay DeepXDE's.

    ``chunk``: PDE points per block when the dense Jacobian is formed. When ``pde(x, y)`` is
    pointwise (row j depends on point j only, checked on the values at construction unless
    ``pointwise`` is given), G is built block by block: the BC rows from the BC points, the PDE
    rows from ``chunk`` points at a time, so its cost grows like n·chunk instead of n².
    """

    def __init__(self, model, dtype: torch.dtype = torch.float64, device=None,
                 loss_weights: Sequence[float] | None = None, anchors=None, chunk: int = 64,
                 pointwise: bool | None = None):
        dde = import_deepxde()
        _check_model(dde, model)
        self.dde, self.model, self.data = dde, model, model.data
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else next(model.net.parameters()).device
        self.notes = refinement_notes(model, dtype)
        if getattr(model, "external_trainable_variables", None):
            self.notes.append("external trainable variables are held fixed")
        if getattr(model.net, "regularizer", None):
            self.notes.append(f"net regularizer {model.net.regularizer} is not part of the refined residual")

        self.net = copy.deepcopy(model.net).to(device=self.device, dtype=dtype)
        self.net.train(False)
        self.spec = ParamSpec.of(self.net)
        data = self.data
        # Points in float64 (a new array: DeepXDE caches BC values by id(X), so these are computed
        # from the float64 points, once, and the array is kept alive with the problem).
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.X_np = np.asarray(data.train_x, dtype=np_dtype)
        if anchors is not None:
            if data.pde is None:
                raise ValueError("anchors are PDE points, but model.data has no pde")
            anchors = np.asarray(anchors, dtype=np_dtype).reshape(-1, self.X_np.shape[1])
            self.X_np = np.vstack((self.X_np, anchors))
            self.notes.append(f"{len(anchors)} extra PDE points (anchors) for the refinement")
        self.X = torch.as_tensor(self.X_np, dtype=dtype, device=self.device)
        self.aux = None
        if data.auxiliary_var_fn is not None:
            aux = data.train_aux_vars if anchors is None else data.auxiliary_var_fn(self.X_np)
            self.aux = torch.as_tensor(np.asarray(aux), dtype=dtype, device=self.device)
        self._finish_setup(model, loss_weights, chunk, pointwise)

    def _finish_setup(self, model, loss_weights, chunk: int, pointwise: bool | None) -> None:
        """Given net, spec, X_np, X, aux and data: checks, term names, weights, row sizes, blocks."""
        data = self.data
        self.bcs_start = [int(v) for v in np.cumsum([0] + list(data.num_bcs))]
        with torch.no_grad():
            y = self.net(self.X[:1])
        self.n_outputs = int(y.shape[-1])
        self._check_components()
        errors = self._errors_checked()
        n_terms = len(errors)
        n_pde = n_terms - len(data.bcs)
        self.term_names = [f"pde{i}" if n_pde > 1 else "pde" for i in range(n_pde)] + [
            f"bc{i}:{type(bc).__name__}" for i, bc in enumerate(data.bcs)]
        weights = loss_weights if loss_weights is not None else getattr(model, "loss_weights", None)
        if weights is None:
            weights = [1.0] * n_terms
        weights = [float(w) for w in np.asarray(weights, dtype=np.float64).reshape(-1)]
        if len(weights) != n_terms:
            raise ValueError(f"{len(weights)} loss weights for {n_terms} loss terms ({', '.join(self.term_names)})")
        self.weights = weights
        self.sizes = [int(e.numel()) for e in errors]
        self.scales = [math.sqrt(w / s) if s else 0.0 for w, s in zip(weights, self.sizes)]
        self.n_rows = sum(self.sizes)
        self._setup_blocks(chunk, pointwise)

    def _setup_blocks(self, chunk: int, pointwise: bool | None) -> None:
        """Row bookkeeping for point-chunked evaluation, and the check that pde(x, y) is pointwise."""
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of points, got {chunk}")
        self.chunk = int(chunk)
        self.n_pde_terms = len(self.sizes) - len(self.data.bcs)
        self.n_pde_points = int(self.X.shape[0]) - self.bcs_start[-1]
        self.n_pde_rows = sum(self.sizes[: self.n_pde_terms])
        self._per_point = [s // max(self.n_pde_points, 1) for s in self.sizes[: self.n_pde_terms]]
        self._offsets = [int(v) for v in np.cumsum([0] + self.sizes)]
        if pointwise is None:
            f_full = self.residual().detach()
            try:
                f_blk = self._blocked_residual(None)
                tol = 100 * math.sqrt(torch.finfo(self.dtype).eps) * max(float(f_full.abs().max()), 1e-300)
                pointwise = bool(f_blk.shape == f_full.shape and float((f_blk - f_full).abs().max()) <= tol)
            except (IndexError, ValueError, RuntimeError):
                pointwise = False
            if not pointwise:
                self.notes.append("pde(x, y) is not pointwise (its values on a subset of the points differ): "
                                  "Jacobians by full-graph reverse mode (slower), no validation points")
        self.pointwise = bool(pointwise)

    # ---- checks ----
    def _check_components(self) -> None:
        k = self.n_outputs
        for i, bc in enumerate(self.data.bcs):
            comps = getattr(bc, "component", 0)
            comps = comps if isinstance(comps, (list, tuple)) else [comps]
            if any(int(c) >= k for c in comps):
                raise ValueError(
                    f"BC {i} ({type(bc).__name__}) is on output component {max(comps)}, but model.net has "
                    f"{k} output(s): the network's output size disagrees with the problem"
                )

    def _errors_checked(self) -> list[torch.Tensor]:
        try:
            errors = self.errors(self.net)
        except (IndexError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"evaluating DeepXDE's pde/BC errors on model.net ({self.n_outputs} output(s), input dim "
                f"{self.X.shape[1]}) failed: {exc}. Check that the network's output size matches what "
                "pde(x, y) and the BCs use"
            ) from exc
        n = self.X.shape[0]
        nb = self.bcs_start[-1]
        for i, e in enumerate(errors[: len(errors) - len(self.data.bcs)]):
            if e.ndim == 0 or e.shape[0] != n - nb or e.numel() == 0:
                raise ValueError(
                    f"pde output {i} has shape {tuple(e.shape)}, expected ({n - nb}, ...) rows: pde(x, y) must "
                    f"return one residual row per input point (is model.net's output size, {self.n_outputs}, what "
                    "pde(x, y) indexes?)"
                )
        return errors

    # ---- evaluation ----
    def _outputs(self, net: Callable, params: dict | None, x: torch.Tensor) -> torch.Tensor:
        return net(x) if params is None else functional_call(net, params, (x,))

    def _pde_outputs(self, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> list[torch.Tensor]:
        """pde(x, y[, aux]) as a list, one row per point of x (not sliced)."""
        pde = self.data.pde
        if pde is None:
            return []
        f = pde(x, y) if aux is None else pde(x, y, aux)
        return list(f) if isinstance(f, (list, tuple)) else [f]

    def _bc_errors(self, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> list[torch.Tensor]:
        """Each BC's error; x, y cover (at least) the BC points, in DeepXDE's order."""
        bs = self.bcs_start
        return [bc.error(self.X_np, x, y, bs[i], bs[i + 1]) for i, bc in enumerate(self.data.bcs)]

    def errors(self, net: Callable, params: dict | None = None, x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """DeepXDE's loss errors e_i, in order (PDE outputs on the PDE points, then each BC), for the
        network ``net`` (with ``params`` substituted via functional_call when given)."""
        dde = self.dde
        x = (self.X if x is None else x).detach().clone().requires_grad_(True)
        dde.grad.clear()
        try:
            y = self._outputs(net, params, x)
            nb = self.bcs_start[-1]
            out = [fi[nb:] for fi in self._pde_outputs(x, y, self.aux)]
            out += self._bc_errors(x, y, self.aux)
        finally:
            dde.grad.clear()
        return out

    def _pde_block(self, params: dict | None, lo: int, hi: int, X: torch.Tensor | None = None,
                   aux: torch.Tensor | None = None, scales: Sequence[float] | None = None) -> torch.Tensor:
        """Scaled PDE rows of the PDE points lo:hi, term by term (pointwise pde only). With ``X``:
        of the points X[lo:hi] (and ``aux`` rows), scaled by ``scales``."""
        if X is None:
            nb = self.bcs_start[-1]
            X, aux = self.X[nb:], (None if self.aux is None else self.aux[nb:])
        x = X[lo:hi].detach().clone().requires_grad_(True)
        a = None if aux is None else aux[lo:hi]
        self.dde.grad.clear()
        try:
            f = self._pde_outputs(x, self._outputs(self.net, params, x), a)
        finally:
            self.dde.grad.clear()
        scales = self.scales if scales is None else scales
        return torch.cat([s * e.reshape(-1) for s, e in zip(scales, f)]) if f else x.new_zeros(0)

    def _bc_block(self, params: dict | None) -> torch.Tensor:
        """Scaled BC rows, from the BC points only."""
        nb = self.bcs_start[-1]
        if not self.data.bcs:
            return self.X.new_zeros(0)
        x = self.X[:nb].detach().clone().requires_grad_(True)
        aux = None if self.aux is None else self.aux[:nb]
        self.dde.grad.clear()
        try:
            errs = self._bc_errors(x, self._outputs(self.net, params, x), aux)
        finally:
            self.dde.grad.clear()
        return torch.cat([s * e.reshape(-1) for s, e in zip(self.scales[self.n_pde_terms:], errs)])

    def _block_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Indices in f of the PDE rows of PDE points lo:hi (the order of :meth:`_pde_block`)."""
        return torch.cat([torch.arange(off + lo * c, off + hi * c)
                          for off, c in zip(self._offsets, self._per_point)])

    def _blocked_residual(self, params: dict | None) -> torch.Tensor:
        f = torch.empty(self.n_rows, dtype=self.dtype, device=self.device)
        for lo in range(0, self.n_pde_points, self.chunk):
            hi = min(lo + self.chunk, self.n_pde_points)
            f[self._block_rows(lo, hi).to(self.device)] = self._pde_block(params, lo, hi).detach()
        f[self.n_pde_rows:] = self._bc_block(params).detach()
        return f

    def residual(self, net: Callable | None = None, params: dict | None = None) -> torch.Tensor:
        """The stacked weighted residual f (n_rows,): ||f||² = DeepXDE's weighted training loss."""
        errs = self.errors(self.net if net is None else net, params)
        return torch.cat([s * e.reshape(-1) for s, e in zip(self.scales, errs)])

    def term_losses(self, net: Callable | None = None) -> list[float]:
        """w_i · mean(e_i²) per term (what DeepXDE reports as the training losses)."""
        f = self.residual(net).detach()
        return [float((b**2).sum()) for b in torch.split(f, self.sizes)]

    def theta(self) -> torch.Tensor:
        """The copy's trainable parameters as one vector (m,)."""
        return self.spec.flatten(self.net)

    def residual_at(self, theta: torch.Tensor) -> torch.Tensor:
        """f(θ) (n_rows,), detached."""
        return self.residual(params=self.spec.unflatten(theta)).detach()

    def jvp(self, theta: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """G·V (n_rows, r) at θ: one forward-mode pass per column (dual parameters, DeepXDE's
        reverse-mode input derivatives inside)."""
        V = V.reshape(V.shape[0], -1)
        cols = []
        for j in range(V.shape[1]):
            with fwAD.dual_level():
                dual = fwAD.make_dual(theta.detach(), V[:, j].detach().to(theta))
                f = self.residual(params=self.spec.unflatten(dual))
                cols.append(fwAD.unpack_dual(f).tangent.detach())
        return torch.stack(cols, dim=1)

    def vjp(self, theta: torch.Tensor, W: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Gᵀ·W (m, k) at θ: reverse mode through the residual graph, ``batch`` columns per pass."""
        W = W.reshape(W.shape[0], -1)
        th = theta.detach().clone().requires_grad_(True)
        f = self.residual(params=self.spec.unflatten(th))
        out = []
        for start in range(0, W.shape[1], batch):
            w = W[:, start:start + batch].T.to(f)
            last = start + batch >= W.shape[1]
            if w.shape[0] == 1:
                (g,) = torch.autograd.grad(f, th, w[0], retain_graph=not last)
                out.append(g[:, None])
            else:
                (g,) = torch.autograd.grad(f, th, w, retain_graph=not last, is_grads_batched=True)
                out.append(g.T)
        return torch.cat(out, dim=1).detach()

    @staticmethod
    def _rows_grad(f: torch.Tensor, th: torch.Tensor, batch: int) -> torch.Tensor:
        """d f / d th (len(f), m) by reverse mode on rows of the identity, ``batch`` rows per pass."""
        out = []
        for start in range(0, f.numel(), batch):
            stop = min(start + batch, f.numel())
            eye = torch.zeros(stop - start, f.numel(), dtype=f.dtype, device=f.device)
            eye[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            (g,) = torch.autograd.grad(f, th, eye, retain_graph=stop < f.numel(), is_grads_batched=True)
            out.append(g)
        return torch.cat(out) if out else th.new_zeros(0, th.numel())

    def jacobian(self, theta: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Dense G (n_rows, m) at θ by reverse mode on rows of the identity; block by block (the BC
        rows, then ``chunk`` PDE points at a time) when the pde is pointwise."""
        if not self.pointwise:
            eye = torch.eye(self.n_rows, dtype=theta.dtype, device=theta.device)
            return self.vjp(theta, eye, batch=batch).T.contiguous()
        th = theta.detach().clone().requires_grad_(True)
        G = torch.empty(self.n_rows, th.numel(), dtype=theta.dtype, device=theta.device)
        for lo in range(0, self.n_pde_points, self.chunk):
            hi = min(lo + self.chunk, self.n_pde_points)
            f = self._pde_block(self.spec.unflatten(th), lo, hi)
            G[self._block_rows(lo, hi).to(G.device)] = self._rows_grad(f, th, batch)
        if self.n_rows > self.n_pde_rows:
            G[self.n_pde_rows:] = self._rows_grad(self._bc_block(self.spec.unflatten(th)), th, batch)
        return G

    # ---- validation points ----
    def aux_at(self, X: np.ndarray) -> torch.Tensor | None:
        """The auxiliary variables at points X (k, d) (``data.auxiliary_var_fn``), or None."""
        fn = self.data.auxiliary_var_fn
        if fn is None:
            return None
        return torch.as_tensor(np.asarray(fn(X)), dtype=self.dtype, device=self.device)

    def sample_pde_points(self, n: int, seed: int = 0) -> np.ndarray:
        """n fresh points of ``data.geom`` (k = n, d), drawn with a seeded NumPy generator (NumPy's
        global random state, which DeepXDE's samplers use, is restored afterwards)."""
        state = np.random.get_state()
        try:
            np.random.seed(seed)
            pts = self.data.geom.random_points(int(n))
        finally:
            np.random.set_state(state)
        return np.asarray(pts, dtype=np.float64)

    def validation_residual(self, theta: torch.Tensor, X: np.ndarray, aux: torch.Tensor | None = None) -> float:
        """||f_val|| at θ: the PDE terms on the points X (k, d), weighted like the training terms
        (sqrt(w_i/k)), stacked with the training BC rows. Needs a pointwise pde."""
        if not self.pointwise:
            raise ValueError("validation points need a pointwise pde(x, y); this problem's is not")
        Xt = torch.as_tensor(np.asarray(X), dtype=self.dtype, device=self.device)
        aux = self.aux_at(np.asarray(X)) if aux is None else aux
        k = Xt.shape[0]
        scales = [math.sqrt(w / (k * c)) for w, c in zip(self.weights, self._per_point)]
        params = self.spec.unflatten(theta.detach())
        parts = [self._pde_block(params, lo, min(lo + 4 * self.chunk, k), Xt, aux, scales).detach()
                 for lo in range(0, k, 4 * self.chunk)]
        parts.append(self._bc_block(params).detach())
        return _norm(torch.cat(parts))

    # ---- reference errors ----
    def reference(self):
        """(X, U) from ``data.soln`` on ``data.test_x`` in float64, or None."""
        soln = getattr(self.data, "soln", None)
        if soln is None:
            return None
        X = np.asarray(self.data.test_x, dtype=np.float64)
        return X, np.asarray(soln(X), dtype=np.float64)


class DeepXDEJacobian:
    """G = ∂f/∂θ (n_rows, m) of a :class:`DeepXDEProblem`'s stacked residual at θ, with the
    interface of :class:`pinnlsr.linearize.JacobianOperator` (the DeepXDE backend of that layer):
    residual values, G·V by forward mode, Gᵀ·W by reverse mode, the dense G and its row chunks.
    :func:`pinnlsr.subspace.sketch_svd` and the least-squares steps take it like any other."""

    def __init__(self, problem: DeepXDEProblem, theta: torch.Tensor):
        self.problem, self.theta = problem, theta.detach()

    @property
    def shape(self) -> tuple[int, int]:
        return self.problem.n_rows, self.theta.numel()

    @property
    def backends(self) -> dict[str, str]:
        how = ("deepxde: reverse-mode rows per point block" if self.problem.pointwise
               else "deepxde: reverse-mode rows of the whole residual")
        return {name: how for name in self.problem.term_names}

    def values(self) -> torch.Tensor:
        """f(θ), shape (n_rows,)."""
        return self.problem.residual_at(self.theta)

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        """G · v for v (m, l): (n_rows, l)."""
        return self.problem.jvp(self.theta, v)

    def rmatmul(self, w: torch.Tensor) -> torch.Tensor:
        """Gᵀ · w for w (n_rows, l): (m, l)."""
        return self.problem.vjp(self.theta, w)

    def dense(self) -> torch.Tensor:
        """G as one (n_rows, m) tensor."""
        return self.problem.jacobian(self.theta)

    def row_chunks(self, extra_columns: int = 0):
        """Yield (row slice, G[slice], f[slice]): one chunk, the dense G."""
        yield slice(0, self.shape[0]), self.dense(), self.values()


# --------------------------------------------------------------------------------------
# results, predictor, write-back
# --------------------------------------------------------------------------------------
@dataclass
class DeepXDERefinement:
    """What :func:`refine` and :func:`gauss_newton` return.

    ``predictor``: the refined model, an nn.Module called like ``model.net`` on tensors (N, d) in
    ``problem.dtype`` (a :class:`~pinnlsr.models.LinearizedModel` for LSR, a copy of the net for
    Gauss–Newton); ``network``: a copy of ``model.net`` at the refined parameters (what
    :func:`write_back` writes); ``diagnostics``: residuals, errors, rank, seconds, notes.
    """

    predictor: nn.Module
    network: nn.Module
    problem: DeepXDEProblem
    method: str
    diagnostics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def predict(self, x) -> np.ndarray:
        """Predictor values at points x (array-like (N, d)) as a float64 NumPy array."""
        return predict(self.predictor, x, self.problem.dtype)


def predict(module: Callable, x, dtype: torch.dtype = torch.float64, chunk: int = 8192) -> np.ndarray:
    """``module`` evaluated on x (N, d) in chunks, returned as NumPy (N, k)."""
    p = next(iter(module.parameters()), None) if isinstance(module, nn.Module) else None
    device = p.device if p is not None else torch.device("cpu")
    x = torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
    outs = []
    for s in range(0, x.shape[0], chunk):
        with torch.enable_grad():  # LinearizedModel's jvp; cheap without create_graph
            outs.append(module(x[s:s + chunk]).detach())
    return torch.cat(outs).cpu().numpy().astype(np.float64)


def rel_l2(pred: np.ndarray, ref: np.ndarray) -> float:
    """||pred - ref||₂ / ||ref||₂ over all points and outputs."""
    return float(np.linalg.norm(pred - ref) / np.linalg.norm(ref))


def _errors_vs(problem: DeepXDEProblem, module: Callable, reference) -> dict:
    if reference is None:
        return {}
    X, U = reference
    P = predict(module, X, problem.dtype)
    U = np.asarray(U, dtype=np.float64).reshape(P.shape)
    return {"rel_l2": rel_l2(P, U), "max_abs_err": float(np.abs(P - U).max())}


def _norm(v: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(v))


def refine(model, *, rank: int | None = None, subspace: str = "svd", oversampling: int = 10,
           rcond: float = 1e-14, rcond_basis: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float64,
           device=None, loss_weights: Sequence[float] | None = None, anchors=None, reference=None,
           problem: DeepXDEProblem | None = None) -> DeepXDERefinement:
    """One-shot LSR of a compiled DeepXDE model; ``model`` is not modified.

    ``subspace="svd"``: dense G (n_rows, m) by reverse mode, V = the top ``rank`` right singular
    vectors scaled by 1/σ (default rank: all with σ > rcond_basis·σ_max, at most min(n_rows, m)).
    ``subspace="randomized"``: Y = Gᵀ Ω (rank + oversampling columns), Q = orth(Y), then the SVD
    of G Q (forward mode), for nets too large for a dense G. ``anchors``: extra PDE points for the
    refinement (see :class:`DeepXDEProblem`). ``reference`` = (X, U) arrays for the error (default:
    ``data.soln`` on ``data.test_x`` when the data has a solution).
    """
    t_start = time.perf_counter()
    prob = problem or DeepXDEProblem(model, dtype=dtype, device=device, loss_weights=loss_weights, anchors=anchors)
    reference = reference if reference is not None else prob.reference()
    theta = prob.theta()
    m, n = theta.numel(), prob.n_rows
    seconds = {}
    t = time.perf_counter()
    f0 = prob.residual_at(theta)
    seconds["residual"] = time.perf_counter() - t
    t = time.perf_counter()
    op = DeepXDEJacobian(prob, theta)
    with no_tf32():
        if subspace == "svd":
            G = op.dense()
            seconds["jacobian"] = time.perf_counter() - t
            t = time.perf_counter()
            U, S, Wh = torch.linalg.svd(G, full_matrices=False)
            W = Wh.T
        elif subspace == "randomized":
            W, S, U = sketch_svd(op, rank or min(m, n), oversampling,
                                 generator=torch.Generator(device="cpu").manual_seed(seed))
            seconds["jacobian"] = time.perf_counter() - t
            t = time.perf_counter()
        else:
            raise ValueError(f"subspace must be 'svd' or 'randomized', got {subspace!r}")
        # V = W/σ: G·V = U has orthonormal columns (the same scaling as pinnlsr.lsr)
        V, r = scaled_directions(W, S, rank or min(m, n), True, rcond_basis)
        GV = U[:, :r]
        seconds["basis"] = time.perf_counter() - t
        t = time.perf_counter()
        sol = solve(GV, -f0, method="svd", rcond=rcond)
        seconds["solve"] = time.perf_counter() - t
    t = time.perf_counter()
    predictor = LinearizedModel(prob.net, V, sol.z)
    predictor.eval()
    f_after = prob.residual(predictor).detach()
    network = predictor.network_at(1.0)
    diag = {
        "method": "lsr", "subspace": subspace, "rank": r, "n_rows": n, "n_params": m,
        "dtype": str(prob.dtype).replace("torch.", ""), "cond": sol.cond, "rank_used": sol.rank_used,
        "residual_before": _norm(f0), "linearized_residual": sol.residual_norm, "residual_after": _norm(f_after),
        "residual_network": _norm(prob.residual(network).detach()),
        "terms_before": dict(zip(prob.term_names, prob.term_losses())),
        "terms_after": dict(zip(prob.term_names, prob.term_losses(predictor))),
        "notes": list(prob.notes),
    }
    for tag, mod in (("before", prob.net), ("after", predictor), ("network", network)):
        for key, v in _errors_vs(prob, mod, reference).items():
            diag[f"{key}_{tag}"] = v
    seconds["diagnostics"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_start
    diag["seconds"] = seconds
    return DeepXDERefinement(predictor, network, prob, "lsr", diag)


def gauss_newton(model, *, iterations: int = 50, rcond: float = 1e-12, damping: float = 1e-3,
                 dtype: torch.dtype = torch.float64, device=None, loss_weights: Sequence[float] | None = None,
                 anchors=None, reference=None, problem: DeepXDEProblem | None = None, tol: float = 0.0,
                 validation=2000, seed: int = 0, patience: int = 10, max_seconds: float | None = None,
                 callback: Callable | None = None) -> DeepXDERefinement:
    """Levenberg–Marquardt on the DeepXDE residual in parameter space; ``model`` is not modified.

    Each iteration forms the dense G (n_rows, m) once (:class:`DeepXDEJacobian`) and the damped
    least-squares step min ||f + G δ||² + μ||δ||² for every trial μ from one SVD (of the R factor
    when G is tall; :class:`pinnlsr.solvers.DampedLeastSquares`, σ_k > rcond·σ_max kept). A step
    is accepted only when it lowers ||f||; μ follows Nielsen's rule (μ ← μ·max(1/3, 1 − (2ρ − 1)³) after a success with
    gain ratio ρ, μ ← ν·μ, ν ← 2ν after a failure), starting at μ = damping·σ_max².

    ``validation``: fresh PDE points (a count drawn from ``data.geom`` with ``seed``, or an array
    (k, d); 0/None: none). The state returned is the one with the lowest validation residual
    (PDE terms on those points plus the BC rows), so the refinement cannot over-fit the training
    points unseen; it stops after ``patience`` accepted steps without a new best, when no damping
    gives a decrease, when ||f|| <= tol, or after ``max_seconds``. Returns the network at that state
    (predictor = network) and the history per iteration.
    """
    t_start = time.perf_counter()
    prob = problem or DeepXDEProblem(model, dtype=dtype, device=device, loss_weights=loss_weights, anchors=anchors)
    reference = reference if reference is not None else prob.reference()
    net = copy.deepcopy(prob.net)
    theta = prob.theta()
    f = prob.residual_at(theta)
    diag = {"residual_before": _norm(f), "terms_before": dict(zip(prob.term_names, prob.term_losses()))}
    for key, v in _errors_vs(prob, prob.net, reference).items():
        diag[f"{key}_before"] = v
    X_val = None
    if validation is not None and not (isinstance(validation, int) and validation <= 0):
        if not prob.pointwise:
            prob.notes.append("validation points skipped: the pde is not pointwise")
        else:
            X_val = (prob.sample_pde_points(validation, seed) if isinstance(validation, int)
                     else np.asarray(validation, dtype=np.float64))
    aux_val = prob.aux_at(X_val) if X_val is not None else None
    score = (lambda th, fv: prob.validation_residual(th, X_val, aux_val)) if X_val is not None else (
        lambda th, fv: _norm(fv))
    best = {"theta": theta.clone(), "score": score(theta, f), "iteration": 0}
    diag["validation_before"] = best["score"] if X_val is not None else None
    rule: LevenbergMarquardtDamping | None = None
    history, since_best, stop = [], 0, "iterations"
    for it in range(iterations):
        t = time.perf_counter()
        step = DampedLeastSquares(DeepXDEJacobian(prob, theta).dense(), -f, rcond)
        s_max2 = step.sigma_max**2 if step.sigma_max > 0 else 1.0
        if rule is None:
            rule = LevenbergMarquardtDamping(damping * s_max2)
        f_norm = _norm(f)
        accepted, tries, rho = False, 0, float("nan")
        while tries < 40:
            tries += 1
            delta = step.solve(rule.mu)
            f_new = prob.residual_at(theta + delta)
            new_norm = _norm(f_new) if torch.isfinite(f_new).all() else float("inf")
            if new_norm < f_norm:
                rho = gain_ratio(f_norm, new_norm, step.residual_norm(delta))
                accepted = True
                break
            rule.rejected()
        if accepted:
            theta, f = theta + delta, f_new
            rule.accepted(rho)
        rec = {"iteration": it + 1, "residual": _norm(f), "accepted": accepted, "tries": tries,
               "damping": rule.mu / s_max2, "gain_ratio": rho, "rank_used": step.rank_used,
               "seconds": time.perf_counter() - t}
        if accepted:
            val = score(theta, f)
            rec["validation"] = val if X_val is not None else None
            if val < best["score"]:
                best, since_best = {"theta": theta.clone(), "score": val, "iteration": it + 1}, 0
            else:
                since_best += 1
        if reference is not None and callback is not None:
            prob.spec.assign(net, theta)
            rec.update(_errors_vs(prob, net, reference))
        history.append(rec)
        if callback is not None:
            callback(rec)
        if not accepted:
            stop = "no damping lowered the residual"
            break
        if _norm(f) <= tol:
            stop = "tol"
            break
        if since_best >= patience:
            stop = f"{patience} steps without a better validation residual"
            break
        if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
            stop = "max_seconds"
            break
    prob.spec.assign(net, best["theta"])
    for p in net.parameters():
        p.requires_grad_(True)
    diag.update({
        "method": "gauss_newton", "iterations": len(history), "best_iteration": best["iteration"],
        "stopped": stop, "validation_points": 0 if X_val is None else int(X_val.shape[0]),
        "validation_after": best["score"] if X_val is not None else None,
        "n_rows": prob.n_rows, "n_params": theta.numel(), "dtype": str(prob.dtype).replace("torch.", ""),
        "residual_after": _norm(prob.residual_at(best["theta"])),
        "terms_after": dict(zip(prob.term_names, prob.term_losses(net))), "notes": list(prob.notes),
    })
    for key, v in _errors_vs(prob, net, reference).items():
        diag[f"{key}_after"] = v
    diag["seconds"] = {"total": time.perf_counter() - t_start}
    return DeepXDERefinement(net, net, prob, "gauss_newton", diag, history)


def write_back(model, refined: DeepXDERefinement | nn.Module) -> dict:
    """Copy the refined network's parameters into ``model.net`` in place (cast to its dtype).

    Returns {"max_change", "dtype", "note"}: with float32 models the float64 refinement is rounded
    (say so); for an LSR result the written network is θ0 + V z, not the linear predictor itself
    (its residual is in ``diagnostics["residual_network"]``)."""
    network = refined.network if isinstance(refined, DeepXDERefinement) else refined
    src = dict(network.named_parameters())
    dst = dict(model.net.named_parameters())
    missing = [k for k in dst if k not in src]
    if missing or set(src) - set(dst):
        raise ValueError(f"refined network and model.net have different parameters (missing {missing[:4]}, "
                         f"extra {sorted(set(src) - set(dst))[:4]}): was it refined from this model?")
    change = 0.0
    with torch.no_grad():
        for k, p in dst.items():
            if p.shape != src[k].shape:
                raise ValueError(f"parameter {k!r}: model.net has shape {tuple(p.shape)}, refined {tuple(src[k].shape)}")
            new = src[k].detach().to(device=p.device, dtype=p.dtype)
            change = max(change, float((new.double() - p.double()).abs().max()))
            p.copy_(new)
    dtype = next(model.net.parameters()).dtype
    notes = []
    if dtype != next(network.parameters()).dtype:
        notes.append(f"weights rounded from {next(network.parameters()).dtype} to {dtype}: refined accuracy "
                     "below that precision is lost; keep the float64 predictor for accurate values")
    if isinstance(refined, DeepXDERefinement) and refined.method == "lsr":
        notes.append("LSR result: wrote θ0 + V z, the network the step points to, which differs from the "
                     "linear predictor (use gauss_newton for a network that is the refined model)")
    return {"max_change": change, "dtype": str(dtype).replace("torch.", ""), "note": "; ".join(notes)}


# --------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------
def load_checkpoint(model_or_net, path: str | os.PathLike, strict: bool = True) -> list[str]:
    """Load network weights from a DeepXDE ``model.save`` file (``<prefix>-<step>.pt``) or a plain
    state_dict into ``model.net`` (or a bare net), without compile or the optimizer.

    Reads with ``torch.load(weights_only=True)`` (no code runs). Returns what was ignored (e.g.
    ``optimizer_state_dict``). Pickle-protocol saves (``.pkl``) are refused: re-save with the
    default protocol.
    """
    net = model_or_net.net if hasattr(model_or_net, "net") else model_or_net
    if not isinstance(net, nn.Module):
        raise TypeError("load_checkpoint needs a PyTorch-backend dde.Model or its net (a torch.nn.Module)")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (model.save appends '-<iteration>.pt')")
    if path.suffix == ".pkl":
        raise ValueError(f"{path.name} was saved with protocol='pickle', which runs code on load; re-save with "
                         "model.save(prefix) (protocol='backend')")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path.name} is not a weights-only PyTorch checkpoint ({exc}); save the net's "
                         "state_dict with torch.save or model.save") from exc
    ignored: list[str] = []
    if isinstance(obj, dict) and "model_state_dict" in obj:
        state = obj["model_state_dict"]
        ignored = [k for k in obj if k != "model_state_dict"]
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        state = obj
    else:
        raise ValueError(f"{path.name}: expected DeepXDE's {{'model_state_dict': ..., 'optimizer_state_dict': ...}} "
                         "or a plain state_dict")
    dtype = next(net.parameters()).dtype
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    result = net.load_state_dict(state, strict=strict)
    ignored += [f"unexpected key {k}" for k in result.unexpected_keys]
    ignored += [f"missing key {k}" for k in result.missing_keys]
    return ignored
