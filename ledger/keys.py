"""ed25519 identities and their X25519 twins.

Every identity (hospital, clinician, patient, validator) is one ed25519 key;
its public key *is* its id. The X25519 twin of the same key is the identity's
encryption key, so a record key can be wrapped for anyone whose id we know.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.signing

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A private signing key and the id it proves. Never logged, never encoded."""

    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """Deterministic key from a 32-byte seed (tests, simulations, key files)."""
        return cls(nacl.signing.SigningKey(seed))

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    def sign(self, message: bytes) -> bytes:
        """Detached 64-byte signature; ``message`` must already carry its domain tag."""
        return self.signing_key.sign(message).signature

    def __repr__(self) -> str:  # never show the secret
        return f"KeyPair(public_key={self.public_key.hex()[:16]}...)"


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid ed25519 signature of ``message``.

    Malformed keys and signatures are simply invalid: this never raises on
    input from outside. libsodium rejects non-canonical signatures, so a valid
    signature cannot be re-encoded into a second valid one (no malleability).
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError,
            nacl.exceptions.TypeError, nacl.exceptions.CryptoError):
        return False
    return True
