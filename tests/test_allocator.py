"""pinnlsr.allocator: malloc settings for repeated tensor passes."""
import platform
import sys

import pytest

from pinnlsr.allocator import tune_allocator


def test_system_allocator_is_kept_on_request(monkeypatch):
    monkeypatch.setenv("PINNLSR_ALLOCATOR", "system")
    assert tune_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_glibc_takes_the_settings(monkeypatch):
    monkeypatch.delenv("PINNLSR_ALLOCATOR", raising=False)
    assert tune_allocator() is True


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="mmap_threshold"):
        tune_allocator(mmap_threshold=-5)
