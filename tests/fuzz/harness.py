"""Shared fuzzing machinery: input strategies, the typed-error oracle and the tally.

Why a harness: every decoder reachable from outside has the same contract —
bytes in, either a value or one of its layer's *typed* errors out, never any
other exception. :func:`run_case` states that contract once; each test only
names the target and the error classes its layer documents.

Inputs come in three flavours, because random bytes alone rarely get past the
first msgpack byte:

* :func:`raw_bytes` — arbitrary bytes (framing, size checks, first byte);
* :func:`mutated` — a valid encoding with bit flips, byte replacements (with
  msgpack type bytes), insertions, deletions, truncation, duplication and
  splices of two seeds: reaches the field checks behind the decoder;
* :func:`msgpack_values` — well-formed msgpack of random shape: reaches the
  typed-struct validation of msgspec.

The tally counts every case per target and how it ended, so the long run
(``HYPOTHESIS_PROFILE=long``) prints figures that ``SECURITY.md`` records.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from hypothesis import strategies as st

from ledger.errors import LedgerError

T = TypeVar("T")

#: msgpack type bytes worth planting: fixmap/fixarray/fixstr heads, nil, bools,
#: bin8/16/32, ext, float, uint/int of every width, str8/16/32, array16/32, map16/32.
INTERESTING_BYTES = (
    0x00,
    0x01,
    0x7F,
    0x80,
    0x8F,
    0x90,
    0x9F,
    0xA0,
    0xBF,
    0xC0,
    0xC1,
    0xC2,
    0xC3,
    0xC4,
    0xC5,
    0xC6,
    0xC7,
    0xCA,
    0xCB,
    0xCC,
    0xCD,
    0xCE,
    0xCF,
    0xD0,
    0xD3,
    0xD9,
    0xDA,
    0xDB,
    0xDC,
    0xDD,
    0xDE,
    0xDF,
    0xE0,
    0xFF,
)


@dataclass
class TargetTally:
    """How the cases of one fuzz target ended."""

    cases: int = 0
    accepted: int = 0
    rejected: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # error code or result label
    seconds: float = 0.0


TALLY: dict[str, TargetTally] = {}


def run_case(
    target: str,
    fn: Callable[[], T],
    allowed: tuple[type[BaseException], ...] = (LedgerError,),
    label: Callable[[T], str] | None = None,
) -> T | None:
    """Run one case; the typed errors in ``allowed`` count as rejections, anything else fails.

    Returns what ``fn`` returned, or ``None`` when it was rejected. Any other
    exception propagates, so hypothesis shrinks it and prints the input.
    ``label`` names the outcome of an accepted case (e.g. a verdict's kind).
    """
    tally = TALLY.setdefault(target, TargetTally())
    tally.cases += 1
    start = time.perf_counter()
    try:
        result = fn()
    except allowed as exc:
        tally.rejected += 1
        tally.outcomes[getattr(exc, "code", type(exc).__name__)] += 1
        return None
    finally:
        tally.seconds += time.perf_counter() - start
    tally.accepted += 1
    if label is not None:
        tally.outcomes[label(result)] += 1
    return result


def raw_bytes(max_size: int = 512) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size)


@st.composite
def _mutate(draw: st.DrawFn, seeds: Sequence[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 7))
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if op == 0 and n:  # flip one bit
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1 and n:  # plant an interesting byte
            data[pos] = draw(st.sampled_from(INTERESTING_BYTES))
        elif op == 2:  # insert bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3 and n:  # delete a range
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == 4 and n:  # truncate
            del data[pos:]
        elif op == 5 and n:  # duplicate a range
            end = pos + draw(st.integers(1, 16))
            data[end:end] = data[pos:end]
        elif op == 6:  # splice the tail of another seed
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, max(len(other) - 1, 0))) :]
        elif n:  # overwrite a run of bytes with random ones
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def mutated(seeds: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    """Valid encodings from ``seeds`` with one to four random mutations each."""
    if not seeds:
        raise ValueError("mutated() needs at least one seed")
    return _mutate(list(seeds))


_scalars: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=70),
    st.text(max_size=20),
    st.floats(allow_nan=False),
)


def msgpack_values(max_leaves: int = 30) -> st.SearchStrategy[bytes]:
    """Canonical msgpack of random nested arrays (and a few maps) of scalars."""
    values = st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=10),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )
    # Tagged unions start with their tag: put a small int first often.
    tagged = st.tuples(st.integers(0, 12), st.lists(values, max_size=10)).map(
        lambda t: [t[0], *t[1]]
    )
    return st.one_of(values, tagged).map(msgspec.msgpack.encode)


def any_input(seeds: Sequence[bytes], max_raw: int = 512) -> st.SearchStrategy[bytes]:
    """The mix every decoder gets: mostly mutations, some random msgpack, some raw bytes."""
    return st.one_of(
        mutated(seeds), mutated(seeds), msgpack_values(), raw_bytes(max_raw), st.sampled_from(seeds)
    )


def format_tally() -> list[str]:
    """One line per target, for the terminal summary and ``SECURITY.md``."""
    lines = []
    for name in sorted(TALLY):
        t = TALLY[name]
        top = ", ".join(f"{code} {n}" for code, n in t.outcomes.most_common(5))
        lines.append(
            f"{name}: {t.cases} cases, {t.accepted} accepted, "
            f"{t.rejected} typed rejections, {t.cases - t.accepted - t.rejected} failures; "
            f"outcomes: {top}; "
            f"{t.seconds:.1f} s in target"
        )
    return lines


# --- structure-aware values of the project's own Record types ----------------------------

_SIZES = (0, 1, 15, 16, 24, 31, 32, 33, 63, 64, 65)


def _bytes_field() -> st.SearchStrategy[bytes]:
    """Byte strings whose lengths sit on and beside every size the checks care about."""
    return st.one_of(
        st.sampled_from(_SIZES).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        st.binary(max_size=80),
    )


def _text_field() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["", "a", "fuzz-chain", "x" * 64, "x" * 65, "\n", "\u00e9"]),
        st.text(max_size=70),
    )


_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1


def _int_field() -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([0, 1, 2, 3, -1, 2**31, 2**63 - 1, _INT64_MIN, _UINT64_MAX]),
        st.integers(_INT64_MIN, _UINT64_MAX),
    )


def structs(type_: Any, *, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of ``type_`` (a Record class, a union of them, or a field type) with wild fields.

    Every field gets values on the edges of what the stateless checks accept,
    so the generated structures encode canonically and then exercise
    ``validate_basic`` / ``check_shape`` rather than the msgpack parser.
    """
    import types
    import typing

    origin = typing.get_origin(type_)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([structs(arg, depth=depth) for arg in typing.get_args(type_)])
    if origin is list:
        (item,) = typing.get_args(type_)
        return st.lists(structs(item, depth=depth + 1), max_size=4 if depth < 2 else 1)
    if type_ is type(None):
        return st.none()
    if type_ is bytes:
        return _bytes_field()
    if type_ is str:
        return _text_field()
    if type_ is bool:
        return st.booleans()
    if type_ is int:
        return _int_field()
    if isinstance(type_, type) and issubclass(type_, msgspec.Struct):
        hints = typing.get_type_hints(type_)
        fields = {name: structs(hints[name], depth=depth + 1) for name in type_.__struct_fields__}
        return st.builds(type_, **fields)
    raise TypeError(f"no strategy for {type_!r}")
