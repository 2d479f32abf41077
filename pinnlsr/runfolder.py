"""The output folder of a run (``--out DIR``): checked before any computing, never mixed with an
earlier run's files.

A fresh run into a folder that holds another run's files refuses unless ``--overwrite``, which
removes those files first (only the files a run writes, see :data:`RUN_FILES`; other files stay).
``--resume`` keeps the Iterative LSR checkpoints (``ilsr.pt``, ``ilsr_window*.pt``) and removes
the rest, which the resumed run writes again. Temporary files left by an interrupted atomic
write (``.NAME.XXXX.tmp``) are removed in both cases.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

#: the files and patterns a run writes into its folder
RUN_FILES = ("config.json", "metrics.json", "model.pt", "history.csv", "predictions.npz", "summary.md",
             "comparison.png", "history.png", "error_per_instance.png", "instance_*.png", "rank_scan*.png",
             "rank.png", "solution.vtu", "solution.xdmf", "solution.h5", "compare.json", "compare.md",
             "compare.png")
#: the checkpoints an interrupted run resumes from
CHECKPOINTS = ("ilsr.pt", "ilsr_window*.pt")
#: temporary files and folders of atomic writes (pinnlsr.io, pinnlsr.meshfiles): ".NAME.XXXXXXXX.tmp", ".NAME.XXXX.tmp.vtu", ...
TEMPORARY = (".*.tmp", ".*.tmp.vtu", ".predictions.npz.*.npz")


def out_path(text: str) -> Path:
    """argparse type of ``--out``: an empty path (an unset shell variable) is an error, not '.'."""
    if not text.strip():
        raise argparse.ArgumentTypeError("--out is empty (an unset shell variable?); give a folder, "
                                         "e.g. --out runs/NAME")
    return Path(text)


def add_options(parser: argparse.ArgumentParser, resume: bool = False, help_out: str = "output folder") -> None:
    """``--out DIR`` and ``--overwrite`` (and ``--resume`` for runs with checkpoints)."""
    parser.add_argument("--out", type=out_path, default=None, help=help_out)
    parser.add_argument("--overwrite", "--restart", action="store_true",
                        help="remove the files of an earlier run in --out first (and its checkpoints: start over)")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the interrupted run in --out from its ILSR checkpoints (same settings)")


def _matches(folder: Path, patterns) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def check_writable(out: Path) -> None:
    """Create ``out`` (with parents) and make sure a file can be written there; a ValueError
    names the problem otherwise."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r} is not writable ({exc.strerror or exc}); choose another folder") from None


def existing_run(out: Path) -> tuple[list[Path], list[Path]]:
    """(output files, checkpoints) of an earlier run in ``out``."""
    if not out.is_dir():
        return [], []
    return _matches(out, RUN_FILES), _matches(out, CHECKPOINTS)


def check(out: Path | None, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an output folder that cannot be used as asked: not writable, holding another run
    without ``overwrite``/``resume``, or nothing to resume. Changes nothing but creating ``out``."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out, --overwrite starts it over: give one of them")
    if out is None:
        if resume or overwrite:
            raise ValueError(f"--{'resume' if resume else 'overwrite'} applies to an output folder: give --out DIR")
        return
    check_writable(out)
    files, checkpoints = existing_run(out)
    if resume and not checkpoints:
        raise ValueError(f"--resume: --out {str(out)!r} holds no checkpoint (ilsr.pt or ilsr_window*.pt) to "
                         "continue from; run without --resume")
    if (files or checkpoints) and not (overwrite or resume):
        names = ", ".join(p.name for p in (files + checkpoints)[:4]) + (", ..." if len(files + checkpoints) > 4 else "")
        hint = "--resume continues its checkpointed ILSR stage, " if checkpoints else ""
        raise ValueError(f"--out {str(out)!r} holds an earlier run ({names}): {hint}--overwrite replaces it, "
                         "or choose another folder")


def clear(out: Path | None, keep_checkpoints: bool) -> list[Path]:
    """Remove an earlier run's files (and its checkpoints unless ``keep_checkpoints``) and
    temporary files of interrupted writes from ``out``; returns what was removed."""
    if out is None or not out.is_dir():
        return []
    files, checkpoints = existing_run(out)
    removed = files + ([] if keep_checkpoints else checkpoints) + _matches(out, TEMPORARY)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed
