"""A Byzantine validator on a real process, for the hardening tests only.

Run as ``python -m tests.hardening.byzantine_node --config CFG --behaviour B``
(from the repository root). It is ``medledger start`` with one difference:
before the node is assembled, this module replaces ``node.app``'s adapter
between the consensus service and the p2p transport, and wraps ``Node.run`` so
a behaviour may run a background task beside the node. The replica inside stays
honest (it signs, persists and never equivocates on its own); the corruption
happens on the way out, with this validator's real key, which is exactly the
power adversary A3 of ``SECURITY.md`` has. Nothing in ``node/`` or
``consensus/`` knows this module exists.

Behaviours (one per process):

``equivocate``
    As primary, every PRE-PREPARE it broadcasts goes out in two validly signed
    versions for the same (view, height): the real block to the first honest
    validator in genesis order, a sibling block (block time + 1 ms, parent
    rewritten to the sibling chain, so it validates) to the others. Neither
    side can reach a PREPARE quorum, so the honest replicas must change view.
    A re-send of the same PRE-PREPARE swaps the two sides, so replicas that
    wait long enough hold both signed versions: the evidence.
``bad-signatures``
    Every outgoing consensus message carries a corrupted signature.
``flood``
    Honest traffic, plus a background flood (``--flood-rate`` messages/s to
    every peer, each one distinct and validly signed) of PREPAREs and COMMITs
    for heights beyond every window, PREPAREs for far-future views at the
    next height, and VIEW-CHANGEs for ever higher views.
``withhold``
    Sends no consensus message at all but keeps its connections (and gossip).
``oversized``
    Honest traffic, plus one frame above the network's
    ``p2p.max_message_bytes`` to every peer every ``--oversized-interval``
    seconds (this process raises its own limit so its transport lets it out).
``honest``
    No change: a control for the harness itself.

Each behaviour logs what it did once a second (``byzantine: ...``) so a test
can quote the rate it achieved.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgspec
import trio

import node.app
from consensus.messages import (
    Commit,
    Envelope,
    Payload,
    Prepare,
    PrePrepare,
    ViewChange,
    encode_envelope,
    sign,
)
from ledger import codec
from ledger.block import Block
from ledger.hashing import sha256
from ledger.keys import KeyPair
from node.config import Config, load_config
from node.genesis_file import GenesisDoc, check_consensus_matches, load_genesis
from node.keyfile import load_key_file
from node.p2p import Transport

log = logging.getLogger("byzantine")

BEHAVIOURS = ("equivocate", "bad-signatures", "flood", "withhold", "oversized", "honest")

_REPORT_INTERVAL_S = 1.0
_FLOOD_TICK_S = 0.01


class Behaviour:
    """Honest by default; subclasses corrupt what leaves or add a background task."""

    name = "honest"

    def __init__(self, key: KeyPair, chain_id: str, validators: Sequence[bytes]) -> None:
        self.key = key
        self.chain_id = chain_id
        #: Every other validator, in genesis order.
        self.peers = [v for v in validators if v != key.public_key]
        self._transport: Transport | None = None
        self.counts: dict[str, int] = {}

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("behaviour is not bound to a transport yet")
        return self._transport

    def bind(self, transport: Transport) -> None:
        self._transport = transport

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def send_to(self, peer: bytes, data: bytes) -> None:
        self.transport.send_to(peer, data)

    def broadcast(self, data: bytes) -> None:
        self.transport.broadcast(data)

    async def background(self, parts: node.app.NodeParts) -> None:
        """Runs beside the node until it stops; reports the counts once a second."""
        while True:
            await trio.sleep(_REPORT_INTERVAL_S)
            if self.counts:
                log.info("byzantine %s: %s", self.name, _fmt(self.counts))


class Equivocate(Behaviour):
    name = "equivocate"

    def __init__(self, key: KeyPair, chain_id: str, validators: Sequence[bytes]) -> None:
        super().__init__(key, chain_id, validators)
        self._sides = (self.peers[:1], self.peers[1:])
        self._sibling_of: dict[bytes, bytes] = {}  # real digest -> sibling digest
        self._siblings: dict[bytes, bytes] = {}  # real envelope bytes -> sibling envelope bytes
        self._sends: dict[bytes, int] = {}

    def broadcast(self, data: bytes) -> None:
        env = codec.decode(data, Envelope)  # our own replica's bytes
        if not isinstance(env.payload, PrePrepare):
            super().broadcast(data)
            return
        sibling = self._siblings.get(data)
        if sibling is None:
            sibling = self._siblings[data] = self._sibling(env.payload)
            self.count("pre_prepares_equivocated")
        n = self._sends.get(data, 0)
        self._sends[data] = n + 1
        real_side, sibling_side = self._sides if n % 2 == 0 else self._sides[::-1]
        for peer in real_side:
            self.transport.send_to(peer, data)
        for peer in sibling_side:
            self.transport.send_to(peer, sibling)
        self.count("sends")

    def _sibling(self, pp: PrePrepare) -> bytes:
        block = codec.decode(pp.block, Block)
        header = msgspec.structs.replace(
            block.header,
            time_ms=block.header.time_ms + 1,
            parent_hash=self._sibling_of.get(block.header.parent_hash, block.header.parent_hash),
        )
        sibling = Block(header, block.txs)
        digest = sibling.hash()
        self._sibling_of[pp.digest] = digest
        alt = PrePrepare(pp.view, pp.height, digest, codec.encode(sibling))
        return encode_envelope(sign(self.key, self.chain_id, alt))


class BadSignatures(Behaviour):
    name = "bad-signatures"

    def _corrupt(self, data: bytes) -> bytes:
        env = codec.decode(data, Envelope)
        sig = bytearray(env.signature)
        sig[0] ^= 0x01
        self.count("corrupted")
        return encode_envelope(Envelope(env.sender, env.payload, bytes(sig)))

    def send_to(self, peer: bytes, data: bytes) -> None:
        super().send_to(peer, self._corrupt(data))

    def broadcast(self, data: bytes) -> None:
        super().broadcast(self._corrupt(data))


class Withhold(Behaviour):
    name = "withhold"

    def send_to(self, peer: bytes, data: bytes) -> None:
        self.count("withheld")

    def broadcast(self, data: bytes) -> None:
        self.count("withheld")


class Flood(Behaviour):
    name = "flood"

    def __init__(
        self, key: KeyPair, chain_id: str, validators: Sequence[bytes], *, rate: int
    ) -> None:
        super().__init__(key, chain_id, validators)
        self.rate = rate
        self._i = 0

    def _next(self, view: int, committed: int, far: int, genesis_cp: Any) -> Payload:
        i = self._i
        self._i += 1
        digest = sha256(b"flood" + i.to_bytes(8, "big"))
        kind = i % 4
        if kind == 0:
            return Prepare(view=view, height=far + i, digest=digest, parent=digest)
        if kind == 1:
            return Commit(view=view + 1 + i, height=far + i, digest=digest)
        if kind == 2:
            return Prepare(view=view + 1 + i, height=committed + 1, digest=digest, parent=digest)
        return ViewChange(
            new_view=view + 1 + i, checkpoint=genesis_cp, committed=None, prepared=[]
        )

    async def background(self, parts: node.app.NodeParts) -> None:
        replica = parts.service.replica
        far_ahead = replica.config.effective_log_window + 1
        per_tick = max(1, round(self.rate * _FLOOD_TICK_S))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(super().background, parts)
            start = trio.current_time()
            tick = 0
            while True:
                tick += 1
                await trio.sleep_until(start + tick * _FLOOD_TICK_S)
                view, committed = replica.view, replica.committed
                for _ in range(per_tick):
                    payload = self._next(
                        view, committed, committed + far_ahead, replica.genesis
                    )
                    data = encode_envelope(sign(self.key, self.chain_id, payload))
                    self.transport.broadcast(data)
                self.count("flood_messages", per_tick)
                # Achieved, not intended: signing on a shared CPU may fall behind.
                elapsed = trio.current_time() - start
                self.counts["flood_messages_per_s"] = round(self.counts["flood_messages"] / elapsed)


class Oversized(Behaviour):
    name = "oversized"

    def __init__(
        self,
        key: KeyPair,
        chain_id: str,
        validators: Sequence[bytes],
        *,
        frame_bytes: int,
        interval_s: float,
    ) -> None:
        super().__init__(key, chain_id, validators)
        self.frame = b"\xa5" * frame_bytes
        self.interval_s = interval_s

    async def background(self, parts: node.app.NodeParts) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(super().background, parts)
            while True:
                await trio.sleep(self.interval_s)
                for peer in self.peers:
                    self.transport.send_to(peer, self.frame)
                self.count("oversized_frames", len(self.peers))


class _ByzantineConsensusTransport:
    """Stands in for ``node.app._ConsensusTransport``: every send goes through the behaviour."""

    def __init__(self, behaviour: Behaviour, transport: Transport) -> None:
        behaviour.bind(transport)
        self._b = behaviour

    async def send_to(self, peer: bytes, data: bytes) -> None:
        self._b.send_to(peer, data)

    async def broadcast(self, data: bytes) -> None:
        self._b.broadcast(data)


def _fmt(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def make_behaviour(
    name: str, key: KeyPair, doc: GenesisDoc, args: argparse.Namespace, frame_limit: int
) -> Behaviour:
    genesis = doc.to_ledger_genesis()
    common = (key, genesis.chain_id, list(genesis.validators))
    if name == "equivocate":
        return Equivocate(*common)
    if name == "bad-signatures":
        return BadSignatures(*common)
    if name == "withhold":
        return Withhold(*common)
    if name == "flood":
        return Flood(*common, rate=args.flood_rate)
    if name == "oversized":
        return Oversized(*common, frame_bytes=frame_limit + 1, interval_s=args.oversized_interval)
    return Behaviour(*common)


def install(behaviour: Behaviour) -> None:
    """Patch ``node.app`` in this process only: the adapter and ``Node.run``."""
    honest_run: Callable[..., Any] = node.app.Node.run
    node.app._ConsensusTransport = partial(  # type: ignore[misc,assignment]
        _ByzantineConsensusTransport, behaviour
    )

    async def run(self: node.app.Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(behaviour.background, self.parts)
            await honest_run(self, task_status=task_status)
            nursery.cancel_scope.cancel()

    node.app.Node.run = run  # type: ignore[method-assign]


def _raise_own_frame_limit(config: Config, factor: int) -> Config:
    p2p = dataclasses.replace(config.p2p, max_message_bytes=config.p2p.max_message_bytes * factor)
    return dataclasses.replace(config, p2p=p2p)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hardening.byzantine_node")
    parser.add_argument("--config", required=True)
    parser.add_argument("--behaviour", required=True, choices=BEHAVIOURS)
    parser.add_argument("--flood-rate", type=int, default=2000, help="messages/s to each peer")
    parser.add_argument("--oversized-interval", type=float, default=1.0, help="seconds")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    doc = load_genesis(config.node.genesis_file)
    key = load_key_file(config.node.key_file)
    check_consensus_matches(config, doc)
    frame_limit = config.p2p.max_message_bytes  # the honest nodes' limit (same defaults)
    if args.behaviour == "oversized":
        config = _raise_own_frame_limit(config, 4)
    behaviour = make_behaviour(args.behaviour, key, doc, args, frame_limit)
    install(behaviour)
    print(f"byzantine node: behaviour {behaviour.name}", file=sys.stderr, flush=True)
    node.app.run(config, doc, key)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
