"""A department's side of one dataset: evaluate its register under the epoch key and seal labels.

The expensive step is one OPRF evaluation (a scalar multiplication) per person. Outputs are kept
in an ``OutputCache`` per epoch under the dataset's handle key, committed chunk by chunk: an
interrupted build resumes where it stopped, and a rebuild after small register changes evaluates
only new people. With the previous table version, unchanged entries keep their sealed rows, so
the delta between versions holds only what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

import numpy as np

from nodes.department.register import Register
from nodes.shared.cache import OutputCache
from psi.keys import KeyRing
from psi.labels import encode_label, record_handle
from psi.oprf import KeyPair, Oprf
from psi.table import Table, build_table

CACHE_CHUNK = 16_384

Progress = Callable[[int], None]


def key_info(dataset: str, epoch: int) -> bytes:
    """RFC 9497 DeriveKeyPair ``info``: binds a key to its dataset and epoch."""
    return f"kinlink/{dataset}/{epoch}".encode()


def server_key(oprf: Oprf, keyring: KeyRing, dataset: str, epoch: int) -> KeyPair:
    """The dataset's OPRF key for ``epoch``; a retired or unknown epoch is a clear KeyRingError."""
    return oprf.derive_key_pair(keyring.seed(dataset, epoch), key_info(dataset, epoch))


def evaluate_people(
    oprf: Oprf,
    key: KeyPair,
    people: Sequence[str],
    cache: OutputCache | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, int]:
    """OPRF outputs (n, 64) for canonical ids, and how many had to be computed (not cached)."""
    if cache:
        keys = cache.keys(people)
        found, outputs = cache.lookup(keys)
        missing = np.flatnonzero(~found)
    else:
        outputs = np.empty((len(people), oprf.suite.output_size), dtype=np.uint8)
        missing = np.arange(len(people))
    if progress and len(people) > len(missing):
        progress(len(people) - len(missing))
    for lo in range(0, len(missing), CACHE_CHUNK):  # each chunk durable before the next
        rows = missing[lo : lo + CACHE_CHUNK]
        fresh = oprf.evaluate_batch(key.sk, [people[i].encode() for i in rows], progress=progress)
        outputs[rows] = fresh
        if cache:
            cache.put(keys[rows], fresh)
    return outputs, len(missing)


def build_dataset_table(
    register: Register,
    keyring: KeyRing,
    dataset: str,
    *,
    oprf: Oprf,
    fields: Iterable[str] | None = None,
    version: int = 1,
    previous: Table | None = None,
    cache: OutputCache | None = None,
    label_size: int = 0,
    progress: Progress | None = None,
) -> tuple[Table, int]:
    """The labelled table of ``register`` for the dataset's current epoch, keeping only ``fields``
    in labels; also returns how many OPRF evaluations it took (the rest came from the cache)."""
    epoch, _ = keyring.current(dataset)
    key = server_key(oprf, keyring, dataset, epoch)
    people = list(register.people)
    outputs, computed = evaluate_people(oprf, key, people, cache, progress)
    handle_key = keyring.handle_key(dataset)
    granted = None if fields is None else set(fields)
    labels = [
        encode_label(
            [
                replace(e.record, handle=record_handle(handle_key, e.ref))
                for e in register.people[x]
            ],
            granted,
        )
        for x in people
    ]
    table = build_table(
        dataset,
        epoch,
        version,
        outputs,
        labels,
        oprf.suite.name,
        previous=previous,
        label_size=label_size,
    )
    return table, computed
