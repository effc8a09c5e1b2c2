"""Logging setup of a node: text or JSON lines, per-module levels, and redaction.

No patient data may reach a log. Code logs ids and hashes through
:func:`hexid` (a short hex prefix) and never logs record contents; the
:class:`RedactFilter` on the node's handler enforces it for every record,
including those of libraries:

* an ``extra`` field whose name says it holds content (``plaintext``,
  ``ciphertext``, ``blob``, ``body``, ``payload``, ``record``, ``wrap``,
  ``fhir``, ``seed``, ``secret``, ...) is replaced by ``"[redacted]"``;
* any ``bytes`` value, in ``extra`` or in the message arguments, is shown as
  its :func:`hexid` prefix - never in full, never as a Python ``b'...'``;
* long strings in ``extra`` and long messages are truncated, so a payload
  passed by mistake cannot be logged whole.

JSON output is one object per line: ``ts`` (UTC, ISO 8601 with milliseconds),
``level``, ``logger``, ``msg``, then the record's ``extra`` fields and
``exc`` (the traceback) when there is one.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO

HEXID_BYTES = 8
MAX_FIELD_CHARS = 200
MAX_MESSAGE_CHARS = 4000

# extra-field names (lower case) whose value must never be logged
FORBIDDEN_FIELDS = frozenset(
    {
        "plaintext", "ciphertext", "blob", "blob_bytes", "body", "payload", "content",
        "record", "record_bytes", "resource", "fhir", "wrap", "wraps", "key_wrap",
        "record_key", "seed", "secret", "private_key", "signing_key", "tx_bytes", "data",
        "display_name", "demographics", "note", "notes",
    }
)  # fmt: skip

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_HANDLER_NAME = "medledger"


def hexid(value: bytes | bytearray | memoryview | None, n: int = HEXID_BYTES) -> str:
    """A short lowercase-hex prefix of an id or hash, for logs (``None`` -> ``"-"``)."""
    if value is None:
        return "-"
    raw = bytes(value)
    return raw[:n].hex() + ("…" if len(raw) > n else "")


def _safe(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return hexid(value)
    return value


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…[truncated]"


class RedactFilter(logging.Filter):
    """Rewrites a record in place so that nothing in it can be content. Never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_safe(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _safe(v) for k, v in record.args.items()}
        for name in extra_fields(record):
            value = record.__dict__[name]
            if name.lower() in FORBIDDEN_FIELDS:
                record.__dict__[name] = "[redacted]"
            elif isinstance(value, bytes | bytearray | memoryview):
                record.__dict__[name] = hexid(value)
            elif isinstance(value, str):
                record.__dict__[name] = _truncate(value, MAX_FIELD_CHARS)
        return True


def extra_fields(record: logging.LogRecord) -> list[str]:
    """Names of the ``extra=`` fields of a record, in a stable order."""
    return sorted(k for k in record.__dict__ if k not in _STANDARD_ATTRS and not k.startswith("_"))


def _message(record: logging.LogRecord) -> str:
    return _truncate(record.getMessage(), MAX_MESSAGE_CHARS)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        for name in extra_fields(record):
            value = record.__dict__[name]
            is_plain = value is None or isinstance(value, bool | int | float | str)
            out[name] = value if is_plain else _truncate(str(value), MAX_FIELD_CHARS)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = _message(record)
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {record.message}"
        extras = " ".join(f"{k}={record.__dict__[k]}" for k in extra_fields(record))
        if extras:
            line += " " + extras
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _level(name: str) -> int:
    value = logging.getLevelName(name.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {name!r}")
    return value


def configure_logging(
    level: str = "info",
    *,
    json_output: bool = False,
    modules: Iterable[tuple[str, str]] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Install the node's handler on the root logger (replacing an earlier one).

    ``modules`` sets per-logger levels, e.g. ``[("node.p2p", "debug")]``.
    Returns the handler (tests attach it to a buffer through ``stream``).
    """
    root_level = _level(level)  # validate everything before changing anything
    module_levels = [(module, _level(name)) for module, name in modules]
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if json_output else TextFormatter())
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(root_level)
    for module, module_level in module_levels:
        logging.getLogger(module).setLevel(module_level)
    return handler
