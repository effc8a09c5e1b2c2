"""Client-side envelope encryption of one record.

A record is encrypted once, with a fresh random 32-byte key, by
XChaCha20-Poly1305 (IETF). Its 24-byte nonce is random too: the key is never
reused, and an XChaCha nonce is wide enough to draw at random anyway. The
associated data is ``AD_RECORD || record_id``, so a ciphertext moved to another
record id (or into another protocol role) no longer authenticates.

The record key is then *wrapped* for every reader with a libsodium SealedBox to
the X25519 twin of the reader's ed25519 id: anyone can wrap for a known id, and
only the holder of the matching secret key can unwrap.

All of this runs on clients (and on a custodian's node when it re-wraps a key);
apply never calls it, so randomness is allowed here. Errors are typed
(:class:`~ledger.errors.DecryptionError`, :class:`~ledger.errors.InvalidKeyError`)
and their messages carry sizes and public-key prefixes only — never a key or
plaintext.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.utils

from ledger.errors import DecryptionError, InvalidKeyError
from ledger.hashing import AD_RECORD
from ledger.keys import PUBLIC_KEY_SIZE, KeyPair

RECORD_KEY_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES  # 32
NONCE_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
TAG_SIZE = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES  # 16
#: A SealedBox adds an ephemeral X25519 public key and a MAC to the 32-byte key.
WRAP_SIZE = RECORD_KEY_SIZE + nacl.bindings.crypto_box_SEALBYTES  # 80


def _associated_data(record_id: bytes) -> bytes:
    # The tag has a fixed length, so tag || record_id is unambiguous.
    return AD_RECORD + record_id


def encrypt_record(plaintext: bytes, record_id: bytes) -> tuple[bytes, bytes, bytes]:
    """Encrypt ``plaintext`` under a fresh key; return ``(record_key, nonce, ciphertext)``.

    The caller must wrap ``record_key`` for every reader and then forget it.
    """
    record_key = nacl.utils.random(RECORD_KEY_SIZE)
    nonce = nacl.utils.random(NONCE_SIZE)
    ciphertext = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
        plaintext, _associated_data(record_id), nonce, record_key
    )
    return record_key, nonce, ciphertext


def decrypt_record(record_key: bytes, nonce: bytes, ciphertext: bytes, record_id: bytes) -> bytes:
    """Return the plaintext, or raise :class:`DecryptionError` if anything does not authenticate.

    Wrong sizes are checked here first: libsodium's bindings raise untyped
    errors (or a plain ``ValueError``) on them.
    """
    if len(record_key) != RECORD_KEY_SIZE:
        raise DecryptionError(f"record key must be {RECORD_KEY_SIZE} bytes")
    if len(nonce) != NONCE_SIZE:
        raise DecryptionError(f"nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
    if len(ciphertext) < TAG_SIZE:
        raise DecryptionError(f"ciphertext shorter than its {TAG_SIZE}-byte tag")
    try:
        plaintext: bytes = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            ciphertext, _associated_data(record_id), nonce, record_key
        )
    except nacl.exceptions.CryptoError:
        raise DecryptionError("record ciphertext did not authenticate") from None
    return plaintext


def x25519_public_key(ed25519_public_key: bytes) -> nacl.public.PublicKey:
    """The encryption twin of an identity's ed25519 id.

    Raises :class:`InvalidKeyError` for bytes that are not a valid ed25519
    point (libsodium also refuses small-order points here).
    """
    if len(ed25519_public_key) != PUBLIC_KEY_SIZE:
        raise InvalidKeyError(f"reader key must be {PUBLIC_KEY_SIZE} bytes")
    try:
        curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)
    except nacl.exceptions.CryptoError:
        raise InvalidKeyError(
            f"reader key {ed25519_public_key.hex()[:16]}... is not a valid ed25519 key"
        ) from None
    return nacl.public.PublicKey(curve)


def wrap_key(record_key: bytes, reader_public_key: bytes) -> bytes:
    """Seal ``record_key`` to the reader with ed25519 id ``reader_public_key``."""
    if len(record_key) != RECORD_KEY_SIZE:
        raise InvalidKeyError(f"record key must be {RECORD_KEY_SIZE} bytes")
    sealed: bytes = nacl.public.SealedBox(x25519_public_key(reader_public_key)).encrypt(record_key)
    return sealed


def unwrap_key(wrap: bytes, reader: KeyPair) -> bytes:
    """Open a key wrap with the reader's secret key.

    Raises :class:`DecryptionError` if the wrap is not for this reader or was altered.
    """
    if len(wrap) != WRAP_SIZE:
        raise DecryptionError(f"key wrap must be {WRAP_SIZE} bytes, got {len(wrap)}")
    secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(reader.seed + reader.public_key)
    try:
        record_key: bytes = nacl.public.SealedBox(nacl.public.PrivateKey(secret)).decrypt(wrap)
    except nacl.exceptions.CryptoError:
        raise DecryptionError(
            f"key wrap does not open for reader {reader.public_key.hex()[:16]}..."
        ) from None
    if len(record_key) != RECORD_KEY_SIZE:
        raise DecryptionError("key wrap holds a key of the wrong size")
    return record_key
