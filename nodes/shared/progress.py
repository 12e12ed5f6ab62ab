"""Progress bars for long work, on stderr and only when it is a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress(total: int, description: str, unit: str = "id") -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable; thread-safe, as OPRF batches report from worker threads."""
    with tqdm(
        total=total, desc=description, unit=unit, unit_scale=True, disable=None, leave=False
    ) as bar:
        yield bar.update
