"""The department's key ring: per dataset a stable handle key and one OPRF seed per epoch.

Rotating a dataset's epoch makes every table before it unlinkable to every table after it (tags are
derived from OPRF outputs, which change with the key), so a client cannot follow a person across
rotations. A retired epoch keeps its number and retirement time, for audit and clear errors, but its
seed is dropped: nobody, not even the department, can answer queries for it any more. The handle key
never rotates, so a record handle quoted in a dispute still resolves after rotations.

Rotation makes before it breaks: ``prepare`` draws the next epoch's seed, which tables are built
under (``build_epoch``) while the current epoch goes on serving; ``rotate`` then starts it and
retires the old one in one step. A prepared epoch answers no query (``seed`` refuses it).

At rest the ring is sealed: scrypt turns the passphrase into an AES-256-GCM key, and the header
(format, scrypt parameters, salt, nonce) is the associated data, so it cannot be altered unnoticed::

    "KINLINKK" | u8 format | u8 log2(n) | u8 r | u8 p | 16-byte salt | 12-byte nonce | ciphertext

The plaintext is JSON. Secrets never appear in ``repr``, messages or logs. ``seal`` and ``unseal``
are the same format for any secret a department keeps under its passphrase (the audit log's
signing key: ``nodes.shared.audit.signing``); the 8-byte magic names what is sealed.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from psi.errors import InputError, Source
from psi.table import atomic_write, check_dataset

FORMAT = 1
SEED_BYTES = 32
HANDLE_KEY_BYTES = 32
SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 1
MAX_SCRYPT_MEMORY = 1 << 28  # refuse a blob whose scrypt parameters need more than 256 MiB
MAGIC = b"KINLINKK"
_HEADER = struct.Struct("<8sBBBB16s12s")
PASSPHRASE_VAR = "KINLINK_KEY_PASSPHRASE"


class KeyRingError(InputError):
    """The key ring cannot do what was asked: unknown dataset or epoch, bad passphrase or file."""


@dataclass(repr=False)  # no repr: it would print the keys
class _Dataset:
    handle_key: bytes
    epoch: int
    seed: bytes
    retired: dict[int, datetime] = field(default_factory=dict)
    prepared: bytes | None = None  # the seed of epoch + 1, drawn by ``prepare``


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class KeyRing:
    """Key material of one department node. Create empty and ``add_dataset``, or ``load``."""

    def __init__(self) -> None:
        self._datasets: dict[str, _Dataset] = {}

    def __repr__(self) -> str:
        epochs = ", ".join(f"{name}@{d.epoch}" for name, d in sorted(self._datasets.items()))
        return f"KeyRing({epochs})"

    def _get(self, dataset: str) -> _Dataset:
        try:
            return self._datasets[dataset]
        except KeyError:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise KeyRingError(
                f"no dataset {dataset!r} in the key ring (it has: {known})"
            ) from None

    def datasets(self) -> list[str]:
        return sorted(self._datasets)

    def add_dataset(self, dataset: str) -> None:
        """Create a dataset's handle key and its first epoch (1)."""
        check_dataset(dataset)
        if dataset in self._datasets:
            raise KeyRingError(f"dataset {dataset!r} is already in the key ring")
        self._datasets[dataset] = _Dataset(os.urandom(HANDLE_KEY_BYTES), 1, os.urandom(SEED_BYTES))

    def handle_key(self, dataset: str) -> bytes:
        return self._get(dataset).handle_key

    def current(self, dataset: str) -> tuple[int, bytes]:
        """The epoch new tables and queries use, and its OPRF seed."""
        entry = self._get(dataset)
        return entry.epoch, entry.seed

    def seed(self, dataset: str, epoch: int) -> bytes:
        """The OPRF seed of ``epoch``; only the current epoch still has one."""
        entry = self._get(dataset)
        if epoch == entry.epoch:
            return entry.seed
        if epoch in entry.retired:
            problem = f"epoch {epoch} was retired at {entry.retired[epoch].isoformat()}"
        elif entry.prepared is not None and epoch == entry.epoch + 1:
            problem = f"epoch {epoch} is prepared but starts only once its tables are built"
        else:
            problem = f"there is no epoch {epoch}"
        retired = ", ".join(map(str, sorted(entry.retired))) or "none"
        raise KeyRingError(
            f"dataset {dataset!r}: {problem}; current epoch {entry.epoch}, retired: {retired}"
        )

    def retired_at(self, dataset: str, epoch: int) -> datetime | None:
        """When ``epoch`` was retired; None if it was not (current, prepared or unknown)."""
        return self._get(dataset).retired.get(epoch)

    def prepared(self, dataset: str) -> int | None:
        """The epoch ``prepare`` drew and ``rotate`` will start, if any."""
        entry = self._get(dataset)
        return None if entry.prepared is None else entry.epoch + 1

    def prepare(self, dataset: str) -> int:
        """Draw the next epoch's seed without starting it: the current epoch serves meanwhile."""
        entry = self._get(dataset)
        if entry.prepared is not None:
            raise KeyRingError(
                f"dataset {dataset!r}: epoch {entry.epoch + 1} is already prepared; it starts "
                "once its tables are built"
            )
        if entry.epoch >= 2**32 - 1:
            raise KeyRingError(f"dataset {dataset!r} has no epoch numbers left")
        entry.prepared = os.urandom(SEED_BYTES)
        return entry.epoch + 1

    def build_epoch(self, dataset: str) -> tuple[int, bytes]:
        """The epoch tables are built for, and its seed: the prepared one if any, else current."""
        entry = self._get(dataset)
        if entry.prepared is not None:
            return entry.epoch + 1, entry.prepared
        return entry.epoch, entry.seed

    def rotate(self, dataset: str) -> int:
        """Start the next epoch (the prepared one, else a fresh seed); the previous one is
        retired and its seed dropped."""
        entry = self._get(dataset)
        if entry.prepared is None:
            self.prepare(dataset)
        entry.retired[entry.epoch] = _now()
        entry.epoch += 1
        entry.seed, entry.prepared = entry.prepared, None
        return entry.epoch

    def _to_json(self) -> bytes:
        return json.dumps(
            {
                "format": FORMAT,
                "datasets": {
                    name: {
                        "handle_key": d.handle_key.hex(),
                        "epoch": d.epoch,
                        "seed": d.seed.hex(),
                        "retired": {str(e): t.isoformat() for e, t in sorted(d.retired.items())},
                        **({"prepared": d.prepared.hex()} if d.prepared is not None else {}),
                    }
                    for name, d in sorted(self._datasets.items())
                },
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def _from_json(cls, data: bytes) -> KeyRing:
        ring = cls()
        try:
            raw = json.loads(data)
            if raw["format"] != FORMAT:
                raise KeyRingError(f"unsupported key ring content format {raw['format']!r}")
            for name, d in raw["datasets"].items():
                check_dataset(name)
                entry = _Dataset(
                    bytes.fromhex(d["handle_key"]),
                    int(d["epoch"]),
                    bytes.fromhex(d["seed"]),
                    {int(e): datetime.fromisoformat(t) for e, t in d["retired"].items()},
                    bytes.fromhex(d["prepared"]) if "prepared" in d else None,
                )
                seeds = (entry.seed, entry.prepared or entry.seed)
                if len(entry.handle_key) != HANDLE_KEY_BYTES or any(
                    len(seed) != SEED_BYTES for seed in seeds
                ):
                    raise ValueError
                ring._datasets[name] = entry
        except (InputError, ValueError, KeyError, TypeError, AttributeError):
            raise KeyRingError("corrupt key ring content") from None
        return ring

    def seal(self, passphrase: bytes, *, scrypt_log2_n: int = SCRYPT_LOG2_N) -> bytes:
        """The ring encrypted under ``passphrase`` (lower ``scrypt_log2_n`` only in tests)."""
        return seal(self._to_json(), passphrase, scrypt_log2_n=scrypt_log2_n)

    @classmethod
    def open(cls, blob: bytes, passphrase: bytes) -> KeyRing:
        """Decrypt a sealed ring; a wrong passphrase or altered blob is a ``KeyRingError``."""
        return cls._from_json(unseal(blob, passphrase))

    def save(
        self,
        path: str | os.PathLike[str],
        passphrase: bytes,
        *,
        scrypt_log2_n: int = SCRYPT_LOG2_N,
    ) -> None:
        """Seal and write atomically, readable by the owner only (0600)."""
        atomic_write(path, [self.seal(passphrase, scrypt_log2_n=scrypt_log2_n)], private=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: bytes) -> KeyRing:
        source = Source(str(path))
        try:
            with open(path, "rb") as file:
                blob = file.read()
        except OSError as error:
            raise KeyRingError(f"cannot read key ring: {error.strerror}", source) from None
        try:
            return cls.open(blob, passphrase)
        except KeyRingError as error:
            raise KeyRingError(str(error), source) from None


def seal(
    plaintext: bytes,
    passphrase: bytes,
    *,
    magic: bytes = MAGIC,
    what: str = "key ring",
    scrypt_log2_n: int = SCRYPT_LOG2_N,
) -> bytes:
    """``plaintext`` under ``passphrase`` in the format above; ``magic`` (8 bytes) names what is
    sealed and is authenticated with the header, so one sealed secret never opens as another."""
    if not passphrase:
        raise KeyRingError(f"an empty passphrase cannot protect the {what}")
    header = _HEADER.pack(
        magic, FORMAT, scrypt_log2_n, SCRYPT_R, SCRYPT_P, os.urandom(16), os.urandom(12)
    )
    key = _derive(header, passphrase)
    return header + AESGCM(key).encrypt(header[-12:], plaintext, header)


def unseal(
    blob: bytes, passphrase: bytes, *, magic: bytes = MAGIC, what: str = "key ring"
) -> bytes:
    """The plaintext of ``seal``; a wrong passphrase or altered blob is a ``KeyRingError``."""
    if len(blob) < _HEADER.size or blob[: len(magic)] != magic:
        raise KeyRingError(f"not a kinlink {what}")
    header = blob[: _HEADER.size]
    try:
        return AESGCM(_derive(header, passphrase)).decrypt(
            header[-12:], blob[_HEADER.size :], header
        )
    except InvalidTag:
        raise KeyRingError(f"cannot open the {what}: wrong passphrase or damaged file") from None


def _derive(header: bytes, passphrase: bytes) -> bytes:
    """The AES-256-GCM key from the passphrase and the scrypt parameters and salt in ``header``."""
    _, version, log2_n, r, p, salt, _ = _HEADER.unpack(header)
    if version != FORMAT:
        raise KeyRingError(f"unsupported key ring format {version} (this build reads {FORMAT})")
    if min(log2_n, r, p) < 1 or p > 4 or 128 * r * 2**log2_n > MAX_SCRYPT_MEMORY:
        raise KeyRingError("key ring has out-of-range scrypt parameters")
    return Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(passphrase)


def passphrase_from_env(var: str = PASSPHRASE_VAR) -> bytes:
    """The key ring passphrase from the environment (so it is not on the command line)."""
    value = os.environ.get(var)
    if not value:
        raise KeyRingError(f"set the key ring passphrase in the environment variable {var}")
    return value.encode()
