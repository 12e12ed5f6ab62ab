"""The client's side of a labelled query: blind, have the node evaluate, finalize, look up, decode.

``evaluate`` is whatever carries blinded elements to the node and back (a function call in tests
and the local demo, a gRPC stream in ``nodes.client.client``); nothing else leaves this process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from psi.errors import CryptoError
from psi.labels import Label, decode_label
from psi.oprf import Oprf, Progress
from psi.table import Table, derive, match_tags

Evaluate = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Found:
    """Input ``index`` matched an entry written in table version ``written``."""

    index: int
    label: Label
    written: int


@dataclass(frozen=True)
class QueryResult:
    found: list[Found]
    outputs: np.ndarray  # the finalized OPRF outputs, row i for input i (cacheable per epoch)
    false_hits: int


def finalize_outputs(
    oprf: Oprf, inputs: Sequence[bytes], evaluate: Evaluate, progress: Progress | None = None
) -> np.ndarray:
    """F(k, x) for each input, with the node's key used only through ``evaluate``."""
    blinds, blinded = oprf.blind_batch(inputs, progress=progress)
    evaluated = evaluate(blinded)
    if evaluated.shape != blinded.shape:
        raise CryptoError(f"the node returned {len(evaluated)} elements for {len(blinded)} sent")
    return oprf.finalize_batch(inputs, blinds, evaluated, progress=progress)


def lookup(table: Table, outputs: np.ndarray) -> tuple[list[Found], int]:
    """Match finalized outputs against a table and decode the labels of the hits only."""
    return lookup_tags(table, *derive(table.header.dataset, table.header.epoch, outputs))


def lookup_tags(table: Table, tags: np.ndarray, keys: np.ndarray) -> tuple[list[Found], int]:
    """``lookup`` on the tags and keys ``psi.table.derive`` gives for the outputs."""
    result = match_tags(table, tags, keys)
    found = [Found(m.query, decode_label(m.label), m.written) for m in result.matches]
    return found, result.false_hits


def labelled_query(
    oprf: Oprf,
    inputs: Sequence[bytes],
    evaluate: Evaluate,
    table: Table,
    progress: Progress | None = None,
) -> QueryResult:
    outputs = finalize_outputs(oprf, inputs, evaluate, progress)
    found, false_hits = lookup(table, outputs)
    return QueryResult(found, outputs, false_hits)
