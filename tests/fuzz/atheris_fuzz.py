"""Coverage-guided fuzzing of the byte decoders with atheris (libFuzzer), beside hypothesis.

Why both: the hypothesis targets (``tests/fuzz/test_*_decoders.py``) are
structure-aware and run in CI, but spend most of each case generating it
(3 to 30 ms here). atheris mutates bytes guided by the line coverage of our
own packages (``ledger``, ``consensus``, ``node``, ``storage`` are
instrumented as they are imported), costs well under a millisecond per case
for most targets, and keeps inputs that reach new code -- the tool for the
100,000-case runs ``SECURITY.md`` records. Each target reuses its hypothesis
twin's seeds and oracle (:func:`tests.fuzz.harness.run_case`): bytes end in a
value or the layer's typed error; anything else is a crash, which libFuzzer
reports with the input that caused it (saved under ``-artifact_prefix``).

Usage (atheris is the optional ``fuzz`` extra: ``pip install -e ".[fuzz]"``)::

    .venv/bin/python -m tests.fuzz.atheris_fuzz --list
    .venv/bin/python -m tests.fuzz.atheris_fuzz TARGET -runs=100000 -seed=1 [libFuzzer flags]

The valid seeds of the target are written to a fresh corpus directory first.
Every 1,000 cases and at exit the target's tally line (as the hypothesis run
prints it) is written to ``$MEDLEDGER_FUZZ_TALLY`` if set, else to stderr.
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris  # the optional `fuzz` extra; no type stubs (see pyproject)

with atheris.instrument_imports(include=["ledger", "consensus", "node", "storage"]):
    import trio

    from consensus.errors import RemoteProtocolError
    from consensus.messages import Payload, decode_envelope
    from ledger import codec
    from ledger.blob import blob_hash, check_blob_for_tx, decode_blob
    from ledger.errors import DecodeError, LedgerError
    from ledger.tx import AnchorRecord, Body, KeyRelease, Tx, make_tx
    from ledger.validate import SigCache, check_tx_bytes
    from node.mempool import decode_batch
    from node.p2p import FrameError, FrameReader
    from tests.consensus.helpers import make_replica, signed
    from tests.fuzz import test_consensus_decoders as cons
    from tests.fuzz import test_ledger_decoders as led
    from tests.fuzz import test_node_decoders as nod
    from tests.fuzz.harness import format_tally, run_case

Target = Callable[[bytes], None]


def _tx_bytes(data: bytes) -> None:
    run_case("ledger.check_tx_bytes", lambda: check_tx_bytes(data, led.CHAIN, verified=SigCache()))


def _signed_tx(data: bytes) -> None:
    """Bytes that decode as a tx ``Body`` are signed into a tx: the checks behind the signature.

    Inputs that are no canonical ``Body`` are not cases of the target (not tallied).
    """
    try:
        body: Body = codec.decode(data, Body)  # type: ignore[arg-type]  # a tagged union
    except LedgerError:
        return
    tx = make_tx(led.ORG, led.CHAIN, 0, body).encode()
    run_case("ledger.check_tx_bytes[signed]", lambda: check_tx_bytes(tx, led.CHAIN))


def _decode_blob(data: bytes) -> None:
    run_case("ledger.decode_blob", lambda: decode_blob(data))


def _blob_for_tx(data: bytes) -> None:
    """The first byte picks the tx kind; the tx commits to the hash of the rest."""
    which, blob = (data[0] & 1, data[1:]) if data else (0, b"")
    if which == 0:
        body: AnchorRecord | KeyRelease = AnchorRecord(
            led.RID, led.PATIENT.public_key, "lab", led.ORG.public_key, blob_hash(blob),
            led.RECORD_READERS,
        )  # fmt: skip
    else:
        body = KeyRelease(led.RID, led.CLINICIAN.public_key, blob_hash(blob))
    tx = Tx(led.CHAIN, led.ORG.public_key, 0, body, bytes(64))
    run_case("ledger.check_blob_for_tx", lambda: check_blob_for_tx(tx, blob))


def _block_validate(data: bytes) -> None:
    run_case(
        "ledger_app.validate[block]",
        led.BLOCKS.check_fn(data),
        allowed=(),
        label=lambda verdict: f"verdict {verdict.kind.name}",
    )


def _decode_envelope(data: bytes) -> None:
    run_case(
        "consensus.decode_envelope",
        lambda: decode_envelope(data, cons.MAX_MESSAGE),
        allowed=(RemoteProtocolError,),
    )


def _receive_bytes(data: bytes) -> None:
    replica, _ = make_replica(cons.ME)
    run_case(
        "consensus.Replica.receive[bytes]",
        lambda: cons.receive_outcome(replica, data),
        allowed=(),
        label=lambda outcome: outcome,
    )


def _receive_signed(data: bytes) -> None:
    """The first byte picks a validator that signs the rest, if it decodes as a payload:
    a Byzantine validator's wild but correctly signed messages, state responses included.
    Inputs that are no canonical ``Payload`` are not cases of the target (not tallied)."""
    sender, rest = ((0, 2, 3)[data[0] % 3], data[1:]) if data else (0, b"")
    try:
        payload: Payload = codec.decode(rest, Payload)  # type: ignore[arg-type]  # tagged union
    except LedgerError:
        return
    replica, _ = make_replica(cons.ME)
    envelope = signed(sender, payload)
    run_case(
        "consensus.Replica.receive[signed]",
        lambda: cons.receive_outcome(replica, envelope),
        allowed=(),
        label=lambda outcome: outcome,
    )


def _decode_batch(data: bytes) -> None:
    run_case(
        "mempool.decode_batch",
        lambda: decode_batch(data, nod.MAX_BATCH),
        allowed=(DecodeError,),
    )


def _add_batch(data: bytes) -> None:
    outcome = run_case(
        "mempool.add_batch",
        lambda: nod._add_batch(data),
        allowed=(DecodeError,),
        label=lambda o: "some accepted" if o.accepted else "none accepted",
    )
    if outcome is not None:
        items = decode_batch(data, nod.MAX_BATCH).items
        assert outcome.accepted + outcome.duplicates + outcome.rejected == len(items)


def _frame_reader(data: bytes) -> None:
    """The first bytes say where the network splits the rest."""
    fdp = atheris.FuzzedDataProvider(data)
    cuts = [fdp.ConsumeIntInRange(0, 300) for _ in range(fdp.ConsumeIntInRange(0, 6))]
    rest = fdp.ConsumeBytes(fdp.remaining_bytes())
    run_case("p2p.FrameReader", lambda: _read_frames(rest, cuts), allowed=(FrameError,))


def _read_frames(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    async def main() -> list[bytes]:
        reader = FrameReader(nod.ChunkedStream(data, cuts), nod.FRAME_LIMIT)
        frames = []
        while (frame := await reader.read_frame()) is not None:
            assert len(frame) <= nod.FRAME_LIMIT
            frames.append(frame)
        return frames

    return trio.run(main)


def _api_bodies(data: bytes) -> None:
    """The first byte picks the route; the rest is the JSON body, as sent."""
    path, body = ("/v1/txs/batch" if data[:1] and data[0] & 1 else "/v1/txs"), data[1:]
    run_case(
        "api.POST /v1/txs[batch]",
        lambda: nod._answer(nod._request("POST", path, body, {"content-type": "application/json"})),
        allowed=(),
        label=lambda label: label,
    )


def _prefixed(prefix: bytes, seeds: Sequence[bytes]) -> list[bytes]:
    return [prefix + s for s in seeds]


#: name -> (target, seeds written to the starting corpus)
TARGETS: dict[str, tuple[Target, list[bytes]]] = {
    "ledger.check_tx_bytes": (_tx_bytes, list(led.TX_SEEDS)),
    "ledger.check_tx_bytes[signed]": (_signed_tx, [codec.encode(b) for b in led.BODIES]),
    "ledger.decode_blob": (_decode_blob, list(led.BLOB_SEEDS)),
    "ledger.check_blob_for_tx": (
        _blob_for_tx,
        _prefixed(b"\x00", [led.RECORD_BLOB]) + _prefixed(b"\x01", [led.WRAP_BLOB]),
    ),
    "ledger_app.validate[block]": (_block_validate, [led.BLOCKS.block]),
    "consensus.decode_envelope": (_decode_envelope, list(cons.SEEDS)),
    "consensus.Replica.receive[bytes]": (_receive_bytes, list(cons.SEEDS)),
    "consensus.Replica.receive[signed]": (
        _receive_signed,
        [bytes([i]) + codec.encode(p) for i, p in enumerate(cons.SEED_PAYLOADS)],
    ),
    "mempool.decode_batch": (_decode_batch, list(nod.BATCH_SEEDS)),
    "mempool.add_batch": (_add_batch, list(nod.BATCH_SEEDS)),
    "p2p.FrameReader": (_frame_reader, _prefixed(b"\x00", nod.FRAME_SEEDS)),
    "api.POST /v1/txs[batch]": (
        _api_bodies,
        _prefixed(b"\x00", nod.BODY_SEEDS[:2]) + _prefixed(b"\x01", nod.BODY_SEEDS[2:]),
    ),
}


class _TallyWriter:
    """Writes the target's tally line every ``every`` inputs and after the last one.

    libFuzzer ends the process with C ``exit()`` once ``-runs`` inputs ran, so
    Python's ``atexit`` hooks do not run then: the last input is counted here.
    """

    def __init__(self, name: str, runs: int | None, every: int = 1000) -> None:
        self.name, self.runs, self.every = name, runs, every
        self.started = time.monotonic()
        self.inputs = 0
        self.path = os.environ.get("MEDLEDGER_FUZZ_TALLY")

    def done(self) -> None:
        """One more input ran."""
        self.inputs += 1
        if self.inputs % self.every == 0 or self.inputs == self.runs:
            self.write()

    def write(self) -> None:
        lines = [line for line in format_tally() if line.startswith(self.name + ":")]
        wall = time.monotonic() - self.started
        text = "".join(f"{line}; {self.inputs} inputs; {wall:.0f} s wall\n" for line in lines)
        if self.path:
            Path(self.path).write_text(text)
        else:
            sys.stderr.write(text)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] == "--list":
        print("\n".join(TARGETS))
        return
    name = argv[1]
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; --list names them")
    target, seeds = TARGETS[name]
    corpus = Path(tempfile.mkdtemp(prefix="medledger-fuzz-"))
    for i, seed in enumerate(seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    flags = [a for a in argv[2:] if a.startswith("-")]
    runs = [int(f.split("=", 1)[1]) for f in flags if f.startswith("-runs=")]
    writer = _TallyWriter(name, runs[-1] if runs else None)
    atexit.register(writer.write)  # an interrupted run (Ctrl-C, a crash) still reports

    def one_input(data: bytes) -> None:
        target(data)
        writer.done()

    atheris.Setup([argv[0], *flags, str(corpus)], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
