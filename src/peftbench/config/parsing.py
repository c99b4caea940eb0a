"""Dataclasses from YAML mappings: unknown keys and wrong types are UserErrors naming the key."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from peftbench.errors import UserError, choices_text, did_you_mean


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``: unknown keys and wrong types are UserErrors naming the key."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    hints = {name: hint for name, hint in get_type_hints(cls).items() if name in names}  # no ClassVar
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise UserError(f"{where}: unknown key {key!r}{did_you_mean(key, names)}; "
                            f"{choices_text(key, names, f'pydoc {cls.__module__}.{cls.__name__}')}")
        kwargs[key] = _coerce(hints[key], value, f"{where}: {key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: {value!r} is not a valid {_type_name(hint)}")
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a scalar where a list is expected: a one-element grid axis
        return [_coerce(args[0], item, where) for item in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") if args else v for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not
                                               (hint is int and isinstance(value, bool))):
        raise UserError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "null")
