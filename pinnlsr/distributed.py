"""Distributed LSR on ``torch.distributed``: collocation points sharded across processes.

Each process (rank) takes a contiguous share of every term's points, computes its own rows of
the output Jacobian J and the residual Jacobian G with the streamed engine of
:mod:`pinnlsr.engine`, and the pieces are combined stably:

- the sketch Y = Jᵀ Ω is a sum over ranks (``all_reduce``); every rank draws the same Gaussian Ω for
  all output rows from the seed and uses its own rows of it, so the sketch equals the one-process
  sketch up to rounding;
- the tall matrices J·Q and [G·V | f0] are reduced by TSQR: each rank takes the R factor of its rows,
  the R factors are gathered (``all_gather``) and one more QR of their stack gives the R of all rows;
- the small SVDs of R, with a canonical sign per singular vector, give V and z; rank 0's z is
  broadcast, so every rank returns the same z (equal to the one-process z up to rounding).

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

The returned :class:`~pinnlsr.engine.StepResult` holds z (r,) and the basis V (m, r), the same on
every rank, so ``LinearizedModel(model, out.V, out.z)`` is the refined predictor on each of them.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from . import engine
from .models import ParamSpec
from .problem import PDEProblem
from .residual import output_rows, residual_rows


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


def reducer(group=None) -> engine.Reducer:
    """The :class:`~pinnlsr.engine.Reducer` of a process group: sums by all_reduce, R factors by
    all_gather + QR (TSQR), agreement by broadcast from rank 0."""

    def sum_(t: torch.Tensor) -> None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    def stack_r(r: torch.Tensor) -> torch.Tensor:
        cols = r.shape[1]
        padded = r.new_zeros(cols, cols)  # zero rows do not change the R of the stack
        padded[:r.shape[0]] = r
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, padded.contiguous(), group=group)
        return engine.r_factor(torch.cat(parts))

    def agree(t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        dist.broadcast(t, src=0, group=group)
        return t

    return engine.Reducer(sum_, stack_r, agree)


def lsr_step(problem: PDEProblem, model: nn.Module, points: dict[str, torch.Tensor], rank: int,
             oversampling: int = 10, seed: int = 0, memory_budget: int | None = None,
             rcond: float | None = 1e-14, group=None) -> engine.StepResult:
    """One randomized-basis LSR step with the points sharded over the process group.

    ``points`` ({term: (n_t, d)}) are the *global* point sets, the same on every rank (each rank
    keeps its share). The output Jacobian uses all points, in term order, as in
    :func:`pinnlsr.lsr.lsr`. Without an initialised process group this is the one-process step
    (:func:`pinnlsr.engine.lsr_step` with the same Ω)."""
    world = dist.get_world_size(group) if dist.is_initialized() else 1
    me = dist.get_rank(group) if dist.is_initialized() else 0
    spec = ParamSpec.of(model)
    theta = spec.flatten(model)
    mine = {k: v[shard(v.shape[0], me, world)] for k, v in points.items()}
    empty = [k for k, v in mine.items() if v.shape[0] == 0]
    if empty:
        raise ValueError(f"terms {empty} have fewer points than the {world} processes: use fewer processes")
    rows = residual_rows(problem, model, mine, spec)
    for block in rows.blocks:  # the weights are over all points of a term, not this rank's share
        block.scale *= (mine[block.name].shape[0] / points[block.name].shape[0]) ** 0.5
    out = output_rows(model, torch.cat(list(mine.values())), spec)
    # The same Ω on every rank for all output rows (term order), then this rank's rows of it.
    n_out = sum(v.shape[0] for v in points.values())
    width = min(rank + oversampling, spec.numel)
    omega = torch.randn(n_out, width, generator=torch.Generator().manual_seed(seed), dtype=theta.dtype)
    starts, offset = [], 0
    for v in points.values():
        sl = shard(v.shape[0], me, world)
        starts.append(torch.arange(offset + sl.start, offset + sl.stop))
        offset += v.shape[0]
    omega = omega[torch.cat(starts)].to(theta.device)
    red = reducer(group) if world > 1 else None
    return engine.lsr_step(rows, out, theta, rank, omega=omega, memory_budget=memory_budget,
                           rcond=rcond, reducer=red)


__all__ = ["init_from_env", "is_main", "shutdown", "shard", "reducer", "lsr_step"]
