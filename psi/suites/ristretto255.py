"""ristretto255 with SHA-512 (RFC 9497 §4.1) over libsodium, through the ``rbcl`` binding.

rbcl ships its own libsodium build, so nodes need no system library. It writes that build to the
temporary directory at import and never deletes it; this module unlinks the file once the library
is mapped (the mapping outlives the name), so importing leaves nothing behind. Its Python
wrappers copy and check every argument; batches instead call the same library through ctypes with
pointers into numpy buffers (about 0.4 µs per call against ~45 µs for a scalar multiplication),
driven by ``map`` over address ranges rather than a Python loop. No curve arithmetic is written
here: every group and scalar operation is a libsodium function.

Decoding is strict whatever libsodium is bundled: RFC 9496 §4.3.1 rejects an encoding that is not
a canonical (below p), non-negative (even) field element, and libsodium 1.0.18 (rbcl 1.1.2) ignores
bit 255, so that a valid element with the bit set decodes as if it were unset. ``_noncanonical``
checks the encoding's bytes over a whole batch (numpy, about 35 ns a row) before any libsodium call;
libsodium, in every version, then checks the rest (the square roots, the signs of xy and t).

Two handles to the one library: the costly operations (scalar multiplication, the hash-to-group
map, the inversion) go through ``ctypes.CDLL``, which releases the GIL for each call, so threads run
them on all cores; the cheap scalar operations (random, reduce, multiply: well under a microsecond)
go through ``ctypes.PyDLL``, which keeps the GIL. Releasing it there would buy no parallelism and
would hand the GIL back and forth between threads thousands of times per chunk, each contended
hand-over costing a thread wake-up that dwarfs the operation.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import rbcl
import rbcl.rbcl

from psi.errors import CryptoError
from psi.hash_to_curve import expand_message_xmd, expand_message_xmd_batch

_vp = ctypes.c_void_p
_sodium = rbcl.rbcl._sodium
# Private handles on the library rbcl already mapped (argtypes set here stay here); then its file,
# a fresh copy in the temporary directory at every import, goes.
_lib = ctypes.CDLL(_sodium._name, handle=_sodium._handle)
_pylib = ctypes.PyDLL(_sodium._name, handle=_sodium._handle)
with contextlib.suppress(OSError):  # gone already (another import), or a system that keeps it
    os.unlink(_sodium._name)
for _handle, _name, _argc, _restype in (
    (_lib, "crypto_core_ristretto255_from_hash", 2, ctypes.c_int),
    (_lib, "crypto_core_ristretto255_is_valid_point", 1, ctypes.c_int),
    (_lib, "crypto_core_ristretto255_scalar_invert", 2, ctypes.c_int),
    (_lib, "crypto_scalarmult_ristretto255", 3, ctypes.c_int),
    (_lib, "crypto_scalarmult_ristretto255_base", 2, ctypes.c_int),
    (_pylib, "crypto_core_ristretto255_scalar_random", 1, None),
    (_pylib, "crypto_core_ristretto255_scalar_reduce", 2, None),
    (_pylib, "crypto_core_ristretto255_scalar_mul", 3, None),
):
    getattr(_handle, _name).argtypes = [_vp] * _argc
    getattr(_handle, _name).restype = _restype

_from_hash = _lib.crypto_core_ristretto255_from_hash
_is_valid = _lib.crypto_core_ristretto255_is_valid_point
_scalar_invert = _lib.crypto_core_ristretto255_scalar_invert
_scalarmult = _lib.crypto_scalarmult_ristretto255
_scalarmult_base = _lib.crypto_scalarmult_ristretto255_base
_scalar_random = _pylib.crypto_core_ristretto255_scalar_random
_scalar_reduce = _pylib.crypto_core_ristretto255_scalar_reduce
_scalar_mul = _pylib.crypto_core_ristretto255_scalar_mul

NE = 32
NS = 32


def _rows(array: np.ndarray, width: int) -> np.ndarray:
    """A C-contiguous (n, width) uint8 view or copy; a clear error for the wrong shape."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim != 2 or array.shape[1] != width:
        raise CryptoError(f"expected rows of {width} bytes, got an array of shape {array.shape}")
    return array


# p = 2^255 - 19, little-endian: its top byte, its 30 middle bytes, its low byte.
_P_TOP, _P_MIDDLE, _P_LOW = 0x7F, 0xFF, 0xED


def _noncanonical(elements: np.ndarray) -> np.ndarray:
    """Rows that RFC 9496 §4.3.1 step 1 refuses before any curve arithmetic: the 32 bytes, as a
    little-endian integer s, are not below p (bit 255 set, or p <= s < 2^255), or s is negative
    (odd). A mask over an (n, 32) uint8 array."""
    top, low = elements[:, 31], elements[:, 0]
    bad = (top > _P_TOP) | (low & 1).astype(bool)
    edge = np.flatnonzero((top == _P_TOP) & (low >= _P_LOW))  # at most p + 18: rare, exact check
    if len(edge):
        bad[edge] |= (elements[edge, 1:31] == _P_MIDDLE).all(axis=1)
    return bad


def _addresses(array: np.ndarray, width: int, n: int, start: int = 0, step: int = 1) -> range:
    """Addresses of rows ``start, start + step, ...`` (n of them) of a C-contiguous array."""
    base = array.ctypes.data + width * start
    return range(base, base + width * step * n, width * step)


