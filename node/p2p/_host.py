"""The libp2p host: our ed25519 identity, Noise only, yamux, optional private network.

``new_host`` offers plaintext, SECIO and TLS besides Noise unless told
otherwise (LIBP2P_NOTES pitfall 2), so the security options name Noise alone.
The private-network key (libp2p "pnet", a 32-byte pre-shared key from
genesis) wraps every raw TCP connection in XSalsa20 before any libp2p
handshake: a host without the key cannot even negotiate, let alone reach the
allow-list check. py-libp2p 0.8.1 supports it through ``new_host(psk=...)``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import multiaddr
from libp2p import create_yamux_muxer_option, new_host
from libp2p.crypto.ed25519 import Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from node.config import HostPort

__all__ = ["apply_yamux_tuning", "build_host", "cache_advertised_addrs", "peer_id_from_public_key"]

#: How long :func:`cache_advertised_addrs` reuses the host's address list.
ADDRS_CACHE_S = 1.0


def peer_id_from_public_key(public_key: bytes) -> Any:
    """The libp2p ``ID`` of an ed25519 public key."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key))


def apply_yamux_tuning() -> None:
    """Yamux tuning from LIBP2P_NOTES (pitfall 11), unless the operator set it.

    By default yamux sends a window update after every read; turning that off
    raised raw stream throughput by about half. py-libp2p reads the variable
    at call time, so setting it before the first stream is enough.
    """
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")


async def _never_auto_connect() -> None:
    return None


def build_host(
    seed: bytes, listen: HostPort, private_network_key: bytes | None, *, dial_timeout_s: float
) -> Any:
    """A host with the identity of ``seed``; not yet listening (see ``host.run``).

    py-libp2p's swarm runs an "auto-connector" that, below a low watermark of
    100 connections, dials up to 200 peers from the peerstore (including
    peers we refused). A permissioned network keeps exactly one connection
    per validator itself (``Transport._keep_connected``), so it is switched
    off on this instance.
    """
    apply_yamux_tuning()
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=create_new_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt=create_yamux_muxer_option(),
        listen_addrs=[multiaddr.Multiaddr(listen.multiaddr())],
        psk=private_network_key.hex() if private_network_key is not None else None,
        connection_config=ConnectionConfig(
            dial_timeout=dial_timeout_s,
            outbound_upgrade_timeout=dial_timeout_s,
            inbound_upgrade_timeout=dial_timeout_s,
        ),
    )
    network: Any = host.get_network()
    network.auto_connector.maybe_connect = _never_auto_connect
    return host


def cache_advertised_addrs(host: Any) -> None:
    """Reuse ``host.get_addrs()`` for up to :data:`ADDRS_CACHE_S`; call once listening.

    py-libp2p attaches a signed peer record to every pubsub RPC and, before
    reusing its cached record, rebuilds the host's advertised address list
    (transport addresses, observed ones, a ``/p2p/<id>`` suffix each) to see
    whether it changed (LIBP2P_NOTES pitfall 10). With many small gossip
    batches that rebuild was ~5 % of a validator's CPU. The addresses of a
    listening validator do not change, and a change is still seen within a
    second. Installed only after the listener is bound, so the port chosen for
    ``:0`` is never hidden behind a stale list.
    """
    real = host.get_addrs
    cached: list[Any] = []
    at = [-ADDRS_CACHE_S]

    def get_addrs() -> list[Any]:
        now = time.monotonic()
        if not cached or now - at[0] >= ADDRS_CACHE_S:
            cached[:] = real()
            at[0] = now
        return list(cached)

    host.get_addrs = get_addrs
