"""One progress style for every long stage: count, elapsed time, ETA and live fields such as the loss.

On a terminal (or in Jupyter) that is a rich progress bar. Anywhere else (a redirected log, a pipe, CI) rich would
draw nothing until the stage ends, so plain lines are printed as it goes instead.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressSample,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LINE_EVERY_S = 10.0  # a log line at least this often while a stage advances...
LINE_PARTS = 10  # ...or each time another tenth of it is done, whichever comes first


def new_progress(console: Console, unit: str, speed_window_s: float = 3600.0) -> Progress:
    """A rich Progress in llamalab's style; each task shows `info` (e.g. loss, tokens/s) after the count.

    The ETA comes from the speed over the last `speed_window_s` seconds, from the task's start on (`progress_bar`):
    steps further apart than the window (a study's cells, a large model's batches) give none, so long steps need a
    long window. A console that is not an interactive terminal gets a `LineProgress` instead of the live bar.
    """
    if not (console.is_interactive or console.is_jupyter):
        return LineProgress(console, unit, speed_window_s)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, speed_estimate_period=speed_window_s,
    )


class LineProgress(Progress):
    """Progress as plain, whole lines for logs, e.g. `train  25/150 steps  0:00:41 elapsed  ETA 0:03:25  loss 0.41`.

    A line is printed when the count advances and ~10 s have passed or another 10% is done since the last line,
    and when the task is done (or the progress stops, e.g. on an error). Rich flushes after every print, so a
    `tail -f` on the log follows along.
    """

    def __init__(self, console: Console, unit: str, speed_window_s: float = 3600.0):
        # rich's tracking (elapsed, speed, ETA), not its display
        super().__init__(console=console, disable=True, speed_estimate_period=speed_window_s)
        self.unit = unit
        self._last_line: dict[TaskID, tuple[float, float]] = {}  # count and time of each task's last line

    def update(self, task_id: TaskID, **changes: Any) -> None:
        """Update the task as rich does, then print a line if one is due."""
        super().update(task_id, **changes)
        task = self._tasks[task_id]
        last_count, last_time = self._last_line.get(task_id, (0.0, task.start_time or 0.0))
        if task.completed == last_count:
            return
        if task.finished or self.get_time() - last_time >= LINE_EVERY_S or (
            _part(task.completed, task.total) > _part(last_count, task.total)
        ):
            self._print_line(task)

    def stop(self) -> None:
        """Print each task's final state, unless its last line already shows it."""
        super().stop()
        for task in self.tasks:
            if self._last_line.get(task.id, (None,))[0] != task.completed:
                self._print_line(task)

    def _print_line(self, task: Task) -> None:
        total = "?" if task.total is None else f"{task.total:.0f}"
        remaining = task.time_remaining
        eta = "-:--:--" if remaining is None else _clock(remaining)
        parts = [task.description, f"{task.completed:.0f}/{total} {self.unit}", f"{_clock(task.elapsed)} elapsed",
                 f"ETA {eta}", str(task.fields.get("info", ""))]
        # soft_wrap: one physical line however narrow the console, so each progress report is one log line.
        self.console.print("  ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)
        self._last_line[task.id] = (task.completed, self.get_time())


def started_at_zero(progress: Progress, task_id: TaskID) -> None:
    """Count the time before the first advance in the speed: rich measures it from the first advance on, so four
    hour-long cells finishing together read as four cells in no time (an ETA of seconds for hours of work)."""
    task = progress._tasks[task_id]
    with progress._lock:
        task._progress.append(ProgressSample(task.start_time or progress.get_time(), 0))


def _part(count: float, total: float | None) -> int:
    """Which tenth of the stage `count` has reached (always 0 when the total is unknown)."""
    return int(count * LINE_PARTS // total) if total else 0


def _clock(seconds: float | None) -> str:
    return str(datetime.timedelta(seconds=int(seconds or 0)))


@contextlib.contextmanager
def progress_bar(console: Console, description: str, total: int, unit: str = "it", speed_window_s: float = 3600.0,
                 done: int = 0) -> Iterator[Callable[..., None]]:
    """Yield `advance(n, **fields)`; fields (e.g. loss=0.41) are shown after the count. `done` counts work finished
    before (a resume): shown in the count, but not taken for speed, so the ETA stays honest."""
    with new_progress(console, unit, speed_window_s) as progress:
        task_id = progress.add_task(description, total=total, completed=done, info="")
        started_at_zero(progress, task_id)

        def advance(n: int = 1, **fields: object) -> None:
            info = "  ".join(f"{k} {v}" for k, v in fields.items())
            progress.update(task_id, advance=n, **({"info": info} if fields else {}))

        yield advance
