"""Exceptions shared by the core. A user mistake is an ``InputError``: the CLI prints its message
and exits non-zero, never a traceback. Messages never carry a full identifier (``psi.ids.mask``).
"""

from __future__ import annotations

from dataclasses import dataclass


class KinlinkError(Exception):
    """Base of every error kinlink raises on purpose."""


class CryptoError(KinlinkError):
    """A cryptographic input was rejected (bad encoding, identity element, failed AEAD)."""


@dataclass(frozen=True)
class Source:
    """Where a value came from, for error messages: file, 1-based line and column name."""

    file: str = "<input>"
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
        if self.column:
            where += f" (column {self.column})"
        return where


class InputError(KinlinkError):
    """A user-supplied value or file is wrong; the message says where and what."""

    def __init__(self, message: str, source: Source | None = None):
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)
