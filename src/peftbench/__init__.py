"""peftbench: a uniform, resumable benchmark of fine-tuning methods for language models."""

import os as _os

__version__ = "0.1.0"


def limit_openmp_spinning(environ=_os.environ) -> None:
    """Cap how long PyTorch's OpenMP runtime (libgomp) spins idle threads, for the processes started from here.

    libgomp keeps each idle thread spinning for ~3 ms after every parallel operation. When several processes
    share the cores, the spinning threads steal the time slices the working ones need, and each small
    operation then waits a scheduler quantum: training slows many times over. Spinning ~0.1 ms (10,000
    iterations) avoids that collapse at a small cost on a quiet machine (both measured: bench/RESULTS.md,
    ``omp_spin``). libgomp reads the setting when it loads, so this must run before torch is imported: the
    command line calls it first (``cli.main``), and its worker processes inherit it. Importing peftbench
    sets nothing; a user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left alone.
    """
    if "OMP_WAIT_POLICY" not in environ:
        environ.setdefault("GOMP_SPINCOUNT", "10000")
