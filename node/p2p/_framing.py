"""Varint length-prefixed frames on a byte stream.

A frame is ``uvarint(len) || payload`` (unsigned LEB128, as libp2p's own
length-prefixed protocols). The reader refuses a length over its limit before
reading the payload, so a peer cannot make us buffer more than ``max_size``
bytes, and refuses an over-long varint (more than 10 bytes).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["FrameError", "FrameReader", "FrameTooLargeError", "encode_frame", "encode_uvarint"]

MAX_VARINT_BYTES = 10
_READ_CHUNK = 64 * 1024


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame (its fault, not ours)."""


class FrameTooLargeError(FrameError):
    """A frame announced a length over the limit."""


class ReadableStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be >= 0")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


class FrameReader:
    """Reads frames from ``stream``, buffering what arrives between them."""

    def __init__(self, stream: ReadableStream, max_size: int) -> None:
        self._stream = stream
        self._max_size = max_size
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        """Read more bytes into the buffer; False at end of stream."""
        if self._eof:
            return False
        chunk = await self._stream.read(_READ_CHUNK)
        if not chunk:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def read_frame(self) -> bytes | None:
        """The next frame's payload, or ``None`` at a clean end of stream.

        Raises :class:`FrameError` for a truncated frame, a bad varint or a
        frame over the limit.
        """
        length = 0
        shift = 0
        i = 0
        while True:
            if i >= len(self._buf) and not await self._fill():
                if i == 0 and not self._buf:
                    return None
                raise FrameError("stream ended inside a frame header")
            byte = self._buf[i]
            length |= (byte & 0x7F) << shift
            i += 1
            if not byte & 0x80:
                break
            shift += 7
            if i >= MAX_VARINT_BYTES:
                raise FrameError("frame length varint too long")
        if length > self._max_size:
            raise FrameTooLargeError(f"frame of {length} bytes exceeds limit of {self._max_size}")
        while len(self._buf) - i < length:
            if not await self._fill():
                raise FrameError("stream ended inside a frame")
        payload = bytes(self._buf[i : i + length])
        del self._buf[: i + length]
        return payload
