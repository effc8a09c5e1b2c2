"""Shared builders for consensus tests: a 4-validator set and signed messages."""

from __future__ import annotations

from consensus.core import Broadcast, Effect, Replica, SendTo
from consensus.messages import Envelope, Payload, decode_envelope, encode_envelope, sign
from consensus.testing import CHAIN_ID, ToyApp, ToyBlock, ToyStorage, genesis_digest, sim_config
from consensus.validators import ValidatorSet
from ledger import codec
from ledger.hashing import sha256
from ledger.keys import KeyPair
from ledger.tx import RegisterPatient, Tx, make_tx

KEYS = [KeyPair.from_seed(sha256(b"validator:%d" % i)) for i in range(4)]
VS = ValidatorSet(CHAIN_ID, [k.public_key for k in KEYS])
GENESIS = genesis_digest()
_CLIENT = KeyPair.from_seed(sha256(b"test-client"))
_nonce = [0]


def signed(i: int, payload: Payload) -> bytes:
    """Encoded envelope of ``payload`` signed by validator ``i``."""
    return encode_envelope(sign(KEYS[i], CHAIN_ID, payload))


def make_replica(i: int = 1, **cfg: int) -> tuple[Replica, ToyApp]:
    app = ToyApp(ToyStorage())
    r = Replica(sim_config(**cfg), KEYS[i], VS, app, genesis_digest=GENESIS)
    r.start()
    return r, app


def tx() -> Tx:
    _nonce[0] += 1
    return make_tx(_CLIENT, CHAIN_ID, _nonce[0], RegisterPatient(sha256(b"p%d" % _nonce[0])))


def block(height: int, parent: bytes, salt: int = 0, ntx: int = 1) -> tuple[bytes, bytes]:
    """A valid toy block (fresh signed txs) and its digest."""
    b = ToyBlock(height, parent, salt, [tx() for _ in range(ntx)])
    return codec.encode(b), b.digest()


def sent(effects: list[Effect]) -> list[Envelope]:
    return [
        decode_envelope(e.data, 1 << 30) for e in effects if isinstance(e, Broadcast | SendTo)
    ]
