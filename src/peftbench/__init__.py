"""peftbench: a uniform, resumable benchmark of fine-tuning methods for language models."""

__version__ = "0.1.0"
