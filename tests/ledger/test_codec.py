"""Properties of the one canonical codec, for every encoded ledger structure.

Values are generated from the structures' own type information
(``msgspec.inspect``), so a body type added to ``ledger.tx.BODY_TYPES`` is
covered without touching this file. Non-canonical encodings are produced by a
small independent msgpack writer that can emit every legal form of a value;
its minimal choice is first checked to reproduce the codec byte for byte.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ledger import codec
from ledger.block import Block, BlockHeader
from ledger.errors import DecodeError, NonCanonicalError, TooLargeError
from ledger.tx import BODY_TYPES, AnchorRecord, RecordAccess, Tx

ALL_TYPES: tuple[type[codec.Record], ...] = (*BODY_TYPES, Tx, BlockHeader, Block)
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1

# --- strategies derived from the type information ---------------------------------

_ints = st.one_of(
    st.integers(-40, 300),
    st.sampled_from([-(2**31), -(2**15) - 1, -129, -33, 2**16, 2**32, INT_MIN, UINT_MAX]),
    st.integers(INT_MIN, UINT_MAX),
)
_bytes = st.one_of(st.binary(max_size=40), st.binary(min_size=250, max_size=300))
_text = st.one_of(st.text(max_size=20), st.text(min_size=30, max_size=40))


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(t, mi.StructType):
        cls: Any = t.cls
        fields = [strategy_for(f.type) for f in t.fields]
        return st.tuples(*fields).map(lambda vals: cls(*vals))
    if isinstance(t, mi.UnionType):
        return st.one_of(*(strategy_for(u) for u in t.types))
    if isinstance(t, mi.ListType):
        nested = isinstance(t.item_type, mi.StructType)
        return st.lists(strategy_for(t.item_type), max_size=3 if nested else 5)
    if isinstance(t, mi.BytesType):
        return _bytes
    if isinstance(t, mi.StrType):
        return _text
    if isinstance(t, mi.IntType):
        return _ints
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.NoneType):
        return st.none()
    raise AssertionError(f"no strategy for {t!r}: add one (and keep floats out of the codec)")


STRATEGIES = {cls: strategy_for(mi.type_info(cls)) for cls in ALL_TYPES}


@st.composite
def typed_value(draw: st.DrawFn) -> tuple[type[codec.Record], Any]:
    cls = draw(st.sampled_from(ALL_TYPES))
    return cls, draw(STRATEGIES[cls])


# --- an independent msgpack writer that knows every form of a value -------------------


def _int_forms(v: int) -> list[bytes]:
    """Every msgpack encoding of v; the minimal one first."""
    forms: list[bytes] = []
    if v >= 0:
        if v <= 0x7F:
            forms.append(bytes([v]))
        for marker, fmt, hi in ((0xCC, ">B", 2**8), (0xCD, ">H", 2**16), (0xCE, ">I", 2**32)):
            if v < hi:
                forms.append(bytes([marker]) + struct.pack(fmt, v))
        forms.append(b"\xcf" + struct.pack(">Q", v))
    elif v >= -32:
        forms.append(struct.pack(">b", v))
    for marker, fmt, bits in (
        (0xD0, ">b", 8),
        (0xD1, ">h", 16),
        (0xD2, ">i", 32),
        (0xD3, ">q", 64),
    ):
        if -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
            forms.append(bytes([marker]) + struct.pack(fmt, v))
    return forms


_STR = ((0xD9, ">B", 2**8), (0xDA, ">H", 2**16), (0xDB, ">I", 2**32))
_BIN = ((0xC4, ">B", 2**8), (0xC5, ">H", 2**16), (0xC6, ">I", 2**32))
_ARRAY = ((0xDC, ">H", 2**16), (0xDD, ">I", 2**32))  # msgpack has no array8


def _len_forms(
    n: int, fix: int | None, fix_max: int, sized: tuple[tuple[int, str, int], ...]
) -> list[bytes]:
    """Every header for a length-n str/bin/array; the minimal one first."""
    forms = [bytes([fix | n])] if fix is not None and n <= fix_max else []
    forms.extend(bytes([marker]) + struct.pack(fmt, n) for marker, fmt, hi in sized if n < hi)
    return forms


def tokens(obj: Any) -> list[list[bytes]]:
    """The value as a sequence of tokens, each a list of alternative encodings."""
    if obj is None:
        return [[b"\xc0"]]
    if obj is True or obj is False:
        return [[b"\xc3" if obj else b"\xc2"]]
    if isinstance(obj, int):
        return [_int_forms(obj)]
    if isinstance(obj, str):
        raw = obj.encode()
        return [[h + raw for h in _len_forms(len(raw), 0xA0, 31, _STR)]]
    if isinstance(obj, bytes):
        return [[h + obj for h in _len_forms(len(obj), None, 0, _BIN)]]
    if isinstance(obj, list):
        out = [_len_forms(len(obj), 0x90, 15, _ARRAY)]
        for item in obj:
            out.extend(tokens(item))
        return out
    raise AssertionError(f"unexpected {type(obj).__name__} in an encoded ledger value")


def write(toks: list[list[bytes]], choice: dict[int, int] | None = None) -> bytes:
    choice = choice or {}
    return b"".join(alts[choice.get(i, 0)] for i, alts in enumerate(toks))


def raw_tree(data: bytes) -> Any:
    """Decode msgpack without a schema (arrays become lists)."""
    return msgspec.msgpack.decode(data)


# --- round trips ------------------------------------------------------------------


@given(typed_value())
def test_round_trip(tv: tuple[type[codec.Record], Any]) -> None:
    cls, value = tv
    data = codec.encode(value)
    decoded = codec.decode(data, cls)
    assert decoded == value
    assert codec.encode(decoded) == data


@given(typed_value())
def test_codec_is_minimal_msgpack(tv: tuple[type[codec.Record], Any]) -> None:
    """The codec's bytes are exactly the minimal msgpack form of the value."""
    _, value = tv
    data = codec.encode(value)
    assert write(tokens(raw_tree(data))) == data


