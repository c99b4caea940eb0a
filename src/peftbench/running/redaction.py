"""Keep secrets from the environment out of result files, configs and messages.

A value is a secret when its environment variable's name says so (``HF_TOKEN``, ``*_TOKEN``, ``*_API_KEY``,
``*_SECRET``, ``*_PASSWORD``, ...). Every occurrence of such a value in text that peftbench writes is
replaced by ``[redacted $NAME]``. Values shorter than ``MIN_SECRET_LENGTH`` are left alone: replacing
"1" or "true" everywhere would corrupt numbers and flags, and no real token is that short.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

SECRET_NAME = re.compile(r"(TOKEN|API_?KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY|AUTH)(_|$)", re.IGNORECASE)
MIN_SECRET_LENGTH = 8


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Secret value → the name of its variable, longest values first (so a secret containing another is
    replaced whole)."""
    environ = os.environ if environ is None else environ
    found = {value: name for name, value in environ.items()
             if SECRET_NAME.search(name) and len(value) >= MIN_SECRET_LENGTH}
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def redact(value: Any, secrets: dict[str, str] | None = None) -> Any:
    """``value`` with every secret replaced, recursively through dicts, lists and tuples (keys too)."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        for secret, name in secrets.items():
            if secret in value:
                value = value.replace(secret, f"[redacted ${name}]")
        return value
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, secrets) for item in value)
    return value
