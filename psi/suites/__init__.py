"""OPRF ciphersuites by name. Nodes negotiate a suite by its RFC 9497 identifier.

A suite is a prime-order group with RFC 9380 hashing and a hash function, exposed as batch
operations over numpy arrays so that the OPRF layer pays Python overhead once per chunk, not once
per curve operation. Adding a suite (a national SM2/SM3 suite, say) means one module here that
implements ``Suite`` plus its entry in ``SUITES``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from psi.errors import KinlinkError
from psi.suites.ristretto255 import Ristretto255Sha512


class Suite(Protocol):
    """The group and hash of RFC 9497 §2.1 and §4, batched."""

    name: str  # RFC 9497 identifier, e.g. "ristretto255-SHA512"
    element_size: int  # Ne
    scalar_size: int  # Ns
    output_size: int  # Nh
    hash_name: str  # hashlib name of the suite's Hash

    def hash_to_group(self, msgs: Sequence[bytes], dst: bytes) -> np.ndarray:
        """HashToGroup of each message: (n, Ne) uint8; an identity result raises CryptoError."""
        ...

    def hash_to_scalar(self, msg: bytes, dst: bytes) -> bytes: ...

    def random_scalars(self, n: int) -> np.ndarray:
        """n uniformly random non-zero scalars: (n, Ns) uint8."""
        ...

    def invert_scalars(self, scalars: np.ndarray) -> np.ndarray:
        """Inverses of non-zero scalars, one field inversion for the whole batch."""
        ...

    def scalar_mult(self, scalars: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """scalars[i]·elements[i] (a single scalar row broadcasts). Each element is deserialised
        and validated: non-canonical encodings and the identity raise CryptoError with the row."""
        ...

    def scalar_mult_base(self, scalar: bytes) -> bytes: ...

    def scalar_is_zero(self, scalar: bytes) -> bool: ...


SUITES: dict[str, Suite] = {s.name: s for s in (Ristretto255Sha512(),)}
DEFAULT_SUITE = "ristretto255-SHA512"


class UnknownSuiteError(KinlinkError):
    pass


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        known = ", ".join(sorted(SUITES))
        raise UnknownSuiteError(f"unknown OPRF ciphersuite {name!r}; known: {known}") from None