class Ristretto255Sha512:
    name = "ristretto255-SHA512"
    element_size = NE
    scalar_size = NS
    output_size = 64
    hash_name = "sha512"

    def hash_to_group(self, msgs: Sequence[bytes], dst: bytes) -> np.ndarray:
        """hash_to_ristretto255 (RFC 9380 App. B, RFC 9496 §4.3.4): xmd to 64 bytes, then the
        libsodium one-way map of both halves."""
        n = len(msgs)
        uniform = np.frombuffer(expand_message_xmd_batch(msgs, dst, 64, "sha512"), np.uint8)
        out = np.empty((n, NE), dtype=np.uint8)
        if n:
            _consume(
                map(_from_hash, _addresses(out, NE, n), _addresses(uniform.reshape(n, 64), 64, n))
            )
        identity = ~out.any(axis=1)
        if identity.any():
            raise CryptoError(f"input {int(np.argmax(identity))} hashes to the identity element")
        return out

    def hash_to_scalar(self, msg: bytes, dst: bytes) -> bytes:
        out = ctypes.create_string_buffer(NS)
        _scalar_reduce(out, expand_message_xmd(msg, dst, 64, "sha512"))
        return out.raw

    def random_scalars(self, n: int) -> np.ndarray:
        """Uniform non-zero scalars by RFC 9497 §4.7's second method: 64 random bytes (more than
        the 48 it asks for) reduced modulo the group order, one OS read for the whole batch."""
        out = np.empty((n, NS), dtype=np.uint8)
        wide = np.frombuffer(os.urandom(64 * n), dtype=np.uint8)
        _consume(map(_scalar_reduce, _addresses(out, NS, n), _addresses(wide, 64, n)))
        for i in np.flatnonzero(~out.any(axis=1)).tolist():  # probability 2^-252 per scalar
            _scalar_random(out[i:].ctypes.data)  # libsodium's rejection sampling: never zero
        return out

    def invert_scalars(self, scalars: np.ndarray) -> np.ndarray:
        """Montgomery's trick: prefix products, one inversion, then walk back (3 cheap
        multiplications per scalar instead of one ~45 µs inversion each)."""
        scalars = _rows(scalars, NS)
        n = len(scalars)
        out = np.empty_like(scalars)
        if n == 0:
            return out
        # prefix[i] = s_0 ... s_i
        prefix = np.empty_like(scalars)
        prefix[0] = scalars[0]
        _consume(
            map(
                _scalar_mul,
                _addresses(prefix, NS, n - 1, 1),
                _addresses(prefix, NS, n - 1, 0),
                _addresses(scalars, NS, n - 1, 1),
            )
        )
        # back[i] = (s_0 ... s_i)^-1, from the last down: back[i-1] = back[i] * s_i
        back = np.empty_like(scalars)
        if _scalar_invert(back[n - 1 :].ctypes.data, prefix[n - 1 :].ctypes.data) != 0:
            raise CryptoError("cannot invert a zero scalar")
        _consume(
            map(
                _scalar_mul,
                _addresses(back, NS, n - 1, n - 2, -1),
                _addresses(back, NS, n - 1, n - 1, -1),
                _addresses(scalars, NS, n - 1, n - 1, -1),
            )
        )
        # s_i^-1 = back[i] * prefix[i-1]; s_0^-1 = back[0]
        out[0] = back[0]
        _consume(
            map(
                _scalar_mul,
                _addresses(out, NS, n - 1, 1),
                _addresses(back, NS, n - 1, 1),
                _addresses(prefix, NS, n - 1, 0),
            )
        )
        return out

    def scalar_mult(self, scalars: np.ndarray, elements: np.ndarray) -> np.ndarray:
        scalars = _rows(scalars, NS)
        elements = _rows(elements, NE)
        n = len(elements)
        if len(scalars) not in (1, n):
            raise CryptoError(f"{len(scalars)} scalars for {n} elements")
        refused = np.flatnonzero(_noncanonical(elements))
        if len(refused):
            raise CryptoError(f"element {int(refused[0])}: not a canonical ristretto255 encoding")
        out = np.empty((n, NE), dtype=np.uint8)
        s = (
            itertools.repeat(scalars.ctypes.data, n)
            if len(scalars) == 1
            else _addresses(scalars, NS, n)
        )
        # A non-zero status (a bad encoding, or an identity product) stops the walk at that row.
        failed = next(
            itertools.compress(
                itertools.count(),
                map(_scalarmult, _addresses(out, NE, n), s, _addresses(elements, NE, n)),
            ),
            None,
        )
        if failed is not None:
            raise CryptoError(
                f"element {failed}: {self._reject_reason(elements[failed].tobytes())}"
            )
        return out

    @staticmethod
    def _reject_reason(element: bytes) -> str:
        if not any(element):
            return "the identity element is not a valid input"
        if _is_valid(element) != 1:  # after _noncanonical: libsodium's checks of the rest
            return "not a canonical ristretto255 encoding"
        return "the product is the identity element (zero scalar)"

    def scalar_mult_base(self, scalar: bytes) -> bytes:
        out = ctypes.create_string_buffer(NE)
        if _scalarmult_base(out, scalar) != 0:
            raise CryptoError("the zero scalar has no public element")
        return out.raw

    def scalar_is_zero(self, scalar: bytes) -> bool:
        return not any(scalar)


def _consume(calls: Iterator[int | None]) -> None:
    """Run a lazy ``map`` of libsodium calls to the end (calls that return nothing, or always 0)."""
    deque(calls, maxlen=0)
