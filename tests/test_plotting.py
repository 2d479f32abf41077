"""Tests for pinnlsr.plotting (fast; Agg only, no pyplot state)."""

import os

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.figure import Figure

from pinnlsr import plotting as P
from pinnlsr.plotting_fields import _FieldLayout


# ----------------------------------------------------------------- helpers

def _read(path):
    path = os.fspath(path)
    assert os.path.isfile(path)
    assert os.path.getsize(path) > 0
    img = mpimg.imread(path)
    assert img.ndim == 3
    return img[..., :3]


def _n_colors(img):
    q = np.round(img * 255).astype(np.int64).reshape(-1, 3)
    return np.unique(q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).size


def _not_all_white(img):
    return np.any(img < 0.98)


def _check_png(path, min_colors=50):
    img = _read(path)
    assert _not_all_white(img)
    assert _n_colors(img) > min_colors
    return img


class Annulus:
    """[-1,1]^2 minus a disk of radius r (numpy-based)."""

    def __init__(self, r=0.4):
        self.r = r

    def contains(self, pts):
        pts = np.asarray(pts)
        inside_box = np.all(np.abs(pts) <= 1.0 + 1e-12, axis=1)
        return inside_box & (np.hypot(pts[:, 0], pts[:, 1]) > self.r)


class TorchAnnulus(Annulus):
    """Same geometry but returns a torch BoolTensor."""

    def contains(self, pts):
        torch = pytest.importorskip("torch")
        p = torch.as_tensor(np.asarray(pts))
        return (p.abs() <= 1.0 + 1e-12).all(dim=1) & (p.norm(dim=1) > self.r)


def _annulus_points(n=2500, r=0.4, seed=0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-1, 1, size=(3 * n, 2))
    pts = pts[np.hypot(pts[:, 0], pts[:, 1]) > r][:n]
    # add boundary samples so the field reaches the edges/hole
    th = np.linspace(0, 2 * np.pi, 120, endpoint=False)
    circle = r * np.c_[np.cos(th), np.sin(th)]
    s = np.linspace(-1, 1, 40)
    box = np.r_[np.c_[s, -np.ones_like(s)], np.c_[s, np.ones_like(s)],
                np.c_[-np.ones_like(s), s], np.c_[np.ones_like(s), s]]
    return np.r_[pts, circle, box]


def _grid_points(n=101):
    g = np.linspace(-1, 1, n)
    X, Y = np.meshgrid(g, g)
    return np.c_[X.ravel(), Y.ravel()]


def _field(pts):
    return np.sin(np.pi * pts[:, 0]) * np.cos(np.pi * pts[:, 1]) + pts[:, 0]


def _pixel_at(fig, ax, xy):
    """RGB of the rendered canvas at data coordinates xy."""
    fig.canvas.draw()
    buf = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    px, py = ax.transData.transform(xy)
    h = buf.shape[0]
    return buf[int(round(h - py)), int(round(px))]


# ----------------------------------------------------------------- tests

def test_curves_1d(tmp_path):
    x = np.linspace(0, 1, 200)
    out = P.plot_curves_1d(x, {"a": np.sin(6 * x), "b": np.cos(6 * x)},
                           tmp_path / "sub" / "dir" / "curves.png", title="t")
    assert out == tmp_path / "sub" / "dir" / "curves.png"
    _check_png(out, min_colors=20)


def test_default_suffix_and_str_path(tmp_path):
    x = np.linspace(0, 1, 50)
    out = P.plot_curves_1d(x, {"a": x ** 2}, str(tmp_path / "noext"))
    assert out.suffix == ".png" and out.exists()


def test_torch_inputs(tmp_path):
    torch = pytest.importorskip("torch")
    x = torch.linspace(0, 1, 64, requires_grad=True)
    out = P.plot_curves_1d(x, {"u": x ** 2}, tmp_path / "t.png")
    _check_png(out, min_colors=20)


def test_grid_detection():
    layout = _FieldLayout(_grid_points(101))
    assert layout.is_grid
    assert layout.xs.size == 101 and layout.ys.size == 101
    # shuffled grid is still a grid
    pts = _grid_points(21)
    pts = pts[np.random.default_rng(1).permutation(len(pts))]
    assert _FieldLayout(pts).is_grid
    # scattered points are not
    rng = np.random.default_rng(0)
    assert not _FieldLayout(rng.uniform(-1, 1, (500, 2))).is_grid
    # grid with one point missing is not
    assert not _FieldLayout(_grid_points(11)[:-1]).is_grid


