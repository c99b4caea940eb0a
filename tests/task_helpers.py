"""A tiny user task (a YAML file over JSONL rows), as a user writes one, for the tests that need their own."""

from __future__ import annotations


def tiny_task_yaml(train: str = "train.jsonl", validation: str = "validation.jsonl", test: str = "test.jsonl") -> str:
    """A yes/no classification task named ``tiny_yes_no`` over the given data files."""
    return f"""\
name: tiny_yes_no
version: 1
type: classification
metric: accuracy
fields: [text, label]
template: "Text: {{text}}\\nAnswer:"
label_field: label
label_words: {{0: no, 1: yes}}
data_files: {{train: {train}, validation: {validation}, test: {test}}}
"""
