"""Distributed LSR on ``torch.distributed``: collocation points sharded across processes.

Each process (rank) takes a contiguous share of every term's points, computes its own rows of
the output Jacobian J and the residual Jacobian G with the streamed step of
:func:`pinnlsr.lsr.lsr_step`, and the pieces are combined stably:

- the sketch Y = Jᵀ Ω is a sum over ranks (``all_reduce``); Ω is drawn in fixed blocks of rows,
  each from its own seed, so a rank draws only the blocks of its own rows and the sketch equals the
  one-process sketch up to rounding, whatever the number of ranks;
- the tall matrices J·Q and [G·V | f0] are reduced by TSQR: each rank takes the R factor of its rows
  and the factors are combined pairwise up a binary tree (log2(ranks) small QRs), the result
  broadcast from rank 0;
- the small SVDs of R, with a canonical sign per singular vector, give V and z; rank 0's z is
  broadcast, so every rank returns the same z (equal to the one-process z up to rounding);
- a NaN or Inf found on one rank stops every rank with the same error (agreed before the next
  collective), instead of leaving the others waiting.

:func:`gauss_newton` runs the tangent Gauss–Newton (Levenberg–Marquardt in the coefficients z of
the refined predictor) the same way: each rank forms the rows of A = df/dz and f on its points,
the R factor of [A | f] is reduced up the tree, every rank takes the same damped steps from it, and
trial and validation residual norms are sums over ranks.

Backends: gloo on the CPU, NCCL on GPUs (one GPU per rank, ``cuda:LOCAL_RANK``).

Launch with torchrun, one process per CPU share or GPU, from a script that builds the problem and
the trained model the same way on every rank::

    # my_lsr.py
    import torch
    from pinnlsr import distributed as dl
    from problems.poisson2d import Poisson2D

    device = dl.init_from_env()           # reads RANK/WORLD_SIZE/MASTER_ADDR set by torchrun
    problem = Poisson2D()
    model = ...                           # the same trained network on every rank
    points = problem.sample_points(torch.Generator().manual_seed(0), torch.float64, device)
    out = dl.lsr_step(problem, model, points, rank=500, seed=0)
    if dl.is_main():
        print(out.linearized_residual, out.seconds)
    dl.shutdown()

    torchrun --nproc_per_node=2 my_lsr.py             # 2 CPU processes (gloo)
    torchrun --nproc_per_node=4 my_lsr.py             # 4 GPUs on one node (NCCL)

The returned :class:`~pinnlsr.lsr.StepResult` holds z (r,) and the basis V (m, r), the same on
every rank, so ``LinearizedModel(model, out.V, out.z)`` is the refined predictor on each of them.
The Iterative LSR alignment (training the network) is not sharded.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from .gauss_newton import ValidationStop, draw_validation_points
from .jet_plans import JetLoss
from .linearize import JacobianOperator
from .lsr import StepResult, lsr_step as one_step, prepare_model
from .models import LinearizedModel, ParamSpec, ShiftedNetwork
from .problem import PDEProblem
from .records import HistoryEntry
from .qr import Reducer, r_factor
from .residual import Rows, output_rows, residual_rows
from .solvers import DampedLeastSquares, DampingSearch, no_tf32

#: rows of the sketch Ω drawn from one seed: a rank draws only the blocks that hold its rows
SKETCH_BLOCK_ROWS = 4096


def init_from_env(backend: str | None = None) -> torch.device:
    """Join the process group torchrun describes (env://) and return this rank's device:
    ``cuda:LOCAL_RANK`` with NCCL when CUDA is available, else the CPU with gloo."""
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and backend != "gloo"
        backend = backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(backend)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def is_main() -> bool:
    """True on rank 0 (or without a process group)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def shutdown() -> None:
    """Leave the process group, after a barrier: gloo aborts the process (SIGABRT, "terminate called
    without an active exception") when one rank tears its group down while a peer still talks to it."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """Contiguous share of n items for ``rank`` of ``world`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _world(group=None) -> tuple[int, int]:
    """(number of processes, this process's rank) in ``group``; (1, 0) without a process group."""
    if not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _global_rank(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def tree_r(r: torch.Tensor, group=None) -> torch.Tensor:
    """The R factor (k, k) of every process's rows stacked, from this process's R factor (≤ k, k):
    pairwise QRs of two stacked factors up a binary tree (rank + s sends to rank at each level s =
    1, 2, 4, ...), then rank 0's result broadcast. log2(world) QRs of (2k, k) on the busiest rank,
    no process holds more than two factors."""
    world, me = _world(group)
    k = r.shape[1]
    acc = r.new_zeros(k, k)
    acc[:r.shape[0]] = r  # zero rows do not change the R of a stack
    step = 1
    while step < world:
        if me % (2 * step) == step:
            dist.send(acc.contiguous(), dst=_global_rank(group, me - step), group=group)
            break
        if me + step < world:
            other = torch.empty_like(acc)
            dist.recv(other, src=_global_rank(group, me + step), group=group)
            acc = r_factor(torch.cat([acc, other])).contiguous()  # LAPACK's R is column-major
        step *= 2
    dist.broadcast(acc, src=_global_rank(group, 0), group=group)
    return acc


def any_true(flag: bool, group=None) -> bool:
    """True on every process when ``flag`` is True on at least one."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device(group))
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item() > 0)


def _collective_device(group=None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def global_norm(v: torch.Tensor, group=None) -> float:
    """||v|| over the pieces of all processes (inf when any piece is not finite)."""
    sq = v.dot(v).reshape(1)
    if dist.is_initialized():
        dist.all_reduce(sq, op=dist.ReduceOp.SUM, group=group)
    n = math.sqrt(float(sq)) if math.isfinite(float(sq)) else math.inf
    return n


def reducer(group=None) -> Reducer:
    """The :class:`~pinnlsr.qr.Reducer` of a process group: sums by all_reduce, R factors by
    the tree of :func:`tree_r`, agreement by broadcast from rank 0, checks by :func:`any_true`."""

    def sum_(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    def agree(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        dist.broadcast(t, src=_global_rank(group, 0), group=group)
        return t

    return Reducer(sum_, lambda r: tree_r(r, group), agree, lambda flag: any_true(flag, group))


def sketch_rows(index: torch.Tensor, width: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Rows ``index`` (global row numbers, (k,)) of the Gaussian sketch Ω (n, width): Ω is drawn in
    blocks of :data:`SKETCH_BLOCK_ROWS` rows, block b from the seed (seed, b) on the CPU, so any
    process draws just the blocks it needs and gets the rows one process would."""
    out = torch.empty(index.numel(), width, dtype=dtype)
    blocks = torch.div(index, SKETCH_BLOCK_ROWS, rounding_mode="floor")
    for b in torch.unique(blocks).tolist():
        gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + b) % (2**63))
        block = torch.randn(SKETCH_BLOCK_ROWS, width, generator=gen, dtype=dtype)
        sel = blocks == b
        out[sel] = block[index[sel] - b * SKETCH_BLOCK_ROWS]
    return out


def _shares(points: dict[str, torch.Tensor], world: int, me: int) -> dict[str, torch.Tensor]:
    mine = {k: v[shard(v.shape[0], me, world)] for k, v in points.items()}
    empty = [k for k, v in mine.items() if v.shape[0] == 0]
    if empty:
        raise ValueError(f"terms {empty} have fewer points than the {world} processes: use fewer processes")
    return mine


def _local_rows(problem: PDEProblem, module: nn.Module, mine: dict, points: dict) -> Rows:
    """This process's residual rows, scaled as part of all points (term weights are means over all
    points of a term, not over this process's share)."""
    rows = residual_rows(problem, module, mine)
    for block in rows.blocks:
        block.scale *= (mine[block.name].shape[0] / points[block.name].shape[0]) ** 0.5
    return rows


def _device(model: nn.Module, device) -> torch.device:
    """``device``, else this rank's GPU under NCCL, else the model's device."""
    if device is not None:
        return torch.device(device)
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def lsr_step(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor], rank: int,
             oversampling: int = 10, seed: int = 0, memory_budget: int | None = None,
             rcond: float | None = 1e-14, group=None, device=None) -> StepResult:
    """One randomized-basis LSR step with the points sharded over the process group.

    ``points`` ({term: (n_t, d)}) are the *global* point sets, the same on every rank (each rank
    keeps its share). The output Jacobian uses all points, in term order, as in
    :func:`pinnlsr.lsr.lsr`. A copy of the model and the points go to ``device`` (default: this
    rank's GPU under NCCL, else the model's device). Without an initialised process group this is
    the one-process step (:func:`pinnlsr.lsr.lsr_step` with the same Ω)."""
    world, me = _world(group)
    device = _device(model, device)
    first = next(iter(model.parameters()))
    net = prepare_model(model, first.dtype, device)
    spec = ParamSpec.of(net)
    theta = spec.flatten(net)
    points = {k: torch.as_tensor(v).to(dtype=theta.dtype, device=device) for k, v in points.items()}
    mine = _shares(points, world, me)
    rows = _local_rows(problem, net, mine, points)
    out = output_rows(net, torch.cat(list(mine.values())), spec)
    q = out.blocks[0].q  # output rows per point, point-major
    starts, offset = [], 0
    for v in points.values():
        sl = shard(v.shape[0], me, world)
        starts.append(torch.arange(offset + sl.start, offset + sl.stop))
        offset += v.shape[0]
    point_index = torch.cat(starts)
    row_index = (point_index.unsqueeze(1) * q + torch.arange(q)).reshape(-1)
    width = min(rank + oversampling, spec.numel)
    omega = sketch_rows(row_index, width, seed, theta.dtype).to(device)
    red = reducer(group) if world > 1 else None
    return one_step(rows, out, theta, rank, omega=omega, memory_budget=memory_budget, rcond=rcond, reducer=red)


@dataclass
class ShardedGaussNewton:
    """What :func:`gauss_newton` returns, the same on every rank: the predictor's coefficients z (r,)
    at the best validation residual, the basis V (m, r), one record per iteration (iteration 0 is
    the one-shot LSR step: residual, validation_residual, damping, tries), the best iteration and
    why it stopped."""

    z: torch.Tensor
    V: torch.Tensor
    history: list[HistoryEntry]
    best_iteration: int
    stop_reason: str
    diagnostics: dict = field(default_factory=dict)

    def predictor(self, model: nn.Module) -> LinearizedModel:
        """The refined predictor u(θ0) + J·V·z on ``model`` (the network the run started from)."""
        return LinearizedModel(model, self.V.to(next(model.parameters())), self.z.to(next(model.parameters())))


def gauss_newton(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor], rank: int, *,
                 validation_points: dict[str, torch.Tensor] | None = None, oversampling: int = 10,
                 seed: int = 0, max_iters: int = 20, damping: float = 1e-20, max_tries: int = 30,
                 patience: int = 3, tol: float = 1e-12, rcond: float | None = 1e-14,
                 memory_budget: int | None = None, group=None, device=None) -> ShardedGaussNewton:
    """Tangent Gauss–Newton with the points (and validation points) sharded over the process group.

    Starts from the sharded one-shot LSR step (:func:`lsr_step`: basis V and z), then each
    iteration forms this rank's rows of A = df/dz (the shifted network's jet rows times V, as
    :func:`pinnlsr.gauss_newton.shifted_jacobian`) and of f, reduces the R factor of [A | f] up the
    tree, and takes damped steps from it (:class:`pinnlsr.solvers.DampedLeastSquares`, damping chosen
    by :class:`pinnlsr.solvers.DampingSearch`) accepted when the residual norm over all ranks falls. The returned z has the lowest
    validation residual (``validation_points``: global sets; default: drawn as
    :func:`pinnlsr.gauss_newton.draw_validation_points` does); every rank returns the same result,
    equal to the one-process run up to rounding."""
    if max_iters < 0 or max_tries < 1 or patience < 1:
        raise ValueError("max_iters must be >= 0, max_tries and patience >= 1")
    world, me = _world(group)
    device = _device(model, device)
    first = next(iter(model.parameters()))
    net = prepare_model(model, first.dtype, device)
    dtype = first.dtype
    points = {k: torch.as_tensor(v).to(dtype=dtype, device=device) for k, v in points.items()}
    if validation_points is None:
        validation_points = draw_validation_points(problem, seed, dtype, device,
                                                   {k: int(v.shape[0]) for k, v in points.items()})
    validation_points = {k: torch.as_tensor(v).to(dtype=dtype, device=device) for k, v in validation_points.items()}
    step0 = lsr_step(problem, net, points, rank, oversampling, seed, memory_budget, rcond, group, device)
    V, z = step0.V, step0.z.clone()
    mine, mine_val = _shares(points, world, me), _shares(validation_points, world, me)
    lin = LinearizedModel(net, V, z)
    train = JetLoss(_local_rows(problem, lin, mine, points), lin, z)
    val = JetLoss(_local_rows(problem, lin, mine_val, validation_points), lin, z)
    n_rows = sum(points[b.name].shape[0] * b.q for b in train.rows.blocks)  # over all ranks
    f = train.values(z)
    f_norm = global_norm(f, group)
    history = [HistoryEntry(0, residual=f_norm, extras={"validation_residual": global_norm(val.values(z), group),
                                                          "damping": None, "tries": 0})]
    best, stop = ValidationStop(z, history[0]["validation_residual"], patience, tol), "max_iters"
    search = DampingSearch(damping, max_tries=max_tries)
    for it in range(1, max_iters + 1):
        lin.z.data.copy_(z)
        shifted_rows = _local_rows(problem, ShiftedNetwork(lin), mine, points)  # u + J·V·z at this z
        with no_tf32(), torch.no_grad():
            a = JacobianOperator(shifted_rows, lin.theta0, "auto", memory_budget).matmul(V)  # (n_local, r)
            local = r_factor(torch.cat([a, -f.unsqueeze(1)], 1))
            step = DampedLeastSquares.from_factor(tree_r(local, group) if world > 1 else local, n_rows, rcond)

        def evaluate(delta):
            f_try = train.values(z + delta)
            return global_norm(f_try, group), f_try  # inf or nan when not finite: refused

        def validate(delta, f_try):
            return global_norm(val.values(z + delta), group)

        trial, tries, _ = search.choose(step, f_norm, evaluate, validate)
        if trial is None:
            history.append(HistoryEntry(it, residual=f_norm, extras={"validation_residual": None,
                                                                     "damping": search.mu, "tries": tries}))
            stop = "no_decrease"
            break
        z, f, new_norm = z + trial.delta, trial.payload, trial.norm
        if world > 1:
            dist.broadcast(z, src=_global_rank(group, 0), group=group)  # bit-identical z everywhere
        decrease, f_norm = f_norm - new_norm, new_norm
        v_norm = global_norm(val.values(z), group)
        history.append(HistoryEntry(it, residual=f_norm, extras={"validation_residual": v_norm,
                                                                 "damping": trial.mu, "tries": tries}))
        reason = best.update(it, z, v_norm, f_norm, decrease)
        if reason:
            stop = reason
            break
    diag = {"processes": world, "rank": V.shape[1], "lsr_seconds": step0.seconds.get("total"),
            "n_rows": n_rows}
    return ShardedGaussNewton(best.z, V, history, best.iteration, stop, diag)


__all__ = ["init_from_env", "is_main", "shutdown", "shard", "tree_r", "any_true", "global_norm", "reducer",
           "sketch_rows", "lsr_step", "ShardedGaussNewton", "gauss_newton"]
