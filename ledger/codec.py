"""The one canonical codec for everything that is signed, hashed, sent or stored.

Encoding is msgpack through msgspec Structs declared ``array_like`` and
``frozen``: field order is the declaration order, integers take their shortest
form, and there are no maps in signed structures (a map's byte order would be
insertion order, not a property of the value). A value therefore has exactly
one encoding, and :func:`decode` enforces it by re-encoding and comparing:
``encode(decode(b)) == b`` for every accepted ``b``, so two nodes can never
disagree on the bytes behind a hash or signature.

Floats are not allowed in any structure passed through here.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from ledger.errors import DecodeError, NonCanonicalError, TooLargeError

T = TypeVar("T")

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


class Record(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """Base for every encoded structure: positional, immutable, strict."""


def encode(value: Any) -> bytes:
    """Return the canonical bytes of ``value``."""
    return _encoder.encode(value)


def _decoder(type_: Any) -> msgspec.msgpack.Decoder[Any]:
    dec = _decoders.get(type_)
    if dec is None:
        dec = msgspec.msgpack.Decoder(type_)
        _decoders[type_] = dec
    return dec


def decode(data: bytes, type_: type[T], *, max_size: int | None = None) -> T:
    """Decode ``data`` as ``type_``, accepting only its canonical encoding.

    Raises :class:`TooLargeError` before any parsing when ``max_size`` is
    exceeded, :class:`DecodeError` for bytes that are not a ``type_`` and
    :class:`NonCanonicalError` for a valid but non-canonical encoding.
    """
    if max_size is not None and len(data) > max_size:
        raise TooLargeError(f"{len(data)} bytes exceeds limit of {max_size}")
    try:
        value = _decoder(type_).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        # msgspec raises a bare UnicodeDecodeError for a str that is not UTF-8.
        raise DecodeError(f"not a valid {getattr(type_, '__name__', type_)}: {exc}") from None
    if _encoder.encode(value) != data:
        raise NonCanonicalError(f"non-canonical encoding of {getattr(type_, '__name__', type_)}")
    return value  # type: ignore[no-any-return]
