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


@linux_only
def test_the_allocator_is_named_from_the_mapped_libraries_and_its_settings_from_the_environment(tmp_path,
                                                                                                monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
                    "7f02-7f03 r-xp 00000000 08:01 43 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
                    "7ffd-7ffe rw-p 00000000 00:00 0 [stack]\n")
    assert freed_memory._mapped_allocator(str(maps)) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert freed_memory._mapped_allocator(str(maps)) is None
    assert freed_memory._mapped_allocator(str(tmp_path / "absent")) is None
    for key in ("MALLOC_CONF", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES", *freed_memory._USER_MALLOC_SETTINGS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
    found = freed_memory.allocator()
    if "malloc" not in os.environ.get("LD_PRELOAD", ""):  # no other allocator preloaded: this process's is glibc's
        assert found["name"] == "glibc"
    assert found["settings"] == {"MALLOC_ARENA_MAX": "1"}
    assert found["keeps_freed_memory"] == freed_memory.freed_memory_kept()
