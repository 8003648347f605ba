"""Progress of a long step, readable on a terminal and in a log.

On a terminal it is Rich's progress bar. Anywhere else (a file, a pipe, CI) a bar is not
drawn until the step ends, so a tune or a distillation that runs for half an hour would look
idle; there it is one plain line at most every `every_s` seconds, and one when the step ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress

__all__ = ["Advance", "progress"]

# Counts `n` more items done.
Advance = Callable[[int], None]

LOG_EVERY_S = 30.0


@contextmanager
def progress(
    console: Console,
    description: str,
    total: int,
    completed: int = 0,
    every_s: float = LOG_EVERY_S,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Advance]:
    """Show `description` advancing towards `total` items while the block runs; yields the
    function that counts items done.

    Args:
        console: where it is shown; a bar when `console.is_terminal`, else plain lines.
        description: what is being done, e.g. `scoring /doc256`.
        total: the items the step has in all.
        completed: items already done before it starts (e.g. read from a cache).
        every_s: the least seconds between two plain lines (the last is always written).
        clock: seconds, for the plain lines' pacing and elapsed time.
    """
    if console.is_terminal:
        with Progress(console=console) as bar:
            task = bar.add_task(description, total=total, completed=completed)
            yield lambda n: bar.advance(task, n)
        return
    lines = _PlainLines(console, description, total, completed, every_s, clock)
    yield lines.advance
    lines.write()


class _PlainLines:
    def __init__(
        self,
        console: Console,
        description: str,
        total: int,
        completed: int,
        every_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._console, self._description, self._total = console, description, total
        self._done, self._every_s, self._clock = completed, every_s, clock
        self._started = self._last = clock()

    def advance(self, n: int) -> None:
        self._done += n
        if self._clock() - self._last >= self._every_s and self._done < self._total:
            self.write()

    def write(self) -> None:
        self._last = self._clock()
        share = f" ({100 * self._done / self._total:.0f}%)" if self._total else ""
        elapsed = self._last - self._started
        self._console.print(
            f"{self._description}: {self._done:,} of {self._total:,}{share}, {elapsed:.0f} s",
            markup=False,
            highlight=False,
        )
