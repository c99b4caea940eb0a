"""speedups/freed_memory.py: freed memory stays in the process, so allocating it again takes no page faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from peftbench.speedups import freed_memory

pytestmark = pytest.mark.unit

# What a training step does to the heap, with glibc's malloc itself: 20 blocks of 2 MiB allocated, written
# and all freed, five times; the minor page faults of each round after the first (glibc's default trims the
# freed heap, so every round faults its 10,240 pages in again).
_PROBE = """
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("freed_memory", sys.argv[2])  # alone: no torch import first
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
kept = allocator.keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(2 * 2**20) for _ in range(20)]
    for block in blocks:
        ctypes.memset(block, 1, 2 * 2**20)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "reported": allocator.freed_memory_kept(), "faults": faults[1:]}))
"""
_PAGES = 20 * 2 * 2**20 // 4096

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")


def _probe(mode: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | env
    done = subprocess.run([sys.executable, "-c", _PROBE, mode, freed_memory.__file__], capture_output=True,
                          text=True, check=True,
                          env=environment, timeout=60)
    return json.loads(done.stdout.strip().splitlines()[-1])


@linux_only
def test_freed_memory_is_reused_without_page_faults():
    default, kept = _probe("default"), _probe("keep")
    assert not default["reported"] and kept["kept"] and kept["reported"]
    assert all(faults >= 0.9 * _PAGES for faults in default["faults"])
    assert all(faults < 0.01 * _PAGES for faults in kept["faults"])


@linux_only
@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"},
                                 {"LD_PRELOAD": "libjemalloc.so.2"}])
def test_users_allocator_settings_are_left_alone(env):
    result = _probe("keep", **env)
    assert not result["kept"] and not result["reported"]