def test_field_2d_grid(tmp_path):
    pts = _grid_points(101)
    out = P.plot_field_2d(pts, _field(pts), tmp_path / "grid.png", title="grid")
    _check_png(out)


def test_field_2d_scattered(tmp_path):
    pts = np.random.default_rng(0).uniform(-1, 1, (1500, 2))
    out = P.plot_field_2d(pts, _field(pts), tmp_path / "scat.png")
    _check_png(out)


@pytest.mark.parametrize("domain_cls", [Annulus, TorchAnnulus])
def test_field_hole_is_blank_with_domain(domain_cls):
    pts = _annulus_points()
    with P.figure_style():
        fig = P.draw_field_2d(pts, _field(pts), domain=domain_cls(0.4)).figure
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert np.allclose(_pixel_at(fig, ax, (0.0, 0.0)), 1.0, atol=0.02)
    # a point inside the domain is coloured
    assert not np.allclose(_pixel_at(fig, ax, (0.7, 0.7)), 1.0, atol=0.05)


def test_field_hole_is_blank_without_domain():
    pts = _annulus_points()
    with P.figure_style():
        fig = P.draw_field_2d(pts, _field(pts)).figure
    ax = fig.axes[0]
    assert np.allclose(_pixel_at(fig, ax, (0.0, 0.0)), 1.0, atol=0.02)
    assert not np.allclose(_pixel_at(fig, ax, (0.7, 0.7)), 1.0, atol=0.05)


def test_field_hole_png(tmp_path):
    pts = _annulus_points()
    out = P.plot_field_2d(pts, _field(pts), tmp_path / "hole.png",
                          domain=Annulus(0.4))
    _check_png(out)


