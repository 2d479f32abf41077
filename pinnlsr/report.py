"""Run folders: what a run leaves behind, and rebuilding figures and summary from it.

A run folder (``--out DIR``) holds

- ``config.json``: the options of the run;
- ``metrics.json``: the run output contract of docs/run_output.md (stages in order, rel_l2, residual, ...);
- ``history.csv``: one row per logged iteration of each method (method, iteration, seconds, loss,
  residual, rel_l2; empty cells where a quantity was not measured);
- ``predictions.npz``: the reference points (N, d), reference values (N, k) and each stage's
  prediction there (arrays only, loaded with ``allow_pickle=False``);
- ``model.pt``: the pretrained network (a state_dict, reusable with ``--checkpoint``);
- figures (``comparison.png``, ``history.png``), ``summary.md``, and ``solution.vtu`` (or
  ``solution.xdmf`` + ``.h5`` for space-time problems) with reference, predictions and errors for
  ParaView.

:func:`rebuild_report` recreates the figures and the summary from the files alone. Every file is
written to a temporary name and renamed, so an interrupted write never leaves a broken file or
destroys an older one.
"""
from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .io import atomic_write_json, atomic_write_text, write_atomically
from .records import HistoryEntry, StageRecord

HISTORY_COLUMNS = ("method", "iteration", "seconds", "loss", "residual", "rel_l2")
REQUIRED = ("metrics.json", "config.json")


def history_rows(method: str, entries: Iterable[HistoryEntry]) -> list[dict]:
    """Rows for history.csv (HISTORY_COLUMNS) from a method's history entries; where only the
    loss was logged, the residual is its square root."""
    rows = []
    for e in entries:
        residual = e.residual
        if residual is None and e.loss is not None:
            residual = math.sqrt(max(float(e.loss), 0.0))
        rows.append({"method": method, "iteration": e.iteration, "seconds": e.seconds, "loss": e.loss,
                     "residual": residual, "rel_l2": e.rel_l2})
    return rows


def write_history_csv(path: Path, rows: list[dict]) -> Path:
    """history.csv from rows (dicts with HISTORY_COLUMNS keys), atomically."""
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in HISTORY_COLUMNS})
    return atomic_write_text(path, buf.getvalue())


