"""Transport throughput on loopback: ``python -m node.p2p.bench``.

Runs N transports in this one process (so they share one core: the figures
are a floor for N separate processes) and prints, as JSON, the rate of
direct frames from node 0 to node 1, of broadcasts from node 0 reaching every
other node, and of gossiped batches from node 0 reaching every other node.
Frames are sent in windows no larger than the send queue, so none are
dropped; the drop counters are printed to prove it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import trio

from ledger.keys import KeyPair
from node.config import HostPort, test_defaults
from node.p2p._transport import Transport


async def _bench(n: int, count: int, size: int, batches: int, batch_size: int) -> dict[str, Any]:
    keys = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(n)]
    cfg = dataclasses.replace(
        test_defaults().p2p,
        send_queue_size=1024,
        receive_queue_size=4096,
        gossip_batch_bytes=max(batch_size, 1024),
    )
    validators: dict[bytes, HostPort | None] = {k.public_key: None for k in keys}
    transports = [Transport(cfg, k, validators, chain_id="bench") for k in keys]
    result: dict[str, Any] = {"nodes": n, "frame_bytes": size, "batch_bytes": batch_size}
    async with trio.open_nursery() as nursery:
        addrs = [await nursery.start(t.run) for t in transports]
        for t in transports:
            for k, a in zip(keys, addrs, strict=True):
                if k.public_key != t.public_key:
                    t.set_peer_address(k.public_key, a)
        with trio.fail_after(60):
            while not all(
                len(t.connected_peers()) == n - 1 and t.statistics().gossip_mesh_peers == n - 1
                for t in transports
            ):
                await trio.sleep(0.01)
        src, dst = transports[0], transports[1]
        payload = b"x" * size

        # warm up the direct streams
        src.broadcast(payload)
        for t in transports[1:]:
            await t.messages.receive()

        window = cfg.send_queue_size // 2
        start = time.perf_counter()
        sent = 0
        while sent < count:
            m = min(window, count - sent)
            for _ in range(m):
                src.send_to(keys[1].public_key, payload)
            for _ in range(m):
                await dst.messages.receive()
            sent += m
        elapsed = time.perf_counter() - start
        result["direct_frames_per_s"] = round(count / elapsed)
        result["direct_mb_per_s"] = round(count * size / elapsed / 1e6, 2)

        start = time.perf_counter()
        sent = 0
        while sent < count:
            m = min(window, count - sent)
            for _ in range(m):
                src.broadcast(payload)
            for t in transports[1:]:
                for _ in range(m):
                    await t.messages.receive()
            sent += m
        result["broadcasts_per_s"] = round(count / (time.perf_counter() - start))

        batch = b"b" * batch_size
        start = time.perf_counter()

        async def publish() -> None:
            for _ in range(batches):
                await src.publish_batch(batch)

        nursery.start_soon(publish)
        for t in transports[1:]:
            for _ in range(batches):
                await t.batches.receive()
        elapsed = time.perf_counter() - start
        result["gossip_batches_per_s"] = round(batches / elapsed, 1)
        result["gossip_mb_per_s"] = round(batches * batch_size / elapsed / 1e6, 2)
        stats = src.statistics()
        result["dropped_queue_full"] = stats.frames_dropped_queue_full
        result["lost_send_error"] = stats.frames_lost_send_error
        result["gossip_dropped"] = sum(t.statistics().gossip_dropped for t in transports)
        result["gossip_backpressure_waits"] = stats.gossip_backpressure_waits
        nursery.cancel_scope.cancel()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.p2p.bench", description=__doc__)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--count", type=int, default=5000, help="direct frames / broadcasts")
    parser.add_argument("--size", type=int, default=200, help="bytes per direct frame")
    parser.add_argument("--batches", type=int, default=100, help="gossiped batches")
    parser.add_argument("--batch-size", type=int, default=64 * 1024)
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes must be at least 2")
    result = trio.run(_bench, args.nodes, args.count, args.size, args.batches, args.batch_size)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
