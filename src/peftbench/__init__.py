"""peftbench: a uniform, resumable benchmark of fine-tuning methods for language models."""

import os as _os

__version__ = "0.1.0"

# PyTorch's OpenMP runtime (libgomp) keeps each idle thread spinning for ~3 ms after every parallel op.
# When other processes share the cores, the spinning threads steal the time slices the working ones need,
# and each small op then waits a scheduler quantum: a SmolLM2 training step measured 1.7 s alone and 22 s
# beside one other busy process. Spinning ~0.1 ms (10,000 iterations) keeps the idle-machine speed and
# avoids the collapse (bench/RESULTS.md). Read when libgomp loads, i.e. before torch is imported; a user's
# own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left alone.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ.setdefault("GOMP_SPINCOUNT", "10000")
