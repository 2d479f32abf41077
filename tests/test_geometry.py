"""Tests for pinnlsr.geometry (fast, CPU)."""

import math

import numpy as np
import pytest
import torch

from pinnlsr.geometry import (
    Ball,
    Box,
    Difference,
    Disk,
    Domain,
    Interval,
    PointSet,
    TimeDomain,
    uniform_grid,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def pinnacle_domain():
    square = Box([-0.5, -0.5], [0.5, 0.5])
    holes = [Disk([sx * 0.3, sy * 0.3], 0.1) for sx in (-1, 1) for sy in (-1, 1)]
    return square, holes, Difference(square, holes)


# --------------------------------------------------------------------------- shapes / dtypes
@pytest.mark.parametrize(
    "dom",
    [
        Interval(-1.0, 2.0),
        Box([0, 0], [1, 2]),
        Box([0, 0, 0], [1, 2, 3]),
        Disk([0.5, -0.5], 2.0),
        Ball([0, 0, 0], 1.0),
        Box([0, 0], [1, 1]) - Disk([0.5, 0.5], 0.25),
        TimeDomain(Box([0, 0], [1, 1]), 0.0, 2.0),
    ],
)
def test_shapes_dtype_and_membership(dom):
    for dtype in (torch.float64, torch.float32):
        xi = dom.sample_interior(257, gen(1), dtype=dtype)
        xb = dom.sample_boundary(129, gen(2), dtype=dtype)
        assert xi.shape == (257, dom.dim) and xi.dtype == dtype and xi.device.type == "cpu"
        assert xb.shape == (129, dom.dim) and xb.dtype == dtype
        assert dom.contains(xi).all()
        assert dom.contains(xb).all()
        # boundary points are not in the open interior
        assert not dom.contains_open(xb).any()
    assert isinstance(dom, Domain)
    lo, hi = dom.bbox
    assert len(lo) == len(hi) == dom.dim


def test_reproducible_and_seed_dependent():
    dom = Box([0, 0], [1, 2]) - Disk([0.5, 1.0], 0.3)
    a = dom.sample_interior(100, gen(7))
    b = dom.sample_interior(100, gen(7))
    c = dom.sample_interior(100, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    a = dom.sample_boundary(100, gen(7))
    b = dom.sample_boundary(100, gen(7))
    c = dom.sample_boundary(100, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # same seed gives the same points for every dtype (up to rounding)
    a32 = Disk([0, 0], 1).sample_interior(50, gen(3), dtype=torch.float32)
    a64 = Disk([0, 0], 1).sample_interior(50, gen(3))
    assert torch.allclose(a32.double(), a64, atol=1e-6)


def test_no_global_rng_use():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    Box([0, 0], [1, 1]).sample_interior(10, gen())
    (Box([0, 0], [1, 1]) - Disk([0.5, 0.5], 0.2)).sample_boundary(10, gen())
    assert torch.equal(before, torch.get_rng_state())


# --------------------------------------------------------------------------- Box
def test_box_interior_mean():
    n = 20000
    x = Box([0, 0], [1, 2]).sample_interior(n, gen())
    mean = x.mean(dim=0)
    sigma = torch.tensor([1 / math.sqrt(12), 2 / math.sqrt(12)]) / math.sqrt(n)
    assert ((mean - torch.tensor([0.5, 1.0])).abs() < 4 * sigma).all()
    assert (x[:, 0] >= 0).all() and (x[:, 0] <= 1).all()
    assert (x[:, 1] >= 0).all() and (x[:, 1] <= 2).all()


def test_box_boundary_on_faces_and_proportions():
    n = 20000
    x = Box([0, 0], [1, 2]).sample_boundary(n, gen())
    on_x0, on_x1 = x[:, 0] == 0, x[:, 0] == 1
    on_y0, on_y1 = x[:, 1] == 0, x[:, 1] == 2
    assert (on_x0 | on_x1 | on_y0 | on_y1).all()
    # perimeter 6: vertical edges have length 2, horizontal edges length 1
    for mask, frac in ((on_x0, 2 / 6), (on_x1, 2 / 6), (on_y0, 1 / 6), (on_y1, 1 / 6)):
        f = mask.double().mean().item()
        assert abs(f - frac) < 4 * math.sqrt(frac * (1 - frac) / n)
    # uniform along an edge
    y = x[on_x0, 1]
    assert abs(y.mean().item() - 1.0) < 4 * (2 / math.sqrt(12)) / math.sqrt(len(y))


def test_box_3d_boundary_face_areas():
    n = 30000
    x = Box([0, 0, 0], [1, 2, 3]).sample_boundary(n, gen())
    # face areas: x-faces 6, y-faces 3, z-faces 2 (each twice) -> total 22
    frac_x = ((x[:, 0] == 0) | (x[:, 0] == 1)).double().mean().item()
    assert abs(frac_x - 12 / 22) < 0.02


def test_box_sobol_points_cover_more_evenly_and_follow_the_seed():
    from scipy.stats import qmc

    lo, hi = torch.tensor([-0.5, -0.5]), torch.tensor([1.0, 1.5])
    sobol, plain = Box(lo, hi, sampling="sobol"), Box(lo, hi)
    x = sobol.sample_interior(3000, gen(0))
    assert x.shape == (3000, 2) and sobol.contains_open(x).all()
    assert torch.equal(x, sobol.sample_interior(3000, gen(0)))
    assert not torch.equal(x, sobol.sample_interior(3000, gen(1)))
    unit = lambda z: ((z - lo) / (hi - lo)).numpy()  # noqa: E731
    d_sobol = qmc.discrepancy(unit(x))
    d_plain = max(qmc.discrepancy(unit(plain.sample_interior(3000, gen(s)))) for s in range(3))
    assert d_sobol < d_plain / 20
    # the boundary: every point on a face, face shares within a point of the exact ones, each face
    # covered evenly along its length
    n = 800
    b = sobol.sample_boundary(n, gen(0))
    faces = [b[:, 0] == -0.5, b[:, 1] == -0.5, b[:, 0] == 1.0, b[:, 1] == 1.5]
    assert sum(f.long() for f in faces).min() >= 1
    for mask, length in zip(faces, (2.0, 1.5, 2.0, 1.5)):
        assert abs(int(mask.sum()) - n * length / 7.0) <= 1.0
    left = b[faces[0], 1]
    counts = torch.histc(left, bins=8, min=-0.5, max=1.5)
    assert counts.max() - counts.min() <= 3
    # three dimensions: face shares by area (6, 3, 2 on each side; 22 in all)
    b3 = Box([0, 0, 0], [1, 2, 3], sampling="sobol").sample_boundary(1100, gen(1))
    for k, area in enumerate((6.0, 3.0, 2.0)):
        share = int(((b3[:, k] == 0) | (b3[:, k] == (1, 2, 3)[k])).sum())
        assert abs(share - 1100 * 2 * area / 22) <= 2
    with pytest.raises(ValueError, match="sampling must be 'random' or 'sobol'"):
        Box([0, 0], [1, 1], sampling="halton")


def test_interval_boundary_balanced():
    iv = Interval(-1.0, 3.0)
    x = iv.sample_boundary(10, gen())
    assert x.shape == (10, 1)
    assert (x == -1).sum() == 5 and (x == 3).sum() == 5
    x = iv.sample_boundary(11, gen())
    assert ((x == -1) | (x == 3)).all()
    assert sorted([(x == -1).sum().item(), (x == 3).sum().item()]) == [5, 6]
    assert iv.grid(5).flatten().tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0]
    # a 1-D Box behaves like the interval
    y = Box([-1.0], [3.0]).sample_boundary(10, gen())
    assert y.shape == (10, 1) and (y == -1).sum() == 5 and (y == 3).sum() == 5


# --------------------------------------------------------------------------- grids
def test_grid_sizes_and_order():
    g = Box([0, 0], [1, 1]).grid(101)
    assert g.shape == (10201, 2)
    corners = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    for c in corners:
        assert (g == c).all(dim=1).any()
    # first coordinate slowest, last fastest
    assert g[0].tolist() == [0.0, 0.0]
    assert g[1].tolist() == [0.0, 0.01]
    assert g[101].tolist() == [0.01, 0.0]
    assert g[-1].tolist() == [1.0, 1.0]
    u = uniform_grid([0, -1, 2], [1, 1, 3], [2, 3, 4], dtype=torch.float32)
    assert u.shape == (24, 3) and u.dtype == torch.float32
    # disk grid only keeps contained points
    gd = Disk([0, 0], 1).grid(41)
    assert 0 < gd.shape[0] < 41 * 41
    assert ((gd.norm(dim=1)) <= 1 + 1e-12).all()
    # difference grid excludes hole interiors
    _, holes, dom = pinnacle_domain()
    gh = dom.grid(51)
    for h in holes:
        assert not h.contains_open(gh).any()


def test_time_domain():
    td = TimeDomain(Disk([0, 0], 1.0), 0.5, 2.0)
    assert td.dim == 3
    assert td.bbox == ((-1.0, -1.0, 0.5), (1.0, 1.0, 2.0))
    xi = td.sample_interior(500, gen())
    assert xi.shape == (500, 3)
    assert (xi[:, :2].norm(dim=1) <= 1 + 1e-12).all()
    assert ((xi[:, 2] >= 0.5) & (xi[:, 2] <= 2.0)).all()
    xb = td.sample_boundary(300, gen())
    assert torch.allclose(xb[:, :2].norm(dim=1), torch.ones(300, dtype=torch.float64), atol=1e-12)
    x0 = td.sample_initial(200, gen(), dtype=torch.float32)
    assert x0.shape == (200, 3) and x0.dtype == torch.float32
    assert (x0[:, 2] == 0.5).all()
    assert td.contains(x0).all()
    gt = TimeDomain(Box([0, 0], [1, 1]), 0.0, 1.0).grid(11, n_time=5)
    assert gt.shape == (121 * 5, 3)
    assert torch.equal(gt, uniform_grid([0, 0, 0], [1, 1, 1], [11, 11, 5]))
    assert TimeDomain(Interval(0, 1), 0, 1).grid(7).shape == (49, 2)
    n = td.boundary_normal(xb)
    assert torch.allclose(n[:, :2], xb[:, :2], atol=1e-12) and (n[:, 2] == 0).all()
    assert not td.contains(torch.tensor([[0.0, 0.0, 2.5]])).item()


# --------------------------------------------------------------------------- disk / ball
def test_disk_boundary_exact_and_interior_uniform():
    c = torch.tensor([0.3, -0.7], dtype=torch.float64)
    d = Disk(c.tolist(), 0.25)
    xb = d.sample_boundary(1000, gen())
    assert ((xb - c).norm(dim=1) - 0.25).abs().max() < 1e-12
    n = 20000
    xi = d.sample_interior(n, gen())
    r = (xi - c).norm(dim=1)
    assert (r <= 0.25).all()
    # uniform by area: P(r < R/2) = 1/4
    f = (r < 0.125).double().mean().item()
    assert abs(f - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    assert torch.allclose(xi.mean(dim=0), c, atol=0.01)


def test_ball_3d():
    b = Ball([0, 0, 0], 2.0)
    xb = b.sample_boundary(500, gen())
    assert ((xb.norm(dim=1) - 2.0).abs() < 1e-12).all()
    xi = b.sample_interior(20000, gen())
    f = (xi.norm(dim=1) < 1.0).double().mean().item()  # 1/8 of the volume
    assert abs(f - 0.125) < 0.01
    assert math.isclose(b.measure(), 4 / 3 * math.pi * 8)


# --------------------------------------------------------------------------- difference
def test_difference_pinnacle_holes():
    square, holes, dom = pinnacle_domain()
    assert isinstance(square - holes[0], Difference)
    assert len((square - holes[0] - holes[1]).holes) == 2
    centers = torch.tensor([[h.center[0], h.center[1]] for h in holes], dtype=torch.float64)
    xi = dom.sample_interior(5000, gen())
    dist = torch.cdist(xi, centers)
    assert (dist > 0.1).all()
    assert square.contains(xi).all()
    n = 20000
    xb = dom.sample_boundary(n, gen())
    dist = torch.cdist(xb, centers)
    on_circle = ((dist - 0.1).abs() < 1e-12).any(dim=1)
    on_square = (xb.abs() == 0.5).any(dim=1)
    assert (on_circle | on_square).all()
    assert not (on_circle & on_square).any()
    # proportion by length: 4 * 2*pi*0.1 circle length vs perimeter 4
    circ = 4 * 2 * math.pi * 0.1
    frac = circ / (circ + 4.0)
    f = on_circle.double().mean().item()
    assert abs(f - frac) < 4 * math.sqrt(frac * (1 - frac) / n)
    # contains: hole boundary points count, hole interiors do not
    assert dom.contains(xb).all()
    assert not dom.contains(centers).any()
    assert math.isclose(dom.boundary_measure(), circ + 4.0, rel_tol=0.02)
    assert math.isclose(dom.measure(), 1.0 - 4 * math.pi * 0.01, rel_tol=0.02)


def test_difference_overlapping_hole_partly_outside():
    # hole sticking out of the square: boundary = square part outside the
    # disk plus the arc of the circle inside the square
    dom = Box([0, 0], [1, 1]) - Disk([1.0, 0.5], 0.25)
    xb = dom.sample_boundary(4000, gen())
    c = torch.tensor([1.0, 0.5], dtype=torch.float64)
    r = (xb - c).norm(dim=1)
    assert (r >= 0.25 - 1e-12).all()
    assert ((xb[:, 0] <= 1 + 1e-12)).all()
    on_arc = (r - 0.25).abs() < 1e-12
    # arc length pi*0.25 vs remaining square boundary 4 - 0.5
    frac = math.pi * 0.25 / (math.pi * 0.25 + 3.5)
    assert abs(on_arc.double().mean().item() - frac) < 0.03


def test_difference_rejection_failure():
    dom = Difference(Box([0, 0], [1, 1]), [Box([-1, -1], [2, 2])], max_rounds=3)
    with pytest.raises(RuntimeError, match="rejection sampling"):
        dom.sample_interior(10, gen())


# --------------------------------------------------------------------------- normals
def test_normals_box_disk_interval():
    box = Box([0, 0], [1, 2])
    xb = box.sample_boundary(1000, gen())
    nb = box.boundary_normal(xb)
    assert torch.allclose(nb.norm(dim=1), torch.ones(1000, dtype=torch.float64))
    # outward: a small step along the normal leaves the box
    assert not box.contains(xb + 1e-3 * nb).any()
    assert box.contains(xb - 1e-3 * nb).all()
    pts = torch.tensor([[0.0, 0.7], [1.0, 0.3], [0.4, 0.0], [0.2, 2.0]])
    assert box.boundary_normal(pts).tolist() == [[-1, 0], [1, 0], [0, -1], [0, 1]]
    assert box.boundary_normal(pts).dtype == torch.float32

    disk = Disk([1, 1], 0.5)
    xd = disk.sample_boundary(500, gen())
    nd = disk.boundary_normal(xd)
    assert torch.allclose(nd, (xd - 1.0) / 0.5, atol=1e-12)

    iv = Interval(0, 1)
    assert iv.boundary_normal(torch.tensor([[0.0], [1.0]])).flatten().tolist() == [-1.0, 1.0]


def test_normals_difference_point_into_holes():
    square, holes, dom = pinnacle_domain()
    xb = dom.sample_boundary(2000, gen())
    nrm = dom.boundary_normal(xb)
    assert torch.allclose(nrm.norm(dim=1), torch.ones(2000, dtype=torch.float64), atol=1e-12)
    # outward from the domain: a small step along the normal leaves it
    assert not dom.contains(xb + 1e-3 * nrm).any()
    assert dom.contains(xb - 1e-3 * nrm).all()
    p = torch.tensor([[0.3 + 0.1, 0.3]], dtype=torch.float64)
    assert torch.allclose(dom.boundary_normal(p), torch.tensor([[-1.0, 0.0]], dtype=torch.float64))


# --------------------------------------------------------------------------- point set
def test_point_set():
    pts = np.arange(20, dtype=np.float64).reshape(10, 2)
    ps = PointSet(pts)
    assert ps.dim == 2 and len(ps) == 10
    assert torch.equal(ps.sample_interior(None), torch.as_tensor(pts))
    assert torch.equal(ps.sample_interior(10, gen()), torch.as_tensor(pts))
    s = ps.sample_interior(4, gen(5), dtype=torch.float32)
    assert s.shape == (4, 2) and s.dtype == torch.float32
    assert len({tuple(r) for r in s.tolist()}) == 4  # without replacement
    assert ps.contains(s).all()
    assert torch.equal(s, ps.sample_interior(4, gen(5), dtype=torch.float32))
    assert ps.contains(torch.tensor([[2.0, 3.0], [2.0, 3.5]])).tolist() == [True, False]
    with pytest.raises(ValueError):
        ps.sample_interior(11, gen())
    with pytest.raises(ValueError, match="NaN"):
        PointSet([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="NaN or Inf"):
        PointSet(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="2-D"):
        PointSet([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="empty"):
        PointSet(np.zeros((0, 2)))


# --------------------------------------------------------------------------- errors
def test_bad_input_errors():
    box = Box([0, 0], [1, 1])
    with pytest.raises(ValueError, match="empty point set: n must be positive"):
        box.sample_interior(0, gen())
    with pytest.raises(ValueError, match="empty point set: n must be positive"):
        box.sample_boundary(-3, gen())
    with pytest.raises(ValueError, match="empty point set"):
        TimeDomain(box, 0, 1).sample_initial(0, gen())
    with pytest.raises(TypeError, match="torch.Generator"):
        box.sample_interior(5, 42)
    with pytest.raises(ValueError, match="lower < upper"):
        Box([0, 1], [1, 1])
    with pytest.raises(ValueError, match="lower < upper"):
        uniform_grid([0.0], [0.0], 3)
    with pytest.raises(ValueError):
        Interval(2.0, 1.0)
    with pytest.raises(ValueError, match="dimension mismatch"):
        Box([0, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="dimension mismatch"):
        box.contains(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="shape"):
        box.contains(torch.zeros(3))
    with pytest.raises(ValueError, match="dimension mismatch"):
        Difference(box, [Ball([0, 0, 0], 1.0)])
    with pytest.raises(ValueError, match="radius"):
        Disk([0, 0], 0.0)
    with pytest.raises(ValueError):
        Disk([0, 0, 0], 1.0)
    with pytest.raises(ValueError, match="t0 < t1"):
        TimeDomain(box, 1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        Box([0, float("nan")], [1, 1])
    with pytest.raises(ValueError):
        box.grid(0)
    with pytest.raises(ValueError, match="floating"):
        box.sample_interior(3, gen(), dtype=torch.int64)


def test_contains_tolerance():
    box = Box([0, 0], [1, 1])
    x = torch.tensor([[1.0 + 1e-14, 0.5], [1.0 + 1e-9, 0.5], [-1e-14, 0.0]], dtype=torch.float64)
    assert box.contains(x).tolist() == [True, False, True]
    d = Disk([0, 0], 1.0)
    assert d.contains(torch.tensor([[1.0, 0.0], [1.0 + 1e-9, 0.0]], dtype=torch.float64)).tolist() == [True, False]
