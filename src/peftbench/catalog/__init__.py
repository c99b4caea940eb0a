"""What can be benchmarked: models, methods, tasks, metrics, ablations, parameter counts."""
