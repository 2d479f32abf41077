"""The process's memory allocator, set for repeated passes over tensors of a few megabytes.

PyTorch takes CPU tensors from the C library's ``malloc``. glibc serves blocks above its mmap
threshold (128 KiB, raised on the fly up to 32 MiB) with fresh ``mmap`` pages and returns freed
memory at the top of the heap to the system once more than 128 KiB is free: every training step
then page-faults and zeroes the same few hundred megabytes again. On burgers1d's default loss
(4,400 points) that doubles the time of an Adam step, for pinnlsr's jets and for plain autograd alike
(``scripts/bench_training.py`` measures both with this setting).

:func:`tune_allocator` keeps blocks up to 32 MiB on the heap and keeps up to 1 GiB of freed heap
for reuse. It changes the whole process, so the library never calls it on import: the command
line entry points and the benchmark scripts call it, and a user's own script may. The resident
memory of the process stays near its peak. ``PINNLSR_ALLOCATOR=system`` leaves malloc as it is.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30,
                   top_pad: int = 64 << 20) -> bool:
    """Set glibc's malloc for repeated tensor passes (sizes in bytes); True when it was set.

    Does nothing (False) off Linux/glibc or with ``PINNLSR_ALLOCATOR=system``."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold), ("top_pad", top_pad)):
        if not 0 < value < 2**31:
            raise ValueError(f"tune_allocator: {name} must be between 1 and 2**31 - 1 bytes, got {value}")
    if os.environ.get("PINNLSR_ALLOCATOR", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold), (_M_TOP_PAD, top_pad)))
