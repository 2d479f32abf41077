"""Distributed LSR and tangent Gauss–Newton (2 and 3 gloo CPU processes) give the one-process z;
a NaN on one process stops every process with an error instead of a hang."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pinnlsr import distributed as dl
from pinnlsr import operators as op
from pinnlsr.models import MLP

from oracles import TinyPoisson


class TinyNonlinear(TinyPoisson):
    """-Δu + u³ = f (u = sin πx sin πy): Gauss–Newton needs several steps."""

    name = "tiny_nonlinear"

    def pde(self, u, x):
        s = torch.sin(math.pi * x[0]) * torch.sin(math.pi * x[1])
        return -op.laplacian(u, x) + u(x) ** 3 - 2 * math.pi**2 * s - s**3


class NaNOnTheRight(TinyPoisson):
    """A residual that is NaN at points with x > 0.9 (they land on the last process's share)."""

    def bc(self, u, x):
        return u(x) + torch.where(x[0] > 0.9, torch.nan, 0.0)


def _model():
    return MLP(2, 1, (6, 5), "tanh", generator=torch.Generator().manual_seed(0))


def _lsr(group_size=None):
    problem = TinyPoisson(n_pde=9, n_bc=6)
    points = problem.sample_points(torch.Generator().manual_seed(3))
    res = dl.lsr_step(problem, _model(), points, rank=7, oversampling=3, seed=1)
    return res.z.tolist(), res.linearized_residual, res.residual_before


def _gauss_newton():
    problem = TinyNonlinear(n_pde=40, n_bc=16)
    points = problem.sample_points(torch.Generator().manual_seed(3))
    res = dl.gauss_newton(problem, _model(), points, rank=25, oversampling=5, seed=1, max_iters=4, patience=4)
    return res.z.tolist(), [h["residual"] for h in res.history], res.best_iteration


def _nan():
    problem = NaNOnTheRight(n_pde=9, n_bc=40)
    points = problem.sample_points(torch.Generator().manual_seed(3))
    points["bc"] = points["bc"][points["bc"][:, 0].argsort()]  # the x > 0.9 points go to the last rank
    try:
        dl.lsr_step(problem, _model(), points, rank=7, oversampling=3, seed=1)
    except FloatingPointError as exc:
        return "FloatingPointError: " + str(exc)
    return "no error"


JOBS = {"lsr": _lsr, "gauss_newton": _gauss_newton, "nan": _nan}


def _worker(rank, world, port, job, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    queue.put((rank, JOBS[job]()))  # plain lists and strings: no shared memory
    dl.shutdown()  # barrier first: without it gloo aborted a rank in about 1 run of 5
    # torch's C++ static teardown after the interpreter has finished aborts now and then ("terminate
    # called without an active exception"); the result is already in the queue, so leave without it.
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(job, world):
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = mp.start_processes(_worker, args=(world, _free_port(), job, queue), nprocs=world, join=False,
                               start_method="spawn")
    for _ in range(240):  # a hang (a rank waiting in a collective) fails the test instead of blocking CI
        if procs.join(timeout=0.5):
            break
    else:
        for p in procs.processes:
            p.kill()
        pytest.fail(f"{job}: the {world} processes did not finish within 2 minutes (a rank left waiting?)")
    return dict(queue.get() for _ in range(world))


@pytest.mark.parametrize("world", [2, 3])
def test_lsr_on_several_processes_matches_one(world):
    z1, lin1, before1 = _lsr()
    z1 = torch.tensor(z1, dtype=torch.float64)
    got = _run("lsr", world)
    for rank in range(world):
        z, lin, before = got[rank]
        z = torch.tensor(z, dtype=torch.float64)
        assert (z - z1).norm() <= 1e-10 * z1.norm()
        assert abs(lin - lin1) <= 1e-10 * lin1
        assert abs(before - before1) <= 1e-12 * before1
    assert all(got[r][0] == got[0][0] for r in range(world))  # every rank holds the same z


def test_sharded_gauss_newton_matches_one_process():
    z1, hist1, best1 = _gauss_newton()
    assert len(hist1) >= 3 and hist1[-1] < 0.5 * hist1[0], "the check needs a run that takes several steps"
    got = _run("gauss_newton", 2)
    z1 = torch.tensor(z1, dtype=torch.float64)
    for rank in range(2):
        z, hist, best = got[rank]
        assert best == best1 and len(hist) == len(hist1)
        assert (torch.tensor(z, dtype=torch.float64) - z1).norm() <= 1e-10 * z1.norm()
        assert all(abs(a - b) <= 1e-9 * b for a, b in zip(hist, hist1))
    assert got[0][0] == got[1][0]


def test_nan_on_one_process_stops_every_process():
    assert _nan().startswith("FloatingPointError: residual term 'bc'")
    got = _run("nan", 2)
    assert got[1].startswith("FloatingPointError: residual term 'bc'")  # the rank with the NaN names it
    assert got[0].startswith("FloatingPointError: the residual has NaN or Inf values on another process")


def test_sketch_rows_do_not_depend_on_how_rows_are_split():
    index = torch.arange(0, 9000, 7)
    whole = dl.sketch_rows(index, 5, seed=2)
    parts = torch.cat([dl.sketch_rows(index[:400], 5, seed=2), dl.sketch_rows(index[400:], 5, seed=2)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, dl.sketch_rows(index, 5, seed=3))
    assert abs(float(whole.std()) - 1.0) < 0.05
