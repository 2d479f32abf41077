"""The refinement problem of a compiled DeepXDE model (PyTorch backend): its stacked residual and
the DeepXDE backend of the Jacobian-operator interface. :mod:`pinnlsr.interop.deepxde` refines with
them; see its docstring for what is read from the model and how the products are computed.
"""
from __future__ import annotations

import copy
import importlib
import math
import os
import sys
from typing import Callable, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

from ..models import ParamSpec

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
        return float(torch.linalg.vector_norm(torch.cat(parts)))

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
