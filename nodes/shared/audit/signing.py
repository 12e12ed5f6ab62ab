"""The audit log's Ed25519 signing key at rest: sealed, never in clear on disk.

Whoever holds the signing key can re-sign a rewritten history, so a copy of the state folder must
not yield it. Each party seals it under the secret that already guards its state:

* a department node under its key ring passphrase (``KINLINK_KEY_PASSPHRASE``), in the key ring's
  own format (scrypt, AES-256-GCM, header authenticated: ``psi.keys.seal``) with its own magic;
* a client under its cache secret (``cache.key``, 32 random bytes): AES-256-GCM under
  HKDF-SHA256(secret, info "kinlink audit signing key v1"), so one secret guards both the
  caches and the key, and a folder copied without ``cache.key`` opens neither.

Files in the party's folder::

    audit-key.sealed     the sealed private key (0600)
    audit-key.pub.pem    the public key, for reviewers; its fingerprint (``key_fingerprint``) is
                         what a reviewer pins (``psi audit verify --fingerprint``)

A clear ``audit-key.pem`` left by an earlier version is sealed and deleted on first use. Sealing
protects a stolen copy; it does not stop root on a running node, who can read the passphrase:
against that, the heads clients keep (``nodes.shared.audit.gossip``) expose any rewrite.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nodes.shared.audit.log import (
    KEY_MODE,
    AuditLog,
    load_signing_key,
    public_key_pem,
)
from psi.errors import InputError
from psi.keys import seal, unseal

SEALED_KEY = "audit-key.sealed"
PUBLIC_KEY = "audit-key.pub.pem"
LEGACY_KEY = "audit-key.pem"  # the clear key of earlier versions
PASSPHRASE_MAGIC = b"KINLINKA"
SECRET_MAGIC = b"KINLINKS"
SECRET_FORMAT = 1
_SECRET_HEADER = struct.Struct("<8sB12s")  # magic | format | nonce; all associated data
_WHAT = "audit signing key"


class KeySeal(Protocol):
    """Seals and opens the 32 raw bytes of a signing key."""

    def seal(self, secret: bytes) -> bytes: ...

    def open(self, blob: bytes) -> bytes: ...


class PassphraseSeal:
    """A node's seal: its key ring passphrase. Remembers what it opened, so a process that logs
    several events (a build publishing many tables) pays scrypt once, not per event."""

    def __init__(self, passphrase: bytes):
        self._passphrase = passphrase
        self._opened: dict[bytes, bytes] = {}

    def seal(self, secret: bytes) -> bytes:
        return seal(secret, self._passphrase, magic=PASSPHRASE_MAGIC, what=_WHAT)

    def open(self, blob: bytes) -> bytes:
        if blob not in self._opened:
            self._opened[blob] = unseal(blob, self._passphrase, magic=PASSPHRASE_MAGIC, what=_WHAT)
        return self._opened[blob]


class SecretSeal:
    """A client's seal: its 32-byte cache secret (no passphrase stretching needed)."""

    def __init__(self, secret: bytes):
        self._key = HKDF(
            hashes.SHA256(), 32, salt=None, info=b"kinlink audit signing key v1"
        ).derive(secret)

    def seal(self, secret: bytes) -> bytes:
        header = _SECRET_HEADER.pack(SECRET_MAGIC, SECRET_FORMAT, os.urandom(12))
        return header + AESGCM(self._key).encrypt(header[-12:], secret, header)

    def open(self, blob: bytes) -> bytes:
        header = blob[: _SECRET_HEADER.size]
        if len(header) < _SECRET_HEADER.size or header[:8] != SECRET_MAGIC:
            raise InputError(f"not a kinlink {_WHAT}")
        if header[8] != SECRET_FORMAT:
            raise InputError(f"unsupported {_WHAT} format {header[8]}")
        try:
            return AESGCM(self._key).decrypt(header[-12:], blob[_SECRET_HEADER.size :], header)
        except InvalidTag:
            raise InputError(
                f"cannot open the {_WHAT}: another cache.key or a damaged file"
            ) from None


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _publish(path: Path, blob: bytes) -> None:
    """Write ``blob`` at ``path`` (0600) unless a file is there already: a temporary file linked
    into place, so two processes creating a key at once agree on the first one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temporary, path)
    except FileExistsError:
        pass  # another process made it first: its key is the one
    finally:
        temporary.unlink(missing_ok=True)


def open_signing_key(folder: Path, key_seal: KeySeal) -> Ed25519PrivateKey:
    """The party's signing key from ``folder``, created (or sealed from a legacy clear file) on
    first use; a wrong secret or a damaged file is a clear ``InputError`` naming the file."""
    sealed = folder / SEALED_KEY
    legacy = folder / LEGACY_KEY
    folder.mkdir(parents=True, exist_ok=True)
    if not sealed.exists():
        key = load_signing_key(legacy) if legacy.exists() else Ed25519PrivateKey.generate()
        _publish(sealed, key_seal.seal(_raw(key)))
    try:
        key = Ed25519PrivateKey.from_private_bytes(key_seal.open(sealed.read_bytes()))
    except InputError as exc:
        raise InputError(f"{sealed}: {exc}") from None
    except ValueError:
        raise InputError(f"{sealed}: not an Ed25519 {_WHAT}") from None
    legacy.unlink(missing_ok=True)
    public = folder / PUBLIC_KEY
    if not public.exists():
        public.write_bytes(public_key_pem(key))
    return key


def open_party_log(folder: Path, owner: str, key_seal: KeySeal) -> AuditLog:
    """A node's or client's own log in ``folder`` (``audit.sqlite``), signed with its sealed key,
    both created on first use; ``audit-key.pub.pem`` goes to reviewers."""
    return AuditLog(folder / "audit.sqlite", open_signing_key(folder, key_seal), owner)