def read_history_csv(path: Path) -> dict[str, dict[str, list]]:
    """{method: {"iteration": [...], "seconds": [...], "residual": [...], "rel_l2": [...]}}."""
    out: dict[str, dict[str, list]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "method" not in reader.fieldnames:
            raise ValueError(f"{path}: not a pinnlsr history.csv (no 'method' column)")
        for row in reader:
            hist = out.setdefault(row["method"], {k: [] for k in HISTORY_COLUMNS[1:]})
            for key in HISTORY_COLUMNS[1:]:
                cell = row.get(key, "")
                hist[key].append(float(cell) if cell not in ("", None) else None)
    for hist in out.values():  # drop quantities never measured for a method
        for key in [k for k, v in hist.items() if all(x is None for x in v)]:
            del hist[key]
    return out


def write_predictions(path: Path, points: np.ndarray, reference: np.ndarray, predictions: dict[str, np.ndarray]) -> Path:
    """predictions.npz: points (N, d), reference (N, k) and ``pred_<stage>`` (N, k), atomically."""
    arrays = {f"pred_{name}": np.asarray(v) for name, v in predictions.items()}
    return write_atomically(path, lambda tmp: np.savez(tmp, points=points, reference=reference, **arrays),
                            suffix=".npz")


def read_predictions(run_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(points (N, d), reference (N, k), {stage: prediction (N, k)}) from a run folder's
    predictions.npz (read without pickle). FileNotFoundError names the missing file."""
    path = Path(run_dir) / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the problem with --out {run_dir} first")
    with np.load(path, allow_pickle=False) as data:
        return data["points"], data["reference"], {k[len("pred_"):]: data[k] for k in data.files
                                                   if k.startswith("pred_")}


def write_fields(out: Path, points: np.ndarray, reference: np.ndarray, predictions: dict[str, np.ndarray],
                 input_names: tuple[str, ...], output_names: tuple[str, ...]) -> Path:
    """Fields for ParaView: ``solution.vtu`` (reference, each stage's prediction and |error| per
    output at the reference points) or, for a space-time problem (last input named "t") whose
    points form a space × time grid, an XDMF time series ``solution.xdmf`` + ``solution.h5``."""
    from .meshfiles import write_vtu, write_xdmf_timeseries

    fields: dict[str, np.ndarray] = {}
    for j, name in enumerate(output_names):
        fields[f"{name}_reference"] = reference[:, j]
        for stage, pred in predictions.items():
            fields[f"{name}_{stage}"] = pred[:, j]
            fields[f"{name}_{stage}_abs_error"] = np.abs(pred[:, j] - reference[:, j])
    if input_names and input_names[-1] == "t" and points.shape[1] >= 2:
        times = np.unique(points[:, -1])
        order = np.lexsort((points[:, 0], points[:, -1]))  # time slowest
        n_space = points.shape[0] // len(times)
        if n_space * len(times) == points.shape[0]:
            space = points[order][:, :-1].reshape(len(times), n_space, -1)
            if np.allclose(space, space[:1]):
                series = {k: v[order].reshape(len(times), n_space) for k, v in fields.items()}
                return write_xdmf_timeseries(out / "solution.xdmf", space[0], times, series)
    return write_vtu(out / "solution.vtu", points, fields)


def summary_markdown(metrics: dict, config: dict, figures: list[str]) -> str:
    """summary.md: the stage table, the figures and the options of the run."""
    fmt = lambda v: "" if v is None else (f"{v:.3e}" if isinstance(v, float) else str(v))
    lines = [f"# {metrics.get('problem', 'run')}", "",
             f"seed {metrics.get('seed')}, {metrics.get('dtype')} on {metrics.get('device')}, "
             f"{metrics.get('n_params')} parameters", "",
             "| stage | rel. L2 | max error | residual | seconds | rank |", "|---|---:|---:|---:|---:|---:|"]
    stages = [StageRecord.from_json(row) for row in metrics.get("stages", [])]
    for s in stages:
        lines.append(f"| {s.name} | {fmt(s.rel_l2)} | {fmt(s.max_abs_err)} | {fmt(s.residual)} | {fmt(s.seconds)} | "
                     f"{fmt(s.extras.get('rank'))} |")
    if len(stages) >= 2 and stages[0].rel_l2 and stages[-1].rel_l2:
        lines += ["", f"Error reduction {stages[0].name} → {stages[-1].name}: "
                      f"{stages[0].rel_l2 / stages[-1].rel_l2:.2e}×"]
    for fig in figures:
        lines += ["", f"![{fig}]({fig})"]
    lines += ["", "## Options", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from exc


def rebuild_report(run_dir: str | os.PathLike) -> list[Path]:
    """Recreate the figures and summary.md of ``run_dir`` from its files; returns the paths written.

    Raises FileNotFoundError naming what is missing when the folder is incomplete; nothing in the
    folder is changed then."""
    from . import plotting

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    missing = [name for name in REQUIRED if not (run / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"run folder {str(run)!r} is incomplete: missing {', '.join(missing)}; rerun the problem with --out"
        )
    metrics = _load_json(run / "metrics.json")
    config = _load_json(run / "config.json")
    if not isinstance(metrics.get("stages"), list):
        raise ValueError(f"{run / 'metrics.json'} has no 'stages' list: not a pinnlsr run")
    written, figures = [], []
    if (run / "predictions.npz").is_file():
        points, reference, preds = read_predictions(run)
        names = tuple(config.get("input_names") or [f"x{i}" for i in range(points.shape[1])])
        if preds and points.shape[1] <= 2:
            last = list(preds)[-1]
            written.append(plotting.plot_comparison(
                points, preds[last][:, 0], reference[:, 0], run / "comparison.png",
                titles=(f"{last} prediction", "reference", "|error|"), suptitle=metrics.get("problem"),
                log_error=True, ax_labels=names))
            figures.append("comparison.png")
        if preds:
            outputs = tuple(config.get("output_names") or [f"u{j}" for j in range(reference.shape[1])])
            written.append(write_fields(run, points, reference, preds, names, outputs))
    if (run / "history.csv").is_file():
        histories = read_history_csv(run / "history.csv")
        if histories:
            written.append(plotting.plot_histories(histories, run / "history.png", title=metrics.get("problem")))
            figures.append("history.png")
    written.append(atomic_write_text(run / "summary.md", summary_markdown(metrics, config, figures)))
    return written


__all__ = ["history_rows", "write_history_csv", "read_history_csv", "write_predictions",
           "summary_markdown", "rebuild_report", "atomic_write_json"]