@pytest.mark.parametrize("kind", ["grid", "scattered"])
@pytest.mark.parametrize("log_error", [False, True])
def test_comparison_three_panels(tmp_path, kind, log_error):
    if kind == "grid":
        pts, domain = _grid_points(61), None
    else:
        pts, domain = _annulus_points(1500), Annulus(0.4)
    ref = _field(pts)
    pred = ref + 1e-2 * np.sin(3 * pts[:, 0] + 2 * pts[:, 1])
    out = P.plot_comparison(pts, pred, ref, tmp_path / f"cmp_{kind}.png",
                            domain=domain, suptitle="cmp", log_error=log_error)
    img = _check_png(out)
    w = img.shape[1]
    for k in range(3):
        third = img[:, k * w // 3:(k + 1) * w // 3]
        assert _not_all_white(third)
        assert _n_colors(third) > 30, k
    with P.figure_style():
        fig = P.comparison_figure(pts, pred, ref, domain=domain)
    assert len(fig.axes) == 3  # the colorbars are insets of their panels
    assert all(ax.collections[0].colorbar is not None for ax in fig.axes)


def test_comparison_1d(tmp_path):
    x = np.linspace(0, 1, 300)[:, None]
    ref = np.sin(2 * np.pi * x[:, 0])
    pred = ref + 1e-3 * np.cos(7 * x[:, 0])
    out = P.plot_comparison(x, pred, ref, tmp_path / "cmp1d.png")
    _check_png(out, min_colors=20)
    with P.figure_style():
        fig = P.comparison_figure(x, pred, ref)
    assert len(fig.axes) == 2
    assert fig.axes[1].get_yscale() == "log"


def test_spacetime(tmp_path):
    x = np.linspace(-1, 1, 128)
    t = np.linspace(0, 1, 50)
    U = np.exp(-t[:, None]) * np.sin(np.pi * x[None, :])  # (Nt, Nx)
    out = P.plot_spacetime(x, t, U, tmp_path / "st.png", title="u(x,t)")
    _check_png(out)
    with P.figure_style():
        fig = P.draw_spacetime(x, t, U).figure
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "t"
    with pytest.raises(ValueError, match="Nt, Nx"):
        P.plot_spacetime(x, t, U.T, tmp_path / "bad.png")
    out = P.plot_spacetime_comparison(x, t, U + 1e-3 * np.cos(3 * x)[None, :], U,
                                      tmp_path / "stc.png")
    img = _check_png(out)
    w = img.shape[1]
    for k in range(3):
        third = img[:, k * w // 3:(k + 1) * w // 3]
        assert _not_all_white(third) and _n_colors(third) > 30


def _hist(k, rate, with_res=True):
    it = list(range(0, 10 * k, 10))
    d = {"iteration": it, "seconds": [0.01 * i for i in it],
         "rel_l2": [float(np.exp(-rate * i / 10)) for i in range(k)]}
    if with_res:
        d["residual"] = [float(10 * np.exp(-rate * i / 10)) for i in range(k)]
    return d


def test_histories(tmp_path):
    hists = {"adam": _hist(60, 0.05), "lsr": _hist(20, 0.8)}
    out = P.plot_histories(hists, tmp_path / "h.png", title="conv")
    _check_png(out, min_colors=20)
    with P.figure_style():
        fig = P.histories_figure(hists)
    assert len(fig.axes) == 4
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
        assert ax.get_yscale() == "log"


def test_histories_fewer_panels(tmp_path):
    hists = {"adam": _hist(30, 0.1, with_res=False),
             "lsr": _hist(5, 1.0, with_res=False)}
    with P.figure_style():
        fig = P.histories_figure(hists)
    assert len(fig.axes) == 2
    assert all(len(ax.get_lines()) == 2 for ax in fig.axes)
    # only one method has residual: still the residual row, one line
    hists["adam"]["residual"] = [1.0 / (i + 1) for i in range(30)]
    with P.figure_style():
        fig = P.histories_figure(hists)
    assert len(fig.axes) == 4
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 1, 1]
    out = P.plot_histories(hists, tmp_path / "h2.png")
    _check_png(out, min_colors=20)


def test_singular_values(tmp_path):
    s = np.logspace(2, -12, 80)
    out = P.plot_singular_values(s, tmp_path / "sv.png", title="spectrum",
                                 sigma_reduced=s[:30] * 0.5)
    _check_png(out, min_colors=20)
    with P.figure_style():
        fig = P.draw_singular_values(s, sigma_reduced=s[:30]).figure
    assert len(fig.axes[0].get_lines()) == 2
    assert fig.axes[0].get_yscale() == "log"


def test_error_vs_rank(tmp_path):
    ranks = np.arange(10, 210, 10)
    errs = {"train": 1e-1 * np.exp(-ranks / 30.0), "test": 2e-1 * np.exp(-ranks / 40.0)}
    out = P.plot_error_vs_rank(ranks, errs, tmp_path / "r.png", chosen_rank=120)
    _check_png(out, min_colors=20)
    with P.figure_style():
        fig = P.draw_error_vs_rank(ranks, errs, chosen_rank=120).figure
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3  # two curves + vertical line
    assert np.allclose(lines[-1].get_xdata(), 120)


def test_error_per_instance(tmp_path):
    rng = np.random.default_rng(0)
    before = 10 ** rng.uniform(-3, -1, 100)
    after = before * 10 ** rng.uniform(-3, -1, 100)
    out = P.plot_error_per_instance(before, after, tmp_path / "inst.png")
    _check_png(out, min_colors=20)
    with P.figure_style():
        fig = P.draw_error_per_instance(before, after).figure
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


def test_atomic_write_keeps_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "keep.png"
    target.write_bytes(b"original contents")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    x = np.linspace(0, 1, 20)
    with pytest.raises(RuntimeError, match="disk full"):
        P.plot_curves_1d(x, {"a": x}, target)
    assert target.read_bytes() == b"original contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


def test_no_global_state_change(tmp_path):
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    pts = _grid_points(21)
    P.plot_field_2d(pts, _field(pts), tmp_path / "f.png")
    assert matplotlib.get_backend() == backend
    after = dict(matplotlib.rcParams)
    changed = {k for k in before if str(before[k]) != str(after[k])}
    assert not changed


def test_draw_safely_returns_the_figure_or_warns(capsys):
    from pinnlsr.plotting import draw_safely

    assert draw_safely(lambda: "fig.png") == "fig.png"

    def broken():
        raise RuntimeError("no display")

    assert draw_safely(broken) is None
    assert "figure not written: RuntimeError: no display" in capsys.readouterr().err


# ----------------------------------------------------------------- composing, labels, colorbars

def _heights(fig):
    """(panel height, colorbar height) in pixels for each panel with a colorbar, after drawing."""
    fig.canvas.draw()
    return [(ax.get_window_extent().height, im.colorbar.ax.get_window_extent().height)
            for ax in fig.axes for im in ax.collections if im.colorbar is not None]


def test_builders_draw_into_the_axes_they_are_given():
    fig = Figure(figsize=(10, 4), layout="constrained")
    matplotlib.backends.backend_agg.FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    pts = _grid_points(31)
    assert P.draw_field_2d(pts, _field(pts), title="u", ax=left) is left
    x = np.linspace(0, 1, 50)
    assert P.draw_curves_1d(x, {"a": x, "b": x ** 2}, ax=right) is right
    assert len(left.collections) == 1 and len(right.get_lines()) == 2
    assert fig.axes == [left, right] and left.collections[0].colorbar is not None
    # several panels into a grid the caller made: before and after rows of one figure
    grid = Figure(figsize=(15, 8), layout="constrained").subplots(2, 3)
    ref = _field(pts)
    for row, noise in zip(grid, (1e-2, 1e-5)):
        assert P.comparison_figure(pts, ref + noise, ref, axes=row, log_error=True) is grid[0, 0].figure
    assert all(len(ax.collections) == 1 for ax in grid.ravel())
    with pytest.raises(ValueError, match="3 Axes"):
        P.comparison_figure(pts, ref, ref, axes=grid[0, :2])


def test_axis_labels_name_the_inputs_and_space_keeps_its_aspect():
    x, t = np.linspace(-1, 1, 41), np.linspace(0, 1, 21)
    pts = np.array([[a, b] for a in x for b in t])
    u = np.sin(np.pi * pts[:, 0]) * np.exp(-pts[:, 1])
    fig = P.comparison_figure(pts, u + 1e-3, u, ax_labels=("x", "t"))
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes] == [("x", "t")] * 3
    assert all(ax.get_aspect() == "auto" for ax in fig.axes)  # time is not stretched to space units
    ax = P.draw_field_2d(pts, u, ax_labels=("x", "y"))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "y") and ax.get_aspect() == 1.0
    ax = P.comparison_figure(x, np.sin(x) + 1e-3, np.sin(x), ax_labels=("r",)).axes[1]
    assert ax.get_xlabel() == "r"


