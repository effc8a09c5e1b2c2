"""Logging setup: JSON lines, per-module levels, redaction of content and bytes."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from node.logs import configure_logging, hexid


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("test.noisy").setLevel(logging.NOTSET)


def test_hexid() -> None:
    assert hexid(bytes(range(32))) == "0001020304050607…"
    assert hexid(b"\xab\xcd") == "abcd"
    assert hexid(None) == "-"


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_with_redaction() -> None:
    out = io.StringIO()
    configure_logging("info", json_output=True, stream=out)
    log = logging.getLogger("test.json")
    record_id = bytes(range(20))
    log.info(
        "stored record %s",
        record_id,
        extra={
            "plaintext": "Jane Doe, HIV+",
            "blob": b"\x01" * 100,
            "height": 7,
            "peer": b"\xff" * 4,
        },
    )
    log.info("long %s", "x" * 10_000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["level"] == "info" and first["logger"] == "test.json"
    assert first["msg"] == "stored record 0001020304050607…"
    assert first["plaintext"] == "[redacted]" and first["blob"] == "[redacted]"
    assert first["height"] == 7 and first["peer"] == "ffffffff"
    assert first["ts"].endswith("Z")
    assert "Jane" not in out.getvalue()
    assert len(json.loads(lines[1])["msg"]) < 4100


@pytest.mark.usefixtures("restore_logging")
def test_text_output_and_module_levels() -> None:
    out = io.StringIO()
    configure_logging("warning", modules=[("test.noisy", "debug")], stream=out)
    logging.getLogger("test.quiet").info("hidden")
    logging.getLogger("test.noisy").debug("shown %s", b"\x00\x01", extra={"view": 3})
    text = out.getvalue()
    assert "hidden" not in text
    assert "DEBUG test.noisy: shown 0001 view=3" in text
    # configuring again replaces the handler instead of doubling output
    out2 = io.StringIO()
    configure_logging("info", stream=out2)
    logging.getLogger("test.x").warning("once")
    assert out2.getvalue().count("once") == 1 and "once" not in out.getvalue()


def test_unknown_level_refused_without_side_effects() -> None:
    handlers = list(logging.getLogger().handlers)
    with pytest.raises(ValueError):
        configure_logging("chatty")
    with pytest.raises(ValueError):
        configure_logging("info", modules=[("x", "loud")])
    assert logging.getLogger().handlers == handlers
