import importlib.util
import json
import math

import numpy as np
import pytest
from matplotlib.image import imread

from pinnlsr.cli import main as cli_main
from pinnlsr.report import read_history_csv, rebuild_report
from pinnlsr.runner import main
from problems.poisson2d import Poisson2D
from scripts_helper import load_script


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "poisson"
    code = main(Poisson2D, ["--adam-steps", "60", "--points", "pde=200", "bc=60", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def test_run_folder_is_complete(run_dir):
    for name in ("config.json", "metrics.json", "history.csv", "predictions.npz", "model.pt",
                 "comparison.png", "history.png", "summary.md"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["adam", "lsr"]
    hist = read_history_csv(run_dir / "history.csv")
    assert set(hist) == {"adam", "lsr"} and len(hist["adam"]["iteration"]) >= 2
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as data:
        assert data["points"].shape == (101 * 101, 2) and data["pred_lsr"].shape == (101 * 101, 1)
        err = np.linalg.norm(data["pred_lsr"] - data["reference"]) / np.linalg.norm(data["reference"])
    assert err == pytest.approx(metrics["stages"][-1]["rel_l2"], rel=1e-9)
    img = imread(run_dir / "comparison.png")
    assert img.shape[0] > 100 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50
    summary = (run_dir / "summary.md").read_text()
    assert "| adam |" in summary and "| lsr |" in summary and "comparison.png" in summary


def test_report_rebuilds_figures(run_dir):
    (run_dir / "comparison.png").unlink()
    (run_dir / "summary.md").unlink()
    assert cli_main(["report", str(run_dir)]) == 0
    assert (run_dir / "comparison.png").stat().st_size > 10_000
    assert "Error reduction" in (run_dir / "summary.md").read_text()


def test_incomplete_run_folder_is_a_clear_error_and_nothing_is_lost(tmp_path, run_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    (broken / "summary.md").write_text("old summary")
    with pytest.raises(FileNotFoundError, match="missing metrics.json"):
        rebuild_report(broken)
    assert (broken / "summary.md").read_text() == "old summary"
    assert cli_main(["report", str(broken)]) == 2
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2


def test_cli_list_and_run_help(capsys):
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "poisson2d" in out and "2π²" in out
    assert cli_main(["run", "no_such_problem"]) == 2
    with pytest.raises(SystemExit) as exc:
        cli_main(["run", "poisson2d", "--help"])
    assert exc.value.code == 0
    assert "--rank" in capsys.readouterr().out


def test_run_folder_has_fields_for_paraview(run_dir):
    from pinnlsr.meshfiles import read_mesh_fields

    points, fields = read_mesh_fields(run_dir / "solution.vtu")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as data:
        assert np.array_equal(points[:, :2], data["points"])
        assert np.array_equal(fields["u_lsr"], data["pred_lsr"][:, 0])
        assert np.array_equal(fields["u_reference"], data["reference"][:, 0])
    assert np.allclose(fields["u_lsr_abs_error"], np.abs(fields["u_lsr"] - fields["u_reference"]))


def test_space_time_fields_go_to_an_xdmf_time_series(tmp_path):
    from pinnlsr.meshfiles import read_xdmf_timeseries
    from pinnlsr.report import write_fields

    x, t = np.linspace(-1, 1, 7), np.linspace(0, 1, 4)
    pts = np.array([[a, b] for a in x for b in t])  # x slowest, like the reference loaders
    ref = np.sin(pts[:, :1]) * np.exp(-pts[:, 1:])
    path = write_fields(tmp_path, pts, ref, {"lsr": ref + 1e-3}, ("x", "t"), ("u",))
    assert path.name == "solution.xdmf"
    space, times, fields = read_xdmf_timeseries(path)
    assert np.allclose(times, t) and space.shape[0] == 7
    assert np.allclose(fields["u_lsr_abs_error"], 1e-3)


def test_cli_compare_quick(tmp_path):
    out = tmp_path / "cmp"
    assert cli_main(["compare", "poisson2d", "--quick", "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    methods = result["methods"]
    soap = importlib.util.find_spec("pytorch_optimizer") is not None
    assert {"adam", "adam+lbfgs", "lsr", "ilsr", "adam_long", "lbfgs_long", "bfgs_long"} <= set(methods)
    assert ("soap" in methods) == soap and set(result["skipped"]) == (set() if soap else {"soap"})
    # the equal-cost baselines ran at least as long as ILSR (wall time from the same start)
    for m in ("adam_long", "lbfgs_long") + (("soap",) if soap else ()):
        assert methods[m]["seconds"] >= methods["ilsr"]["seconds"], m
    for m in ("adam", "adam_long", "lbfgs_long", "bfgs_long") + (("soap",) if soap else ()):
        secs = [h["seconds"] for h in methods[m]["history"]]
        assert secs == sorted(secs) and all(h["rel_l2"] > 0 for h in methods[m]["history"]), m
        assert methods[m]["rel_l2"] == methods[m]["history"][-1]["rel_l2"]
    # the history follows the training (a model probed at its current parameters, not its start)
    assert len({h["residual"] for h in methods["adam"]["history"]}) > 3
    # SOAP starts from the initial network, BFGS from the Adam + L-BFGS one
    if soap:
        assert methods["soap"]["history"][0] == methods["adam"]["history"][0]
    assert methods["bfgs_long"]["history"][0]["iteration"] > methods["adam+lbfgs"]["history"][-1]["iteration"]
    best = min(methods[m]["rel_l2"] for m in methods if m not in ("lsr", "ilsr"))
    assert result["ratio_baseline_over_ilsr"] == pytest.approx(best / methods["ilsr"]["rel_l2"], rel=1e-12)
    # on this linear problem, one-shot LSR beats Adam from the same start
    assert result["methods"]["lsr"]["rel_l2"] < result["methods"]["adam"]["rel_l2"]
    img = imread(out / "compare.png")
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20
    assert "| poisson2d |" in (out / "compare.md").read_text()


def test_compare_records_the_baselines_it_skips(monkeypatch):
    """Without SOAP's package and with a network over the BFGS size limit, compare_methods runs the
    other methods and names the two it skipped, with the reason, in its result and its table. The
    problem's error regions get their own errors for every method, LSR and ILSR included, and their
    own best-baseline ratio."""
    import sys
    from dataclasses import replace

    import pinnlsr.compare as compare

    monkeypatch.setitem(sys.modules, "pytorch_optimizer", None)  # import fails as if not installed
    monkeypatch.setattr(compare, "BFGS_MAX_PARAMS", 10)
    monkeypatch.setattr(Poisson2D, "error_regions", lambda self, x: {"left": x[:, 0] < x[:, 0].median()},
                        raising=False)
    settings = replace(compare.QUICK, adam_steps=10, lbfgs_steps=1, ilsr_gn_iters=1, align_iterations=1, rank=20)
    result = compare.compare_methods(Poisson2D(), settings, seed=0, point_fraction=0.01)
    assert {"adam", "adam+lbfgs", "lsr", "ilsr", "adam_long", "lbfgs_long"} == set(result["methods"])
    assert set(result["skipped"]) == {"soap", "bfgs_long"}
    assert "pip install pytorch-optimizer" in result["skipped"]["soap"]
    assert f"{result['n_params']} parameters, more than BFGS_MAX_PARAMS = 10" in result["skipped"]["bfgs_long"]
    text = compare.table([result])
    assert "| bfgs_long | skipped: " in text and "| soap | skipped: " in text
    methods = result["methods"]
    assert all(0 < m["rel_l2_left"] < math.inf for m in methods.values())
    best_left = min(methods[m]["rel_l2_left"] for m in compare.BASELINES if m in methods)
    assert result["ratio_by_region"] == {"left": pytest.approx(best_left / methods["ilsr"]["rel_l2_left"], rel=1e-12)}
    assert "| poisson2d, left | " in text


def test_error_by_time_script(tmp_path, capsys):
    mod = load_script("error_by_time")
    x, t = np.meshgrid(np.linspace(-1, 1, 5), np.array([0.0, 0.5, 1.0]), indexing="ij")
    points = np.stack([x.ravel(), t.ravel()], 1)
    reference = (1 + points[:, :1] ** 2)
    pred = reference * (1 + points[:, 1:])  # relative error = t exactly
    assert mod.error_by_time(points, reference, pred, [0.0, 0.5, 0.9]) == pytest.approx([0.0, 0.5, 1.0])
    np.savez(tmp_path / "predictions.npz", points=points, reference=reference, pred_net=pred)
    assert mod.main([str(tmp_path), "--times", "0.5"]) == 0
    assert "5.000e-01" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not found"):
        mod.main([str(tmp_path / "missing")])


def test_compare_methods_marches_over_time_windows():
    """compare_methods with time_windows runs ILSR window by window, with cumulative seconds."""
    from dataclasses import replace

    from pinnlsr.compare import QUICK, QUICK_POINT_FRACTION, compare_methods
    from problems.allen_cahn1d import AllenCahn1D

    settings = replace(QUICK, rank=40, ilsr_outer=1, ilsr_gn_iters=1, align_iterations=2, adam_steps=20,
                       lbfgs_steps=2, time_windows=(0.5, 1.0))
    predictions = {}
    result = compare_methods(AllenCahn1D(widths=(8, 8)), settings, seed=0, predictions=predictions,
                             point_fraction=QUICK_POINT_FRACTION)
    assert result["config"]["ilsr_outer"] == 1 and result["config"]["device"] == "cpu"
    ilsr = result["methods"]["ilsr"]
    # each method's final prediction at the reference points comes back, and gives its error
    ref = predictions.pop("reference")
    assert predictions.pop("points").shape == (ref.shape[0], 2)
    assert set(predictions) == set(result["methods"])
    for name, pred in predictions.items():
        rel = np.linalg.norm(pred - ref) / np.linalg.norm(ref)
        assert rel == pytest.approx(result["methods"][name]["rel_l2"], rel=1e-8), name
    windows = [h["window"] for h in ilsr["history"]]
    assert windows == sorted(windows) and set(windows) == {0.5, 1.0}
    secs = [h["seconds"] for h in ilsr["history"]]
    assert secs == sorted(secs) and secs[-1] <= ilsr["seconds"] + 1e-9
    assert result["methods"]["lbfgs_long"]["seconds"] >= ilsr["seconds"]
    # the stage reports the best state of the last window, whose predictor covers [0, 1]
    # (the predictor of the best iteration, or the network aligned to it when that validated better)
    key = "rel_l2" if ilsr["best_state"] == "predictor" else "network_rel_l2"
    assert ilsr["rel_l2"] == pytest.approx(ilsr["history"][ilsr["best_iteration"]][key])


def test_error_by_region_script(tmp_path, capsys):
    mod = load_script("error_by_region")
    x, y = np.meshgrid(np.linspace(0, 1, 11), np.linspace(0, 1, 11), indexing="ij")
    points = np.stack([x.ravel(), y.ravel()], 1)
    reference = np.ones((points.shape[0], 2))
    pred = reference.copy()
    corner = (points[:, 0] >= 0.9) & (points[:, 1] >= 0.9)  # 4 points
    pred[corner, 1] += 1.0  # output 1 wrong only in the corner box
    pred[:, 0] += 0.01  # output 0 off by 1 % everywhere
    rows = mod.error_by_region(points, reference, pred, [((0.9, 0.9), (1.0, 1.0))])
    assert rows[0]["rel_l2"] == pytest.approx(0.01) and rows[0]["rel_l2_outside"] == pytest.approx(0.01)
    assert rows[0]["share_in_boxes"] == pytest.approx(4 / 121)
    assert rows[1]["share_in_boxes"] == pytest.approx(1.0) and rows[1]["rel_l2_outside"] == 0.0
    assert rows[2]["rel_l2"] == pytest.approx(np.sqrt(121 * 1e-4 + 4) / np.sqrt(242))
    np.savez(tmp_path / "predictions.npz", points=points, reference=reference, pred_ilsr=pred)
    assert mod.main([str(tmp_path), "--box", "0.9", "0.9", "1", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 of 121" in out and "100.0%" in out
    # radial profile towards a corner: means over octave bands of distance
    values = np.log(np.hypot(points[:, :1], points[:, 1:]) + 1e-3)  # log-singular at the origin
    (n1, m1), (n2, m2), (n0, m0) = mod.radial_profile(points, values, (0.0, 0.0), [0.09, 0.18, 0.01])
    assert (n1, n2, n0) == (2, 5, 0)  # distances 0.1, 0.1 | 0.141, 0.2, 0.2, 0.224, 0.224 | none
    assert m1[0] == pytest.approx(np.log(0.101))
    assert m2[0] == pytest.approx(np.mean(np.log(np.array([0.02, 0.04, 0.04, 0.05, 0.05]) ** 0.5 + 1e-3)))
    assert np.isnan(m0[0])
    assert mod.main([str(tmp_path), "--around", "1", "1", "--radii", "0.1"]) == 0
    assert "(1.0, 1.0)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--box, --around, --free-constant or --against"):
        mod.main([str(tmp_path)])
    with pytest.raises(SystemExit, match="4 numbers"):
        mod.main([str(tmp_path), "--box", "0.9", "1"])
    # a constant offset in an output defined up to a constant is no error with --free-constant
    offset = reference.copy()
    offset[:, 1] += 0.5
    offset[corner, 1] += 1.0  # the offset is fitted outside the box only
    rows = mod.error_by_region(points, reference, offset, [((0.9, 0.9), (1.0, 1.0))], free_constant=[1])
    assert rows[1]["rel_l2_outside"] == pytest.approx(0.0, abs=1e-15)
    assert rows[1]["share_in_boxes"] == pytest.approx(1.0)
    assert mod.error_by_region(points, reference, offset, [((0.9, 0.9), (1.0, 1.0))])[1]["rel_l2_outside"] == pytest.approx(0.5)
    assert mod.main([str(tmp_path), "--free-constant", "1"]) == 0  # no box: the whole domain
    assert "0 of 121" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="output indices 0..1"):
        mod.main([str(tmp_path), "--box", "0.9", "0.9", "1", "1", "--free-constant", "2"])
    # --against: the distance between two runs' predictions of one stage
    other = tmp_path / "other"
    other.mkdir()
    np.savez(other / "predictions.npz", points=points, reference=reference, pred_ilsr=pred + 0.02)
    assert mod.main([str(tmp_path), "--stage", "ilsr", "--against", str(other), "--box", "0.9", "0.9", "1", "1"]) == 0
    out = capsys.readouterr().out
    assert "not the reference" in out and "1.942e-02" in out  # output 0: 0.02 / 1.03 everywhere
    with pytest.raises(SystemExit, match="needs a --stage"):
        mod.main([str(tmp_path), "--against", str(other), "--box", "0.9", "0.9", "1", "1"])
    np.savez(other / "predictions.npz", points=points[::-1], reference=reference, pred_ilsr=pred)
    with pytest.raises(SystemExit, match="other points"):
        mod.main([str(tmp_path), "--stage", "ilsr", "--against", str(other), "--box", "0.9", "0.9", "1", "1"])