def test_run_folder_comparison_is_labelled_with_the_problem_inputs(tmp_path, monkeypatch):
    import json

    from pinnlsr.report import rebuild_report

    x, t = np.linspace(-1, 1, 16), np.linspace(0, 1, 8)
    pts = np.array([[a, b] for a in x for b in t])
    ref = (np.sin(np.pi * pts[:, 0]) * (1 - pts[:, 1]))[:, None]
    np.savez(tmp_path / "predictions.npz", points=pts, reference=ref, pred_lsr=ref + 1e-4)
    (tmp_path / "metrics.json").write_text(json.dumps({"problem": "burgers1d", "stages": [{"name": "lsr"}]}))
    (tmp_path / "config.json").write_text(json.dumps({"input_names": ["x", "t"], "output_names": ["u"]}))
    built = []
    original = P.comparison_figure
    monkeypatch.setattr(P, "comparison_figure", lambda *a, **k: built.append(original(*a, **k)) or built[-1])
    rebuild_report(tmp_path)
    assert (tmp_path / "comparison.png").is_file() and len(built) == 1
    assert {(ax.get_xlabel(), ax.get_ylabel()) for ax in built[0].axes} == {("x", "t")}


@pytest.mark.parametrize("shape", [(2.0, 1.0), (1.0, 3.0)])
def test_colorbars_are_as_tall_as_their_panels(shape):
    g = np.linspace(0, 1, 41)
    pts = np.array([[shape[0] * a, shape[1] * b] for a in g for b in g])  # a wide or a tall domain
    u = _field(pts)
    figures = [P.draw_field_2d(pts, u).figure, P.comparison_figure(pts, u + 1e-3, u),
               P.draw_spacetime(g, g, np.outer(g, g)).figure]
    fig = Figure(figsize=(9, 3), layout="constrained")
    matplotlib.backends.backend_agg.FigureCanvasAgg(fig)
    for ax in fig.subplots(1, 2):
        P.draw_field_2d(pts, u, ax=ax)
    for f in figures + [fig]:
        heights = _heights(f)
        assert heights, "no colorbar drawn"
        for panel, bar in heights:
            assert bar == pytest.approx(panel, rel=0.03)
