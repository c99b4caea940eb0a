"""peftbench: a uniform, resumable benchmark of fine-tuning methods for language models."""

import os as _os

__version__ = "0.1.0"

# PyTorch's OpenMP runtime (libgomp) keeps each idle thread spinning for ~3 ms after every parallel op.
# When several processes share the cores, the spinning threads steal the time slices the working ones need,
# and each small op then waits a scheduler quantum: a SmolLM2 training step took 22 s instead of 1.7 s with
# 4-6 busy processes on 2 cores. Spinning ~0.1 ms (10,000 iterations) avoids that collapse; on a quiet
# machine, or beside one other process, it costs 7-8 % (bench/RESULTS.md). Read when libgomp loads, i.e.
# before torch is imported; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")
