"""Live progress for long work: samples done/total, kept, tokens, spend and ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


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


class RunProgress:
    def __init__(self, console: Console, total: int, budget: Any = None, label: str = "teacher"):
        self.console = console
        self._terminal = console.is_terminal  # asked once: it is an isatty() call
        self.budget = budget  # prices the tokens for the spend column
        self.kept = 0
        self.tokens = 0
        self.spend = 0.0
        self._progress = progress_bar(
            console,
            TextColumn("kept {task.fields[kept]}"),
            TextColumn("{task.fields[tokens]} tok"),
            TextColumn("${task.fields[spend]:.4f}"),
        )
        self._task = self._progress.add_task(label, total=total, kept=0, tokens=0, spend=0.0)
        self._total = total
        self._done = 0
        self._last_line = 0.0

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)
        if not self._terminal:
            self._line()

    def _line(self) -> None:
        self._last_line = time.monotonic()
        self.console.print(
            f"progress: {self._done}/{self._total} samples, kept {self.kept}, {self.tokens} tokens, ${self.spend:.4f}"
        )

    def advance(self, samples: int, prompt_tokens: int, completion_tokens: int) -> None:
        self._done += samples
        self.tokens += prompt_tokens + completion_tokens
        if self.budget is not None:
            self.spend += self.budget.cost(prompt_tokens, completion_tokens)
        self._refresh(samples)

    def snapshot(self) -> dict[str, Any]:
        return {"samples_done": self._done, "samples_total": self._total, "kept": self.kept, "tokens": self.tokens,
                "spend_usd": round(self.spend, 6)}

    def add_kept(self, n: int = 1) -> None:
        self.kept += n
        self._refresh(0)

    def _refresh(self, advance: int) -> None:
        self._progress.update(self._task, advance=advance, kept=self.kept, tokens=self.tokens, spend=self.spend)
        # Logs (CI, cron) get a line every ~10 seconds instead of a redrawn bar.
        if not self._terminal and time.monotonic() - self._last_line > 10:
            self._line()
