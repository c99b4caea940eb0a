"""Running many runs: sweeps, executors, distributed launches, result files, the environment."""
