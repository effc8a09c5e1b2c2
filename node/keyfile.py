"""ed25519 key files: written private from birth, refused when others can read them.

A key file is JSON ``{"type": "ed25519", "seed": HEX, "public_key": HEX}``. The
seed is the whole secret (:class:`ledger.keys.KeyPair` is rebuilt from it); the
public key is stored beside it so an operator can read the identity without
tools, and loading checks that the two agree.

The file is created with mode 0600 by ``os.open`` itself (never written and
then ``chmod``-ed: that leaves a window in which the secret is world
readable), fully written and fsync-ed under a temporary name, then linked into
place, which fails rather than overwrites if the target already exists: a
stray ``keys new`` must never destroy a validator's identity. Loading refuses a
file that group or others may read or write, as ssh does.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path

from ledger.keys import KeyPair
from node.config import ConfigError

__all__ = ["KEY_FILE_MODE", "load_key_file", "write_key_file"]

KEY_FILE_MODE = 0o600


def write_key_file(path: str | Path, key: KeyPair | None = None) -> KeyPair:
    """Write ``key`` (a new random one by default) to ``path``; returns the key.

    Raises :class:`ConfigError` if ``path`` exists or cannot be written.
    """
    key = key or KeyPair.generate()
    p = Path(path)
    body = (
        json.dumps(
            {"type": "ed25519", "seed": key.seed.hex(), "public_key": key.public_key.hex()},
            indent=2,
        ).encode()
        + b"\n"
    )
    if p.exists():
        raise ConfigError(f"{p}: already exists; refusing to overwrite a key file")
    directory = p.parent if str(p.parent) else Path(".")
    tmp = directory / f".{p.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileNotFoundError:
        raise ConfigError(f"{p}: directory {directory} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot create key file: {exc.strerror}") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, p)  # atomic, and never replaces an existing file
        except FileExistsError:
            raise ConfigError(f"{p}: already exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise ConfigError(f"{p}: cannot write key file: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)
    return key


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable; best effort where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        return
    finally:
        os.close(fd)


def load_key_file(path: str | Path) -> KeyPair:
    """Load a key file; raises :class:`ConfigError` (one line) on any problem.

    Refused: a file whose mode grants any access to group or others, a file
    that is not valid JSON of the expected shape, and a public key that does
    not belong to the seed.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{p}: key file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read key file: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{p}: key file is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{p}: key file is accessible by group or others (mode {mode:04o}); run: chmod 600 {p}"
        )
    try:
        doc = json.loads(p.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read key file: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{p}: key file is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("type") != "ed25519":
        raise ConfigError(f'{p}: key file must be a JSON object with "type": "ed25519"')
    seed = _hex32(doc.get("seed"), p, "seed")
    key = KeyPair.from_seed(seed)
    public = doc.get("public_key")
    if public is not None and _hex32(public, p, "public_key") != key.public_key:
        raise ConfigError(f"{p}: public_key does not match the seed")
    return key


def _hex32(value: object, p: Path, name: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64 or value != value.lower():
        raise ConfigError(f"{p}: {name} must be 64 lowercase hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ConfigError(f"{p}: {name} must be 64 lowercase hex digits") from None