@pytest.mark.parametrize("n", [0, 1, 15, 16, 31, 32, 255, 256, 65535, 65536])
def test_minimal_forms_at_length_boundaries(n: int) -> None:
    from ledger.tx import GrantConsent, ValidatorSetChange

    g = GrantConsent(b"\x00" * n, b"g", ["c"] * min(n, 20), [], "p" * n, n, -n, True)
    v = ValidatorSetChange([b"k"] * min(n, 300), [])
    for value, cls in ((g, GrantConsent), (v, ValidatorSetChange)):
        data = codec.encode(value)
        assert write(tokens(raw_tree(data))) == data
        assert codec.decode(data, cls) == value


def test_tx_hash_and_signature_survive_round_trip() -> None:
    from ledger.keys import KeyPair, verify
    from ledger.tx import RegisterPatient, make_tx

    key = KeyPair.from_seed(b"\x07" * 32)
    tx = make_tx(key, "chain", 5, RegisterPatient(b"\x01" * 32))
    back = codec.decode(tx.encode(), Tx)
    assert back.hash() == tx.hash()
    assert verify(back.sender, back.sign_bytes(), back.signature)


# --- non-canonical encodings --------------------------------------------------------


@given(typed_value(), st.data())
def test_any_wider_form_is_non_canonical(
    tv: tuple[type[codec.Record], Any], data: st.DataObject
) -> None:
    """An int, str, bin or array header in any non-minimal form is refused."""
    cls, value = tv
    toks = tokens(raw_tree(codec.encode(value)))
    widenable = [i for i, alts in enumerate(toks) if len(alts) > 1]
    assume(widenable)  # every structure has an array header, so this always holds
    i = data.draw(st.sampled_from(widenable), label="token")
    alt = data.draw(st.integers(1, len(toks[i]) - 1), label="form")
    bad = write(toks, {i: alt})
    with pytest.raises(NonCanonicalError) as info:
        codec.decode(bad, cls)
    assert info.value.code == "NON_CANONICAL"


def _hand_tx(nonce: bytes, name: bytes = b"\xa1x", org: bytes = b"\xc4\x01y") -> bytes:
    """Tx("c", b"s", nonce, RegisterOrganization(b"y", "x"), b"") written out by hand."""
    return b"\x95" + b"\xa1c" + b"\xc4\x01s" + nonce + b"\x93\x01" + org + name + b"\xc4\x00"


@pytest.mark.parametrize(
    ("nonce", "canonical", "wider"),
    [
        (5, _hand_tx(b"\x05"), _hand_tx(b"\xcc\x05")),  # uint8 for a fixint
        (5, _hand_tx(b"\x05"), _hand_tx(b"\xd0\x05")),  # int8 for a fixint
        (5, _hand_tx(b"\x05"), _hand_tx(b"\xcf" + (5).to_bytes(8, "big"))),  # uint64
        (256, _hand_tx(b"\xcd\x01\x00"), _hand_tx(b"\xce\x00\x00\x01\x00")),  # uint32
        (5, _hand_tx(b"\x05"), _hand_tx(b"\x05", name=b"\xd9\x01x")),  # str8 for a fixstr
        (5, _hand_tx(b"\x05"), _hand_tx(b"\x05", org=b"\xc5\x00\x01y")),  # bin16 for bin8
        (5, _hand_tx(b"\x05"), b"\xdc\x00\x05" + _hand_tx(b"\x05")[1:]),  # array16 header
    ],
    ids=["uint8", "int8", "uint64", "uint32", "str8", "bin16", "array16"],
)
def test_named_wider_forms(nonce: int, canonical: bytes, wider: bytes) -> None:
    """The brief's cases, written by hand: each wider header alone is refused."""
    from ledger.tx import RegisterOrganization

    tx = Tx("c", b"s", nonce, RegisterOrganization(b"y", "x"), b"")
    assert codec.encode(tx) == canonical
    assert codec.decode(canonical, Tx) == tx
    assert msgspec.msgpack.decode(wider, type=Tx) == tx  # msgpack itself accepts it...
    with pytest.raises(NonCanonicalError):  # ...the codec does not
        codec.decode(wider, Tx)


