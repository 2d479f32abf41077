"""Reruns into an output folder: a stale checkpoint is never continued silently, --overwrite
leaves nothing stale, temporary files of killed writes go away, Ctrl-C exits 130 without a
traceback, and the same seed gives the same metrics.json."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pinnlsr import runner
from pinnlsr.ilsr import iterative_lsr
from problems.burgers1d import Burgers1D
from problems.poisson2d import Poisson2D

ROOT = Path(__file__).resolve().parents[1]
ILSR_RUN = ["--adam-steps", "5", "--points", "pde=30", "bc=12", "--rank", "8", "--align-iterations", "2",
            "--quiet", "--no-plot"]


def _without_times(obj):
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items() if "seconds" not in k and "peak_memory" not in k}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def _metrics(folder: Path) -> dict:
    return _without_times(json.loads((folder / "metrics.json").read_text()))


def test_rerun_refuses_a_stale_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    cut, full = tmp_path / "cut", tmp_path / "full"
    assert runner.main(Poisson2D, ILSR_RUN + ["--ilsr-outer", "1", "--out", str(cut)]) == 0
    before = (cut / "metrics.json").read_bytes()
    capsys.readouterr()
    # another seed into the same folder: refused, nothing changed
    assert runner.main(Poisson2D, ILSR_RUN + ["--ilsr-outer", "2", "--seed", "1", "--out", str(cut)]) == 2
    assert "holds an earlier run" in capsys.readouterr().err
    assert runner.main(Poisson2D, ILSR_RUN + ["--ilsr-outer", "2", "--seed", "1", "--resume", "--out", str(cut)]) == 2
    assert "seed: 0 then, 1 now" in capsys.readouterr().err
    assert (cut / "metrics.json").read_bytes() == before
    # the same settings resume (a killed checkpoint write left a temporary file: removed)
    (cut / ".ilsr.pt.k1ll3d.tmp").write_bytes(b"partial")
    assert runner.main(Poisson2D, ILSR_RUN + ["--ilsr-outer", "2", "--resume", "--out", str(cut)]) == 0
    assert not list(cut.glob(".*.tmp"))
    assert runner.main(Poisson2D, ILSR_RUN + ["--ilsr-outer", "2", "--out", str(full)]) == 0
    resumed = _metrics(cut)
    assert [h["iteration"] for h in resumed["stages"][-1]["history"]] == [0, 1, 2]
    assert resumed == _metrics(full)


def test_same_seed_gives_the_same_metrics(tmp_path):
    argv = ["--adam-steps", "10", "--points", "pde=30", "bc=12", "--quiet", "--no-plot", "--gn-iters", "1",
            "--rank", "20"]
    assert runner.main(Poisson2D, argv + ["--out", str(tmp_path / "a")]) == 0
    assert runner.main(Poisson2D, argv + ["--out", str(tmp_path / "b")]) == 0
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [s["name"] for s in a["stages"]] == ["adam", "lsr", "gauss_newton"]
    assert a["stages"][2]["first_step"] == "lsr"  # Gauss–Newton started from the LSR's factorization
    assert a == b


def test_overwrite_removes_the_earlier_run_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = ["metrics.json", "comparison.png", "solution.vtu", "ilsr.pt", "ilsr_window0.pt", ".model.pt.x1.tmp"]
    for name in stale + ["notes.txt"]:
        (out / name).write_text("old")
    argv = ["--adam-steps", "0", "--points", "pde=20", "bc=8", "--quiet", "--no-plot", "--out", str(out)]
    assert runner.main(Poisson2D, argv) == 2
    assert all((out / name).read_text() == "old" for name in stale)
    assert runner.main(Poisson2D, argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "old"
    assert not any((out / name).exists() for name in stale[1:])
    assert json.loads((out / "metrics.json").read_text())["problem"] == "poisson2d"


SETTINGS = dict(gn_iterations=2, gn_patience=1, align_iterations=2, dtau=None, compute_errors=False, seed=3)


def test_checkpoint_refuses_other_settings_and_cleans_up_temporary_files(tmp_path):
    problem = Burgers1D(n_interior=48, n_boundary=12, n_initial=12, widths=(6, 6))
    model = problem.default_model(torch.Generator().manual_seed(0))
    path = tmp_path / "ilsr.pt"
    leftover = tmp_path / ".ilsr.pt.abcd1234.tmp"
    leftover.write_bytes(b"partial")
    first = iterative_lsr(problem, model, outer_iterations=1, checkpoint=path, **SETTINGS)
    assert not leftover.exists()
    other_net = problem.default_model(torch.Generator().manual_seed(1))
    for kwargs, fragment in [({"model": model, **SETTINGS, "seed": 4}, "seed: checkpoint 3, now 4"),
                             ({"model": model, **SETTINGS, "rank": 5}, "rank: checkpoint None, now 5"),
                             ({"model": other_net, **SETTINGS}, "start_network")]:
        with pytest.raises(ValueError, match="other settings") as info:
            iterative_lsr(problem, outer_iterations=2, checkpoint=path, **kwargs)
        assert fragment in str(info.value)
    fresh = iterative_lsr(problem, other_net, outer_iterations=1, checkpoint=path, resume=False, **SETTINGS)
    assert fresh.history[0]["residual"] != first.history[0]["residual"]
    assert iterative_lsr(problem, other_net, outer_iterations=1, checkpoint=path, **SETTINGS).history == fresh.history


def test_missing_reference_data_is_an_error_before_pretraining(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PINNLSR_DATA", str(tmp_path))
    monkeypatch.setattr(runner, "train_adam", lambda *a, **k: pytest.fail("pretraining started"))
    assert runner.main(Burgers1D, ["--points", "pde=20", "bc=4", "ic=4", "--quiet", "--ilsr-outer", "0"]) == 2
    assert "not found" in capsys.readouterr().err


def test_ctrl_c_exits_130_without_traceback(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "problems.poisson2d", "--adam-steps", "1000000", "--points",
                             "pde=30", "bc=12", "--quiet", "--no-plot", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as from a terminal: a suite started in the background (`cmd &` in a script)
                            # hands its children SIGINT ignored, and Python then installs no handler
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the pretraining
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status")
        masks = [ln for ln in status.read_text().splitlines() if ln.startswith("Sig")] if status.exists() else []
        proc.kill()
        proc.communicate()
        pytest.fail(f"Ctrl-C was not honoured within 60 s; the run's signal masks: {masks}")
    assert proc.returncode == 130, err
    assert err.strip() == "interrupted"
    assert not list(out.glob(".*.tmp"))


def test_torch_finishes_its_lazy_imports_before_a_run_starts():
    """torch imports torch._dynamo the first time a transform runs a Python decomposition; a Ctrl-C
    inside that import was reported ("interrupted") but the process then died by SIGINT (exit -2
    instead of 130, for interrupts early in a run). run_guarded imports it first."""
    code = ("import sys\nfrom pinnlsr.pipeline import run_guarded\n"
            "before = 'torch._dynamo' in sys.modules\n"
            "print(before, run_guarded(lambda: 'torch._dynamo' in sys.modules)[1])")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
