"""What a node or a client keeps on disk: owner-only, and sealed or authenticated under keys of
its own, so that stolen state opens nothing and damaged state is never read as a smaller truth.

Keys: ``file_key`` derives one key per use by HKDF-SHA256 from a secret the owner already holds
sealed (a department's handle key, in the passphrase-sealed key ring) or apart (a client's
``cache.key``). Output caches are sealed with AES-256-GCM (``nodes.shared.cache``); tables and
deltas, which the node publishes anyway, carry an HMAC-SHA256 trailer over their bytes::

    table or delta bytes | "KINLINKA" | u8 format | 32-byte HMAC-SHA256

and a small file read whole (the screening memo) is sealed in one piece (``seal``/``unseal``)::

    "KINLINKS" | u8 format | 12-byte nonce | AES-256-GCM ciphertext and tag

The MAC covers the format and the file's name within its owner's state (dataset, epoch,
profile, version) before the bytes, so a file cannot be moved into another's place (an old
version over the current one) either. A mismatch is ``DamagedFile``: the file, and what to do.

Modes: files 0600 and folders 0700 whatever the caller's umask (``private_files`` sets the
process umask to 077 where a node or client starts; ``private_folder`` also tightens a folder
that already exists).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from psi.errors import InputError, Source

FORMAT = 1
TRAILER_MAGIC = b"KINLINKA"
MAC_BYTES = 32
TRAILER = struct.Struct(f"<8sB{MAC_BYTES}s")
SEALED_MAGIC = b"KINLINKS"
SEALED = struct.Struct("<8sB12s")
_INFO = b"kinlink-at-rest-v1/"
_BLOCK = 1 << 20


class DamagedFile(InputError):
    """A stored artefact failed its authenticator: the message names it and what to do."""


def file_key(secret: bytes, purpose: str) -> bytes:
    """A 256-bit key for one use of ``secret`` (``purpose`` says which), by HKDF-SHA256."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=_INFO + purpose.encode()).derive(secret)


def private_files() -> None:
    """New files 0600 and folders 0700 in this process, whatever umask it was started with."""
    os.umask(0o077)


def private_folder(path: Path) -> Path:
    """``path`` created (missing parents too, under the process umask) and made 0700, even
    where it already existed more open."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def _mac(key: bytes, name: str) -> hmac.HMAC:
    encoded = name.encode()
    return hmac.new(key, struct.pack(">BH", FORMAT, len(encoded)) + encoded, hashlib.sha256)


def authenticated(chunks: Iterable[bytes], key: bytes, name: str) -> Iterator[bytes]:
    """``chunks`` followed by their trailer: what ``atomic_write`` should write."""
    mac = _mac(key, name)
    for chunk in chunks:
        mac.update(chunk)
        yield chunk
    yield TRAILER.pack(TRAILER_MAGIC, FORMAT, mac.digest())


def verified(path: Path, key: bytes, name: str, remedy: str) -> np.ndarray:
    """The bytes of an authenticated file without its trailer (read-only, memory-mapped), once
    the MAC over them is checked; else ``DamagedFile`` naming ``path`` and ``remedy``."""
    source = Source(str(path))
    try:
        size = os.path.getsize(path)
        buffer = np.memmap(path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except OSError as error:
        raise InputError(f"cannot read: {error.strerror}", source) from None
    problem = None
    if size < TRAILER.size:
        problem = "too short to carry its authenticator"
    else:
        magic, version, tag = TRAILER.unpack(bytes(buffer[size - TRAILER.size :]))
        if magic != TRAILER_MAGIC:
            problem = "carries no authenticator (damaged, or written by an older version)"
        elif version != FORMAT:
            problem = f"has an authenticator of format {version} (this build reads {FORMAT})"
        else:
            body = buffer[: size - TRAILER.size]
            mac = _mac(key, name)
            view = memoryview(body)
            for start in range(0, len(view), _BLOCK):
                mac.update(view[start : start + _BLOCK])
            if hmac.compare_digest(mac.digest(), tag):
                return body
            problem = "fails its authenticator (damaged or altered)"
    raise DamagedFile(f"{problem}: {remedy}", source)


def _sealed_ad(name: str) -> bytes:
    return SEALED_MAGIC + bytes([FORMAT]) + name.encode()


def seal(key: bytes, name: str, plaintext: bytes) -> bytes:
    """``plaintext`` encrypted and authenticated, bound to ``name`` (the file's role)."""
    nonce = os.urandom(12)
    head = SEALED.pack(SEALED_MAGIC, FORMAT, nonce)
    return head + AESGCM(key).encrypt(nonce, plaintext, _sealed_ad(name))


def is_sealed(blob: bytes) -> bool:
    """Whether ``blob`` is of ``seal``'s format (else: an older, unsealed file)."""
    return blob.startswith(SEALED_MAGIC)


def unseal(key: bytes, name: str, blob: bytes, source: Source, remedy: str) -> bytes:
    """What ``seal`` sealed; ``DamagedFile`` naming ``source`` and ``remedy`` otherwise."""
    if len(blob) < SEALED.size or not is_sealed(blob):
        raise DamagedFile(f"not a sealed file: {remedy}", source)
    _, version, nonce = SEALED.unpack_from(blob)
    if version != FORMAT:
        raise DamagedFile(
            f"sealed in format {version} (this build reads {FORMAT}): {remedy}", source
        )
    try:
        return AESGCM(key).decrypt(nonce, blob[SEALED.size :], _sealed_ad(name))
    except InvalidTag:
        raise DamagedFile(
            f"fails its authenticator (damaged or altered): {remedy}", source
        ) from None