@given(STRATEGIES[AnchorRecord])
def test_missing_trailing_default_is_non_canonical(body: AnchorRecord) -> None:
    """Leaving out ``supersedes`` decodes to the same value, but is not its encoding."""
    tree = raw_tree(codec.encode(body))
    short = write(tokens(tree[:-1]))
    assert msgspec.msgpack.decode(short, type=AnchorRecord).supersedes is None
    # With supersedes set, the short form is another value, whose encoding it is not either.
    with pytest.raises(NonCanonicalError):
        codec.decode(short, AnchorRecord)


def test_missing_trailing_defaults_inside_a_tx() -> None:
    tx = Tx("c", b"s", 1, RecordAccess(b"r", "treatment"), b"sig")
    tree = raw_tree(codec.encode(tx))
    for cut in (1, 2):
        tree_cut = [*tree[:3], tree[3][:-cut], tree[4]]
        with pytest.raises(NonCanonicalError):
            codec.decode(write(tokens(tree_cut)), Tx)


@given(typed_value(), st.binary(min_size=1, max_size=8))
def test_trailing_bytes_rejected(tv: tuple[type[codec.Record], Any], extra: bytes) -> None:
    """Trailing bytes are refused. msgspec reports them as malformed (MALFORMED)."""
    cls, value = tv
    with pytest.raises(DecodeError):
        codec.decode(codec.encode(value) + extra, cls)


def test_float_where_int_expected_is_rejected() -> None:
    header = BlockHeader("c", 1, 1000, b"p", 0, b"t", b"s", b"x")
    tree = raw_tree(codec.encode(header))
    toks = tokens(tree)
    toks[3] = [b"\xcb" + struct.pack(">d", 1000.0)]  # time_ms as float64
    with pytest.raises(DecodeError):
        codec.decode(write(toks), BlockHeader)


# --- garbage and size -------------------------------------------------------------------


def _mutations(data: bytes) -> st.SearchStrategy[bytes]:
    n = len(data)
    edits = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=4)
    return st.one_of(
        edits.map(lambda es: bytes(dict(es).get(i, b) for i, b in enumerate(data))),
        st.integers(0, n - 1).map(lambda k: data[:k]),  # truncation
    )


@given(st.sampled_from(ALL_TYPES), st.binary(max_size=200))
def test_random_bytes_only_raise_decode_errors(cls: type[codec.Record], data: bytes) -> None:
    try:
        value = codec.decode(data, cls)
    except DecodeError as exc:
        assert exc.code in {"MALFORMED", "NON_CANONICAL"}
    else:
        assert codec.encode(value) == data


@given(typed_value(), st.data())
def test_mutated_encodings_only_raise_decode_errors(
    tv: tuple[type[codec.Record], Any], data: st.DataObject
) -> None:
    cls, value = tv
    bad = data.draw(_mutations(codec.encode(value)))
    try:
        decoded = codec.decode(bad, cls)
    except DecodeError as exc:
        assert exc.code in {"MALFORMED", "NON_CANONICAL"}
    else:
        assert codec.encode(decoded) == bad


@given(typed_value())
def test_oversize_raises_before_parsing(
    tv: tuple[type[codec.Record], Any],
) -> None:
    cls, value = tv
    data = codec.encode(value)
    original = codec._decoder

    def must_not_parse(_: Any) -> Any:
        raise AssertionError("parsed an oversize input")

    codec._decoder = must_not_parse  # type: ignore[assignment]
    try:
        with pytest.raises(TooLargeError) as info:
            codec.decode(data, cls, max_size=len(data) - 1)
        assert info.value.code == "TOO_LARGE"
        with pytest.raises(TooLargeError):
            codec.decode(data + b"\xff" * 10, cls, max_size=len(data))
    finally:
        codec._decoder = original
    assert codec.decode(data, cls, max_size=len(data)) == value
