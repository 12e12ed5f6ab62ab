"""A department's side of one dataset: evaluate its register under a profile's key, seal labels.

Each field profile (the set of label fields a grant allows) has its own OPRF key, derived from the
epoch's seed with the profile in the key info: outputs a client obtains under its grant open no
table sealed for another profile, even one it copied (docs/tables.md). The expensive step is one
OPRF evaluation (a scalar multiplication) per person and profile. Outputs are kept in an
``OutputCache`` per (epoch, profile) under the dataset's handle key, committed chunk by chunk: an
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
from psi.labels import FIELDS, encode_label, profile_name, record_handle
from psi.oprf import KeyPair, Oprf
from psi.table import Table, build_table

CACHE_CHUNK = 16_384

Progress = Callable[[int], None]


def key_info(dataset: str, epoch: int, fields: Iterable[str]) -> bytes:
    """RFC 9497 DeriveKeyPair ``info``: binds a key to its dataset, epoch and field profile."""
    return f"kinlink/{dataset}/{epoch}/{profile_name(fields)}".encode()


def server_key(
    oprf: Oprf, keyring: KeyRing, dataset: str, epoch: int, fields: Iterable[str]
) -> KeyPair:
    """The OPRF key of the dataset's field profile ``fields`` for ``epoch``; a retired or unknown
    epoch is a clear KeyRingError."""
    return oprf.derive_key_pair(keyring.seed(dataset, epoch), key_info(dataset, epoch, fields))


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
    fields: Iterable[str] = FIELDS,
    version: int = 1,
    previous: Table | None = None,
    cache: OutputCache | None = None,
    label_size: int = 0,
    progress: Progress | None = None,
) -> tuple[Table, int]:
    """The labelled table of ``register`` for the field profile ``fields`` and the epoch tables
    are built for (the prepared one during a rotation, else the current one): under that
    profile's key, keeping only those fields in labels. Also returns how many OPRF evaluations it
    took (the rest came from ``cache``, which must be the profile's)."""
    epoch, seed = keyring.build_epoch(dataset)
    granted = frozenset(fields)
    key = oprf.derive_key_pair(seed, key_info(dataset, epoch, granted))
    people = list(register.people)
    outputs, computed = evaluate_people(oprf, key, people, cache, progress)
    handle_key = keyring.handle_key(dataset)
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
