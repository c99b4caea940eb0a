"""Constants of the paper's benchmark that several layers read: defined here once, in a module that imports
nothing, so that any layer may import it."""

TASK_TYPES = ("classification", "generation")
"""The kinds of task: a label word to generate (scored by accuracy) or free text (ROUGE-L)."""

IGNORE = -100
"""The label value cross-entropy skips: prompt and padding positions of a causal model's labels."""

SCALES: dict[str, tuple[int, int]] = {"low": (100, 10), "medium": (1000, 5), "high": (10000, 1)}
"""Paper §3.1: each data scale's (most training examples, most epochs)."""
