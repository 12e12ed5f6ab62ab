"""Progress bars for long work, on stderr and only when it is a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from tqdm import tqdm


@contextmanager
def progress(total: int, description: str, unit: str = "id") -> Iterator[Callable[[int], None]]:
    """Yield an ``advance(n)`` callable; thread-safe, as OPRF batches report from worker threads."""
    with tqdm(
        total=total, desc=description, unit=unit, unit_scale=True, disable=None, leave=False
    ) as bar:
        yield bar.update


@contextmanager
def progress_bars(
    descriptions: list[str], total: int, unit: str = "id"
) -> Iterator[list[Callable[[int], None]]]:
    """One bar per description, stacked (a node each in ``psi screen``); like ``progress``,
    shown only on a terminal."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                tqdm(
                    total=total,
                    desc=description,
                    unit=unit,
                    unit_scale=True,
                    disable=None,
                    leave=False,
                    position=i,
                )
            ).update
            for i, description in enumerate(descriptions)
        ]
