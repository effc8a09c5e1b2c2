"""The validators' libp2p network (see ``_transport`` for the design).

Public surface: :class:`Transport` and its statistics, the protocol ids, the
frame codec and the host builder; everything else is private.
"""

from node.p2p._framing import FrameError, FrameReader, FrameTooLargeError, encode_frame
from node.p2p._host import apply_yamux_tuning, build_host, peer_id_from_public_key
from node.p2p._transport import (
    BLOB_PROTOCOL,
    CONSENSUS_PROTOCOL,
    SYNC_PROTOCOL,
    TX_PUSH_PROTOCOL,
    PeerStatistics,
    PeerUnavailableError,
    Transport,
    TransportStatistics,
    gossip_topic,
    transport_from_config,
    validator_addresses,
)

__all__ = [
    "BLOB_PROTOCOL",
    "CONSENSUS_PROTOCOL",
    "SYNC_PROTOCOL",
    "TX_PUSH_PROTOCOL",
    "FrameError",
    "FrameReader",
    "FrameTooLargeError",
    "PeerStatistics",
    "PeerUnavailableError",
    "Transport",
    "TransportStatistics",
    "apply_yamux_tuning",
    "build_host",
    "encode_frame",
    "gossip_topic",
    "peer_id_from_public_key",
    "transport_from_config",
    "validator_addresses",
]
