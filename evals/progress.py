"""Progress of an evaluation run: rich bars on a terminal, plain lines (about every tenth of a
step, and at its end) in CI logs and pipes, where redrawn bars would be noise."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[], None]


class RunProgress:
    def __init__(self, console: Console) -> None:
        self.console = console

    def note(self, message: str) -> None:
        self.console.print(message, highlight=False)

    @contextlib.contextmanager
    def step(self, description: str, total: int) -> Iterator[Advance]:
        """A counted step; the caller calls the yielded function once per item done."""
        if self.console.is_terminal:
            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            ) as bar:
                task = bar.add_task(description, total=total)
                yield lambda: bar.advance(task)
            return
        started = time.perf_counter()
        done = 0
        every = max(1, total // 10)

        def advance() -> None:
            nonlocal done
            done += 1
            if done % every == 0 and done < total:
                self.note(f"{description}: {done}/{total}")

        yield advance
        self.note(f"{description}: {done}/{total} in {time.perf_counter() - started:.1f} s")
