"""Catalogue requests and disputes (POLICY.md mechanisms 4 and 5): the checks both ends apply.

Free text that travels (reasons, justifications, notes) is checked on both ends to hold no
identity number: a dispute names its record by the handle, which only the department resolves.
The node's servicer is ``nodes.department.accountability``; the client's calls and its record of
the disputes it raised are ``nodes.client.accountability``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from protocols.bounds import MAX_TEXT
from protocols.kinlink.v1 import psi_pb2
from psi.errors import InputError
from psi.ids import contains_identifier
from psi.labels import FIELDS, HANDLE_BYTES

_CODE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
REQUEST_PREFIX, DISPUTE_PREFIX = "REQUEST_STATUS_", "DISPUTE_STATUS_"


def check_text(name: str, value: str, most: int = MAX_TEXT) -> str:
    """Free text as it may travel and be stored: present, within ``most`` characters (the wire's
    bound, protocols.bounds) and without a long digit run (never echoed: it may be exactly the
    identity number that must not appear)."""
    value = value.strip()
    if not value:
        raise InputError(f"{name} is required")
    if len(value) > most:
        raise InputError(f"{name} is {len(value)} characters; at most {most}")
    if contains_identifier(value):
        raise InputError(
            f"{name} seems to hold an identity or card number; leave it out (a dispute names its "
            "record by the handle, which only the department can resolve)"
        )
    return value


def check_purposes(purposes: Iterable[str]) -> tuple[str, ...]:
    """Purpose codes: at least one, each a lowercase word; duplicates dropped, order kept."""
    codes = tuple(dict.fromkeys(p.strip() for p in purposes))
    if not codes:
        raise InputError("name at least one purpose")
    bad = [p for p in codes if not _CODE.fullmatch(p)]
    if bad:
        raise InputError(
            f"{len(bad)} purpose code(s) are not lowercase words of at most 32 characters "
            "(letters, digits, _ and -)"
        )
    return codes


def check_fields(fields: Iterable[str]) -> frozenset[str]:
    """Label fields asked for; "status" is always part of a label."""
    asked = frozenset(f.strip() for f in fields) | {"status"}
    if asked - FIELDS:
        raise InputError(
            f"unknown label field(s) {', '.join(sorted(_code(f) for f in asked - FIELDS))}; "
            f"known: {', '.join(sorted(FIELDS))}"
        )
    return asked


def record_reference(node: str, dataset: str, table_version: int, handle: bytes | None) -> str:
    """``node/dataset@vN#handle``: a matched record as the screening's evidence names it, enough
    for the department to find it and for ``psi disputes raise --handle`` to dispute it."""
    return f"{node}/{dataset}@v{table_version}#{handle.hex() if handle else 'no-handle'}"


_REFERENCE = re.compile(r"(?P<node>[^/\s]+)/(?P<dataset>[^@\s]+)@v\d+#(?P<handle>\S+)")


def parse_record(text: str, node: str | None, dataset: str | None) -> tuple[str, str, bytes]:
    """(node, dataset, handle) of a record to dispute: a ``record_reference`` as it stands, or
    a bare handle with the node and dataset given apart (which must agree with a reference)."""
    found = _REFERENCE.fullmatch(text.strip())
    if found:
        for given, named, what in (
            (node, found["node"], "node"),
            (dataset, found["dataset"], "dataset"),
        ):
            if given and given != named:
                raise InputError(f"--{what} {given!r} differs from the evidence's {named!r}")
        node, dataset, text = found["node"], found["dataset"], found["handle"]
    if not (node and dataset):
        raise InputError(
            "name the record by its evidence value (node/dataset@vN#handle), or give --node "
            "and --dataset with its record_handle"
        )
    return node, dataset, parse_handle(text)


def parse_handle(text: str) -> bytes:
    """A record handle as printed in matches (``record_handle``): hexadecimal."""
    try:
        handle = bytes.fromhex(text.strip())
    except ValueError:
        raise InputError("a record handle is hexadecimal (the record_handle column)") from None
    if len(handle) != HANDLE_BYTES:
        raise InputError(f"a record handle is {HANDLE_BYTES} bytes ({2 * HANDLE_BYTES} hex digits)")
    return handle


def _code(value: str) -> str:
    """Echo a client-supplied code only when it looks like one."""
    return repr(value) if _CODE.fullmatch(value) else "value"


def request_hint(node: str, dataset: str, purpose: str) -> str:
    """How a refused client asks for what it was refused (the lead's `_grant` messages end so)."""
    code = purpose if _CODE.fullmatch(purpose) else "PURPOSE"
    return (
        f"ask for it with `psi catalog request --federation FILE --node {node} --dataset "
        f"{dataset} --purpose {code} --legal-basis REF --reason TEXT`"
    )


def request_status(message: psi_pb2.AccessRequestStatus) -> str:
    """``pending``, ``approved`` or ``rejected``."""
    return psi_pb2.RequestStatus.Name(message.status).removeprefix(REQUEST_PREFIX).lower()


def dispute_status(message: psi_pb2.Dispute) -> str:
    """``open``, ``confirmed``, ``corrected`` or ``withdrawn``."""
    return psi_pb2.DisputeStatus.Name(message.status).removeprefix(DISPUTE_PREFIX).lower()
