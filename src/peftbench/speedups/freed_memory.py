"""Keep freed memory in the process on glibc, so that training steps stop page-faulting (bench/RESULTS.md).

glibc's malloc serves a large request (above a threshold that starts at 128 KiB and rises, as such blocks
are freed, to at most 32 MiB) with a fresh ``mmap`` and returns it to the kernel when it is freed; it also
gives the top of its heap back once more than twice that threshold is free there. A training step frees
almost every activation it allocated, so the next step gets fresh pages and touches each one for the first
time: a minor page fault per 4 KiB, which the kernel serves by zeroing the page. That costs most where a
step allocates many mid-sized tensors beside little matrix work (the tiny T5 cell's attention maps, 16 × 4
× 145 × 145 fp32, 5.4 MB each); beside a larger model's matrix work the faults cost little. Faults and
times before and after: bench/RESULTS.md.

``keep_freed_memory`` fixes both thresholds (``mallopt``): requests up to ``HEAP_MAX_REQUEST_BYTES`` come
from the heap, and the heap is never trimmed below 2 GiB of free top. The process then keeps its peak
heap for its lifetime, as jemalloc and tcmalloc configured for PyTorch do, so its peak resident set can
rise a little (fragmentation). It is skipped where another allocator is preloaded, where the
user tuned glibc's malloc through the environment, and off glibc (macOS, musl). The switch is
``speedups.keep_freed_memory``; it is process-wide, so a process that kept freed memory for one run keeps
it for the next.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

HEAP_MAX_REQUEST_BYTES = 32 * 2**20
"""Largest request served from the heap (reused when freed): the ceiling of glibc's own adjustment. Larger
ones are mapped and unmapped each time, as glibc does by default."""
_TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Free bytes at the heap's top before glibc returns them: mallopt's largest (an int)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_outcome: list[str | None] = []


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; whether freed memory is now kept (False: left alone)."""
    return why_not_kept() is None


def why_not_kept() -> str | None:
    """Set glibc's thresholds once per process; None when freed memory is now kept, else the reason not."""
    if not _outcome:
        _outcome.append(_apply())
    return _outcome[0]


def freed_memory_kept() -> bool:
    """Whether ``keep_freed_memory`` ran in this process and took effect."""
    return bool(_outcome) and _outcome[0] is None


def _apply() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"platform {sys.platform}: not glibc"
    if any(name in os.environ for name in _USER_MALLOC_SETTINGS) or "glibc.malloc" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return "glibc's malloc is tuned through the environment"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: theirs to configure
        return "another allocator is preloaded (LD_PRELOAD)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return "the C library is not glibc"
    # mallopt returns 1 on success; fixing either threshold also stops glibc's dynamic adjustment of both.
    if libc.mallopt(_M_MMAP_THRESHOLD, HEAP_MAX_REQUEST_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                               _TRIM_THRESHOLD_BYTES):
        return None
    return "mallopt refused the thresholds"


_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc", "tbbmalloc")
"""Allocators that replace malloc when preloaded (``LD_PRELOAD``), by the name in their library's file name."""
_ALLOCATOR_SETTINGS = (*_USER_MALLOC_SETTINGS, "MALLOC_ARENA_MAX", "GLIBC_TUNABLES", "MALLOC_CONF",
                       "TCMALLOC_RELEASE_RATE", "MIMALLOC_PURGE_DELAY")


def allocator() -> dict[str, object]:
    """The C allocator serving this process, which a CPU run's resident peak depends on (bench/RESULTS.md,
    "What the overhead is"): ``name`` (a preloaded allocator found among the process's mapped libraries, else
    "glibc" on Linux, else "system"), ``settings`` (the environment variables that tune it, as set) and
    ``keeps_freed_memory`` (whether ``keep_freed_memory`` fixed glibc's thresholds in this process)."""
    name = _mapped_allocator() or ("glibc" if sys.platform.startswith("linux") else "system")
    settings = {key: os.environ[key] for key in _ALLOCATOR_SETTINGS if key in os.environ}
    return {"name": name, "settings": settings, "keeps_freed_memory": freed_memory_kept()}


def _mapped_allocator(maps_file: str = "/proc/self/maps") -> str | None:
    try:
        with open(maps_file, encoding="utf-8") as maps:
            files = {line.split()[-1].rsplit("/", 1)[-1] for line in maps if "/" in line}
    except OSError:
        return None
    return next((name for name in _OTHER_ALLOCATORS for file in sorted(files) if name in file), None)
