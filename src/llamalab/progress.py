"""One progress bar style for every long stage: count, elapsed time, ETA and live fields such as the loss."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def new_progress(console: Console, unit: str) -> Progress:
    """A rich Progress in llamalab's style; each task shows `info` (e.g. loss, tokens/s) after the bar."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console,
    )


@contextlib.contextmanager
def progress_bar(console: Console, description: str, total: int, unit: str = "it") -> Iterator[Callable[..., None]]:
    """Yield `advance(n, **fields)`; fields (e.g. loss=0.41) are shown after the bar."""
    with new_progress(console, unit) as progress:
        task_id = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: object) -> None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            progress.update(task_id, advance=n, **({"info": info} if fields else {}))

        yield advance
