"""Turning the node's values into JSON: bytes as lowercase hex, records as objects.

Ledger records are ``array_like`` (positional) on the wire; for humans and
HTTP clients they become objects keyed by field name, and a tagged record (a
tx body) also gets ``"type"``: its class name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import msgspec


def to_jsonable(value: object) -> Any:
    """A JSON-ready copy of ``value``; raises ``TypeError`` for anything unexpected."""
    if value is None or isinstance(value, bool | int | str | float):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        tag = type(value).__struct_config__.tag
        if tag is not None:
            out["type"] = type(value).__name__
        for name in value.__struct_fields__:
            out[name] = to_jsonable(getattr(value, name))
        return out
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"cannot render {type(value).__name__} as JSON")


def json_bytes(value: object) -> bytes:
    return msgspec.json.encode(to_jsonable(value))
