"""Progress of a long step: a bar on a terminal, paced plain lines in a log."""

from __future__ import annotations

import io

from rich.console import Console

from rankstream.workers.tools.progress import progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def log_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_in_a_log_a_line_is_written_at_most_every_interval_and_once_at_the_end() -> None:
    console, out = log_console()
    clock = Clock()

    with progress(console, "scoring /doc256", 400, every_s=30, clock=clock) as advance:
        advance(100)  # at once: no line yet
        clock.now += 31
        advance(100)  # 31 s on: a line
        clock.now += 10
        advance(100)  # 10 s after that line: none
        clock.now += 5
        advance(100)

    assert out.getvalue().splitlines() == [
        "scoring /doc256: 200 of 400 (50%), 31 s",
        "scoring /doc256: 400 of 400 (100%), 46 s",
    ]


def test_items_done_before_the_step_count_towards_the_total() -> None:
    console, out = log_console()

    with progress(console, "teacher scores", 10, completed=7, clock=Clock()) as advance:
        advance(3)

    assert out.getvalue().splitlines() == ["teacher scores: 10 of 10 (100%), 0 s"]


def test_an_empty_step_still_says_it_ran() -> None:
    console, out = log_console()

    with progress(console, "retrieval", 0, clock=Clock()):
        pass

    assert out.getvalue().splitlines() == ["retrieval: 0 of 0, 0 s"]


def test_on_a_terminal_it_is_a_bar_that_ends_full() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)

    with progress(console, "indexing corpus.jsonl", 5) as advance:
        advance(5)

    assert "indexing corpus.jsonl" in out.getvalue()
    assert "100%" in out.getvalue()
