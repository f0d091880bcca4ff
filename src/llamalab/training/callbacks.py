"""Trainer callbacks: progress (a bar or log lines), a per-step log, and checkpoints that are complete or ignored."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.progress import (
    Progress,
)
from transformers import TrainerCallback

from llamalab.config import LlamalabError
from llamalab.progress import new_progress, started_at_zero
from llamalab.runs.files import append_jsonl, read_jsonl, write_text_atomic

CHECKPOINT_DONE = "CHECKPOINT_DONE"


class ProgressCallback(TrainerCallback):
    """Shows steps, loss, tokens/s and ETA; appends every logged step to train_log.jsonl.

    Training logs every step (`logging_steps=1`), so the progress moves on each logged step, carrying that step's
    loss: a progress line printed to a log file shows the loss of the step it counts.
    """

    def __init__(self, console: Console, log_path: Path):
        self.console = console
        self.log_path = log_path
        self.progress: Progress | None = None
        self.start_tokens = 0
        self.start_time = 0.0
        self.tokens_this_session = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # with several processes, the first one logs and shows progress
            return
        # A resumed run starts again from its checkpoint (global_step is already restored here) and logs the
        # steps after it anew: the rows the killed run logged for them would be duplicates.
        drop_log_after(self.log_path, state.global_step)
        # the ETA from the speed over the last hour: a 30 s window saw no two steps of a model whose steps take
        # longer, and never gave an ETA
        self.progress = new_progress(self.console, "steps", speed_window_s=3600.0)
        self.progress.start()
        self.task_id = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        started_at_zero(self.progress, self.task_id)
        self.start_tokens = state.num_input_tokens_seen
        self.start_time = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        if state.is_world_process_zero:
            self.tokens_this_session = state.num_input_tokens_seen - self.start_tokens
            rate = self.tokens_this_session / max(time.perf_counter() - self.start_time, 1e-9)
            append_jsonl(self.log_path, [{"step": state.global_step, **logs, "tokens_per_s": round(rate, 1)}])
            if self.progress:
                info = f"loss {logs['loss']:.4f}  {rate:,.0f} tok/s"
                self.progress.update(self.task_id, completed=state.global_step, info=info)
        diverged(state.global_step, logs, self.on_train_end)  # every process sees the same (gathered) loss

    def on_train_end(self, args=None, state=None, control=None, **kwargs):
        if self.progress:
            self.progress.stop()
            self.progress = None

    def on_save(self, args, state, control, **kwargs):
        # The trainer calls on_save after the checkpoint folder is fully written: mark it usable. With several
        # processes each writes its own part (its RNG state) and none waits for the others: wait for all first.
        if args.world_size > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir() and state.is_world_process_zero:  # the marker lists the files the checkpoint holds
            files = sorted(p.name for p in folder.iterdir() if p.name != CHECKPOINT_DONE)
            write_text_atomic(folder / CHECKPOINT_DONE, "".join(f"{name}\n" for name in files))


def diverged(step: int, logs: dict, before_raising=lambda: None) -> None:
    """Stop a run whose loss or gradient norm is no longer a number.

    The Trainer would log such a step's loss as 0 (its `logging_nan_inf_filter`, switched off here), and the record
    would show a diverged run as a perfect one; continuing would only train a model of NaNs.
    """
    bad = {key: logs[key] for key in ("loss", "grad_norm") if key in logs and not math.isfinite(logs[key])}
    if not bad:
        return
    before_raising()
    found = ", ".join(f"{key} {value}" for key, value in bad.items())
    raise LlamalabError(
        f"training diverged at step {step}: {found} (learning_rate {logs.get('learning_rate', '?')}). Lower "
        "learning_rate (or raise warmup_ratio) and train again; the run is marked failed"
    )


def drop_log_after(path: Path, step: int) -> None:
    """Rewrite a training log atomically, keeping the rows before the first one past `step`.

    A last line cut off by a kill mid-append goes too, so later appends start on a line of their own.
    """
    if not path.is_file():
        return
    kept = itertools.takewhile(lambda row: row.get("step", 0) <= step, read_jsonl(path))
    write_text_atomic(path, "".join(json.dumps(row, default=str) + "\n" for row in kept))


def latest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint marked complete with every file its marker lists; others (cut off mid-write, or
    mid-removal when the trainer rotates old checkpoints, by a kill) are removed."""
    if not folder.is_dir():
        return None
    found = sorted(
        (p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    for path in reversed(found):
        marker = path / CHECKPOINT_DONE
        listed = marker.read_text().split() if marker.is_file() else None
        # markers of older versions hold the step number, not a list of files
        if listed is not None and all((path / name).exists() for name in listed if not name.isdigit()):
            return path
        shutil.rmtree(path, ignore_errors=True)
    return None
