"""Live progress for long work: samples done/total, kept, tokens, spend and ETA.

Ranks only bump counters (`steps.Progress`); this view redraws the bar from them a few times a
second, off the request path. Logs (CI, cron) get a line every ~10 seconds instead of a bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from distilforge.pipeline.steps import Progress as Counts


def progress_bar(console: Console, *extra: TextColumn) -> Progress:
    """A bar with done/total, elapsed and ETA; `extra` columns go after the counts."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


class ProgressView:
    """Renders a rank's (or the merged) counts; `refresh` is cheap and called on a timer."""

    def __init__(self, console: Console, counts: Counts | Callable[[], Counts], label: str = "teacher"):
        self.console = console
        self._terminal = console.is_terminal
        self._counts = counts if callable(counts) else (lambda: counts)
        self._bar = progress_bar(console, TextColumn("kept {task.fields[kept]}"), TextColumn("{task.fields[tokens]} tok"),
                                 TextColumn("${task.fields[spend]:.4f}"))
        total = self._counts().total
        self._task = self._bar.add_task(label, total=total, kept=0, tokens=0, spend=0.0)
        self._last_line = time.monotonic()

    def __enter__(self) -> ProgressView:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh()
        self._bar.__exit__(*exc)
        if not self._terminal:
            self._line()

    def _line(self) -> None:
        c = self._counts()
        self._last_line = time.monotonic()
        self.console.print(f"progress: {min(c.done, c.total)}/{c.total} samples, kept {c.kept}, {c.tokens} tokens, "
                           f"${c.spend:.4f}")

    def refresh(self) -> None:
        c = self._counts()
        self._bar.update(self._task, completed=min(c.done, c.total), total=c.total, kept=c.kept, tokens=c.tokens,
                         spend=c.spend)
        if not self._terminal and time.monotonic() - self._last_line > 10:
            self._line()

    async def keep_fresh(self, every: float = 0.25) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(every)
                self.refresh()


class LogLines:
    """Progress for logs (no terminal): one line every `every` seconds, and one at the end.

    For stages that show a bar on a terminal (eval, training): in a log a bar prints nothing until it
    ends, and a carriage-return bar prints garbage, so they say where they are in plain lines instead.
    """

    def __init__(self, console: Console, label: str, total: int, unit: str, every: float = 10.0):
        self.console, self.label, self.total, self.unit, self.every = console, label, total, unit, every
        self.enabled = not console.is_terminal
        self._started = self._last = time.monotonic()

    def update(self, done: int, extra: str = "", *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < self.every):
            return
        self._last = now
        share = f" ({done / self.total:.0%})" if self.total else ""
        self.console.print(f"{self.label}: {done}/{self.total} {self.unit}{share}{extra}, "
                           f"{now - self._started:.0f} s", highlight=False, soft_wrap=True)
