"""A meshio mesh given as the reference works end to end, and bad reference files fail clearly."""
import numpy as np
import pytest
import torch
from scipy.spatial import Delaunay

from pinnlsr.meshfiles import write_vtu
from pinnlsr.lsr import lsr
from pinnlsr.train import train_adam

from pinnlsr.models import MLP
from problems.poisson2d import Poisson2D

from oracles import tiny_mlp


def mesh_reference(path, n=15):
    g = np.linspace(0, 1, n)
    pts = np.array([[a, b] for a in g for b in g])
    tri = Delaunay(pts).simplices
    u = np.sin(np.pi * pts[:, 0]) * np.sin(np.pi * pts[:, 1])
    write_vtu(path, pts, {"u": u}, cells={"triangle": tri})
    return pts, u


class MeshReferenced(Poisson2D):
    def __init__(self, path):
        super().__init__(n_interior=300, n_boundary=100)
        self.reference_path = str(path)

    def exact(self, x):
        raise NotImplementedError


def test_vtu_reference_end_to_end(tmp_path):
    pts, u = mesh_reference(tmp_path / "ref.vtu")
    problem = MeshReferenced(tmp_path / "ref.vtu")
    x, ref = problem.reference()
    assert np.array_equal(x.numpy(), pts) and np.array_equal(ref[:, 0].numpy(), u)
    gen = torch.Generator().manual_seed(0)
    model = MLP(2, 1, (20, 20), generator=gen)
    points = problem.sample_points(gen)
    train_adam(problem, model, points, 200, lr=5e-3, progress=False)
    res = lsr(problem, model, points=points)
    d = res.diagnostics
    # the errors are measured on the mesh nodes, against the mesh's point data
    with torch.no_grad():
        expected = float((res.model(x)[:, 0] - ref[:, 0]).norm() / ref[:, 0].norm())
    assert d["after"].rel_l2 == pytest.approx(expected, rel=1e-10)
    assert d["after"].rel_l2 < d["before"].rel_l2 / 100


def test_bad_reference_files(tmp_path):
    problem = MeshReferenced(tmp_path / "missing.vtu")
    with pytest.raises(FileNotFoundError, match="missing.vtu"):
        lsr(problem, tiny_mlp())
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="garbage.npz"):
        lsr(MeshReferenced(garbage), tiny_mlp())
    two = tmp_path / "two_outputs.vtu"
    g = np.linspace(0, 1, 5)
    pts = np.array([[a, b] for a in g for b in g])
    write_vtu(two, pts, {"u": pts[:, 0], "v": pts[:, 1]})
    with pytest.raises(ValueError, match="two_outputs.vtu"):
        lsr(MeshReferenced(two), tiny_mlp())
