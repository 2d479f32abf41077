"""Per-instance refinement of physics-informed DeepONets trained with DeepXDE (PyTorch backend).

A ``dde.Model`` built from ``dde.data.PDEOperatorCartesianProd`` and ``dde.nn.DeepONetCartesianProd``
predicts u(v)(x) for every input function v. For one input function (one row v of the branch input,
shape (n_sensors,)), the network with that row fixed is an ordinary PINN x -> u(x), and the data
object's own ``pde`` and BCs define its residual exactly as DeepXDE's training loss does for that
function::

    from pinnlsr.interop import deepxde_operator as pxo
    res = pxo.refine_instance(model, v, aux, rank=200)   # one-shot LSR of this instance, float64
    u = res.predictor(x)                                 # (N, d_trunk) -> (N, k): refined u(v)(x)

``aux`` are the values of the input function at the residual points (what DeepXDE passes to
``pde(x, y, aux)`` and to the BCs as ``aux_var``): an array over ``data.pde.train_x`` (then the
anchors), or a callable evaluated there (on the columns ``data.func_vars``, as the data object does).

The stacked residual of instance v is f_v(θ) = concat_i sqrt(w_i / n_i) e_i(v, θ), so
||f_v||² = Σ_i w_i mean(e_i(v)²): DeepXDE's loss terms for that function alone (its training loss is
their mean over the functions of a batch). The DeepONet's feature and output transforms are part of
the network, so hard constraints stay exact. The refinement changes the shared parameters for this
instance only: the result is a predictor for v, and nothing is written back into ``model.net``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models import ParamSpec
from . import deepxde as px

SUPPORTED = "dde.data.PDEOperatorCartesianProd with dde.nn.DeepONetCartesianProd"


class InstanceNet(nn.Module):
    """A Cartesian-product DeepONet with its branch input fixed to one function.

    ``forward(x)``: trunk points x (N, d) -> outputs (N, k), the row of ``net((v, x))`` for v
    (DeepXDE's (1, N) single-output and (1, N, k) multi-output shapes both become (N, k)).
    """

    def __init__(self, net: nn.Module, branch_input: torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("branch_input", branch_input.reshape(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net((self.branch_input, x))[0]
        return y[:, None] if y.ndim == 1 else y


def _check_operator_model(dde, model) -> None:
    px.check_backend(dde)
    data = getattr(model, "data", None)
    if not isinstance(data, dde.data.PDEOperatorCartesianProd):
        hint = (" (use pinnlsr.interop.deepxde.refine for dde.data.PDE/TimePDE)"
                if isinstance(data, dde.data.PDE) else "")
        raise TypeError(f"model.data is a {type(data).__name__}; per-instance DeepONet refinement supports "
                        f"{SUPPORTED} only{hint}")
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Module):
        raise TypeError(f"model.net is a {type(net).__name__}, not a torch.nn.Module: pinnlsr refines DeepXDE "
                        "models built on the PyTorch backend (DDE_BACKEND=pytorch)")
    if not isinstance(net, dde.nn.DeepONetCartesianProd):
        raise TypeError(f"model.net is a {type(net).__name__}; per-instance DeepONet refinement supports "
                        f"{SUPPORTED} only")
    for i, bc in enumerate(data.pde.bcs):
        if getattr(bc, "batch_size", None) is not None:
            raise ValueError(f"BC {i} ({type(bc).__name__}) uses batch_size={bc.batch_size}; refinement needs a "
                             "fixed point set: rebuild it with batch_size=None")


class DeepONetInstanceProblem(px.DeepXDEProblem):
    """The weighted residual of one input function of a PI-DeepONet, as a function of a float64
    copy of the whole DeepONet's parameters (branch, trunk and bias).

    Args:
        model: a compiled ``dde.Model`` (``PDEOperatorCartesianProd`` data, ``DeepONetCartesianProd``).
        v: the branch input of this function, (n_sensors,) (its values at ``data.eval_pts``), or an
            int i: the i-th training function (v = data.train_x[0][i], aux = data.train_aux_vars[i]).
        aux: the input function at the residual points: (n_x,) over ``data.pde.train_x`` then the
            anchors, or a callable mapping points (N, len(func_vars)) -> (N,) values.
        anchors: extra PDE points (k, d) for the refinement only (BC points stay DeepXDE's).

    Attributes as :class:`~pinnlsr.interop.deepxde.DeepXDEProblem`; ``net`` is an
    :class:`InstanceNet` (x (N, d) -> (N, k)), ``v`` the branch input (1, n_sensors).
    """

    def __init__(self, model, v, aux=None, *, anchors=None, dtype: torch.dtype = torch.float64, device=None,
                 loss_weights: Sequence[float] | None = None, chunk: int = 64, pointwise: bool | None = None):
        dde = px.import_deepxde()
        _check_operator_model(dde, model)
        op = model.data
        self.dde, self.model, self.operator_data, self.data = dde, model, op, op.pde
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else next(model.net.parameters()).device
        self.notes = px.refinement_notes(model, dtype)
        if getattr(model.net, "regularizer", None):
            self.notes.append(f"net regularizer {model.net.regularizer} is not part of the refined residual")
        self.func_vars = list(op.func_vars)
        n_sensors = int(np.asarray(op.eval_pts).shape[0])
        np_dtype = np.float64 if dtype == torch.float64 else np.float32
        self.X_np = np.asarray(op.pde.train_x, dtype=np_dtype)
        n_train = self.X_np.shape[0]
        if anchors is not None:
            if op.pde.pde is None:
                raise ValueError("anchors are PDE points, but model.data.pde has no pde function")
            anchors = np.asarray(anchors, dtype=np_dtype).reshape(-1, self.X_np.shape[1])
            self.X_np = np.vstack((self.X_np, anchors))
            self.notes.append(f"{len(anchors)} extra PDE points (anchors) for the refinement")
        if isinstance(v, (int, np.integer)):
            i = int(v)
            if not 0 <= i < len(op.train_x[0]):
                raise ValueError(f"training function index {i} out of range: data has {len(op.train_x[0])}")
            v = op.train_x[0][i]
            if aux is None:
                if anchors is not None:
                    raise ValueError("the input function's values at the anchors are unknown: pass aux as a "
                                     "callable (points -> values) together with anchors")
                aux = op.train_aux_vars[i]
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.shape[0] != n_sensors:
            raise ValueError(f"the branch input has {v.shape[0]} values, but the data evaluates input functions "
                             f"at {n_sensors} sensor points (data.eval_pts): pass one row of the branch input")
        self._aux_fn = aux if callable(aux) else None
        if aux is None:
            raise ValueError("aux is needed: the input function's values at the residual points (an array over "
                             "data.pde.train_x then the anchors, or a callable points -> values)")
        aux_values = self._aux_eval(self.X_np) if callable(aux) else np.asarray(aux, dtype=np.float64).reshape(-1)
        if aux_values.shape[0] != self.X_np.shape[0]:
            raise ValueError(f"aux has {aux_values.shape[0]} values, but there are {self.X_np.shape[0]} residual "
                             f"points ({n_train} in data.pde.train_x + {self.X_np.shape[0] - n_train} anchors)")
        self.aux = torch.as_tensor(aux_values, dtype=dtype, device=self.device)[:, None]
        base = copy.deepcopy(model.net).to(device=self.device, dtype=dtype)
        self.v = torch.as_tensor(v, dtype=dtype, device=self.device)[None]
        self.net = InstanceNet(base, self.v)
        self.net.train(False)
        self.spec = ParamSpec.of(self.net)
        self.X = torch.as_tensor(self.X_np, dtype=dtype, device=self.device)
        try:
            with torch.no_grad():
                y = base((self.v, self.X[:2]))
        except (RuntimeError, ValueError, IndexError, AssertionError) as exc:
            raise ValueError(f"model.net((v, x)) failed for a branch input of {n_sensors} values and trunk points "
                             f"of dimension {self.X.shape[1]}: {exc}. Check the branch/trunk input sizes") from exc
        if y.ndim not in (2, 3) or y.shape[0] != 1 or y.shape[1] != 2:
            raise ValueError(f"model.net((v, x)) returned shape {tuple(y.shape)} for 1 function and 2 points; "
                             f"{SUPPORTED} gives (1, 2) or (1, 2, k)")
        self._finish_setup(model, loss_weights, chunk, pointwise)

    def _aux_eval(self, X: np.ndarray) -> np.ndarray:
        vals = np.asarray(self._aux_fn(np.asarray(X, dtype=np.float64)[:, self.func_vars]), dtype=np.float64)
        if vals.ndim == 2 and vals.shape[0] == 1:  # dde's eval_batch on one feature row
            vals = vals[0]
        return vals.reshape(-1)

    def _bc_errors(self, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor | None) -> list[torch.Tensor]:
        bs = self.bcs_start
        return [bc.error(self.X_np, x, y, bs[i], bs[i + 1], aux_var=aux) for i, bc in enumerate(self.data.bcs)]

    def aux_at(self, X: np.ndarray) -> torch.Tensor | None:
        """The input function at points X (k, d), (k, 1); needs aux given as a callable."""
        if self._aux_fn is None:
            raise ValueError("the input function's values at new points are unknown: pass aux as a callable")
        return torch.as_tensor(self._aux_eval(X), dtype=self.dtype, device=self.device)[:, None]

    def reference(self):
        return None


def refine_instance(model, v, aux=None, *, anchors=None, rank: int | None = None, subspace: str = "randomized",
                    oversampling: int = 10, rcond: float = 1e-14, seed: int = 0, dtype: torch.dtype = torch.float64,
                    device=None, reference=None, problem: DeepONetInstanceProblem | None = None
                    ) -> px.DeepXDERefinement:
    """One-shot LSR of a PI-DeepONet for one input function; ``model`` is not modified.

    ``v``, ``aux``, ``anchors``: as :class:`DeepONetInstanceProblem` (or pass a built ``problem``).
    ``subspace="randomized"`` (default): V from a randomized range finder on Gᵀ with ``rank`` +
    ``oversampling`` columns (default rank: all residual rows), scaled so that G V has orthonormal
    columns; ``"svd"``: the dense G's right singular vectors. ``reference`` = (X, U): trunk points
    (N, d) and u(v) there (N, k), for the error before/after. Returns a
    :class:`~pinnlsr.interop.deepxde.DeepXDERefinement` whose ``predictor`` maps trunk points
    (N, d) to the refined u(v)(x) (N, k).
    """
    prob = problem or DeepONetInstanceProblem(model, v, aux, anchors=anchors, dtype=dtype, device=device)
    res = px.refine(model, rank=rank, subspace=subspace, oversampling=oversampling, rcond=rcond, seed=seed,
                    reference=reference, problem=prob)
    res.diagnostics["instance"] = True
    return res


def predict_instance(model, v, x, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """The unrefined DeepONet u(v)(x) in ``dtype``: v (n_sensors,), x (N, d) -> (N, k) NumPy."""
    net = copy.deepcopy(model.net).to(dtype=dtype)
    p = next(net.parameters())
    inst = InstanceNet(net, torch.as_tensor(np.asarray(v), dtype=dtype, device=p.device))
    return px.predict(inst, x, dtype)


def mean_instance_errors(errors_before: Sequence[float], errors_after: Sequence[float]) -> dict:
    """Mean and standard deviation of per-instance relative L2 errors before/after."""
    b, a = np.asarray(errors_before, dtype=np.float64), np.asarray(errors_after, dtype=np.float64)
    return {"rel_l2_mean_before": float(b.mean()), "rel_l2_std_before": float(b.std()),
            "rel_l2_mean_after": float(a.mean()), "rel_l2_std_after": float(a.std()), "n_instances": int(a.size)}


__all__ = ["InstanceNet", "DeepONetInstanceProblem", "refine_instance", "predict_instance", "mean_instance_errors",
           "SUPPORTED"]
