"""Trainer callbacks: a rich progress bar, a per-step log, and checkpoints that are complete or ignored."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    Progress,
)
from transformers import TrainerCallback

from llamalab.progress import new_progress
from llamalab.runs.files import append_jsonl, write_text_atomic

CHECKPOINT_DONE = "CHECKPOINT_DONE"


class ProgressCallback(TrainerCallback):
    """Shows steps, loss, tokens/s and ETA; appends every logged step to train_log.jsonl."""

    def __init__(self, console: Console, log_path: Path):
        self.console = console
        self.log_path = log_path
        self.progress: Progress | None = None
        self.start_tokens = 0
        self.start_time = 0.0
        self.tokens_this_session = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = new_progress(self.console, "steps")
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.start_tokens = state.num_input_tokens_seen
        self.start_time = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task_id, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        self.tokens_this_session = state.num_input_tokens_seen - self.start_tokens
        rate = self.tokens_this_session / max(time.perf_counter() - self.start_time, 1e-9)
        append_jsonl(self.log_path, [{"step": state.global_step, **logs, "tokens_per_s": round(rate, 1)}])
        if self.progress:
            self.progress.update(self.task_id, info=f"loss {logs['loss']:.4f}  {rate:,.0f} tok/s")

    def on_save(self, args, state, control, **kwargs):
        # The trainer calls on_save after the checkpoint folder is fully written: mark it usable.
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_text_atomic(folder / CHECKPOINT_DONE, f"{state.global_step}\n")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint marked complete; unmarked ones (cut off mid-write by a kill) are removed."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for path in reversed(found):
        if (path / CHECKPOINT_DONE).is_file():
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None
