"""Progress where stderr is not a terminal: whole plain lines as the work goes, not a bar drawn at exit."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console
from rich.progress import Progress

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.progress import LineProgress, new_progress, progress_bar
from tests.conftest import write_experiment


def log_console() -> Console:
    return Console(file=io.StringIO(), width=40)  # narrow: a line must still not wrap


def test_a_terminal_gets_the_bar_and_a_log_gets_lines():
    assert not isinstance(new_progress(Console(file=io.StringIO(), force_terminal=True), "it"), LineProgress)
    assert isinstance(new_progress(log_console(), "it"), LineProgress)
    assert isinstance(new_progress(log_console(), "it"), Progress)  # same interface as the bar


def test_a_line_every_tenth_and_the_last():
    console = log_console()
    with progress_bar(console, "eval sentiment", total=95, unit="ex") as advance:
        for i in range(95):
            advance(1, acc=f"{i / 100:.2f}")
    lines = console.file.getvalue().splitlines()
    counts = [int(re.match(r"eval sentiment  (\d+)/95 ex  0:00:\d\d elapsed  ETA \S+  acc 0\.\d\d$", line)[1])
              for line in lines]
    assert counts == [10, 19, 29, 38, 48, 57, 67, 76, 86, 95]


def test_a_line_every_ten_seconds_when_slower():
    now = [0.0]
    progress = LineProgress(log_console(), "steps")
    progress.get_time = lambda: now[0]
    task = progress.add_task("train", total=1000, info="")
    for step in range(1, 31):
        now[0] = step * 3.0  # 3 s a step: 30 steps are 3% of the work, and a line is due every 10 s
        progress.update(task, completed=step, info=f"loss {1 / step:.4f}")
    progress.stop()  # stopped before the end (e.g. Ctrl-C): the last state is still reported
    lines = progress.console.file.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["4/1000", "8/1000", "12/1000", "16/1000", "20/1000", "24/1000",
                                                   "28/1000", "30/1000"]
    assert lines[0] == "train  4/1000 steps  0:00:12 elapsed  ETA 0:49:48  loss 0.2500"  # 996 steps at 3 s


def test_eval_progress_goes_to_a_log_in_lines(lab, tiny_model_dir):
    console = log_console()
    evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sentiment", limit=20), console=console)
    lines = [line for line in console.file.getvalue().splitlines() if line.startswith("eval ")]
    assert lines and lines[-1].startswith("eval sentiment  20/20 ex  ")


def test_train_progress_reaches_a_redirected_log_while_it_runs(lab, tiny_model_dir, tmp_path):
    """`llamalab train 2> file`: progress lines are in the file before the command ends, each a whole line."""
    steps = 20
    write_experiment(lab, "tiny", json.dumps({
        "task": "sentiment", "base_model": str(tiny_model_dir), "batch_size": 4, "max_steps": steps,
        "save_steps": 1000, "train_examples": 64, "lora": {"r": 4, "alpha": 8},
    }))
    log = tmp_path / "train.log"
    with log.open("w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "llamalab.cli", "train", "tiny", "--lab", str(lab.root)],
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 240
        while "train  " not in (seen := log.read_text()) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        running = child.poll() is None
        assert child.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        child.kill()
    assert running, "no progress line before the command ended"
    assert seen.endswith("\n")  # read mid-run: whole lines only

    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text  # no bar redrawn in place, no terminal escapes
    pattern = rf"train  (\d+)/{steps} steps  \d:\d\d:\d\d elapsed  ETA \S+  loss \d+\.\d{{4}}  [\d,]+ tok/s"
    counts = [int(m[1]) for line in text.splitlines() if (m := re.fullmatch(pattern, line))]
    assert counts[-1] == steps and counts == sorted(set(counts))
    assert len(counts) < steps  # throttled, not a line per step
    assert len(counts) == sum(line.startswith("train  ") for line in text.splitlines())


def test_training_steps_longer_than_half_a_minute_still_get_an_eta():
    """The training bar's speed came from the last 30 s: steps of 35 s (a 1B model on a laptop) never had two in
    that window, so the ETA stayed -:--:--; training's window is an hour."""
    from llamalab.progress import new_progress

    now = [0.0]
    progress = new_progress(log_console(), "steps", speed_window_s=3600.0)
    progress.get_time = lambda: now[0]
    task = progress.add_task("train", total=10, info="")
    for step in range(1, 4):
        now[0] = step * 35.0
        progress.update(task, completed=step, info="")
    progress.stop()
    lines = progress.console.file.getvalue().splitlines()
    assert lines[-1].startswith("train  3/10 steps  0:01:45 elapsed  ETA 0:04:05"), lines  # 7 steps at 35 s


@pytest.mark.parametrize("seed", range(20))
def test_the_eta_counts_the_time_before_the_first_advance_and_steps_longer_than_half_a_minute(seed):
    """A constant pace, advances in random bursts (a study's cells finishing together, an evaluation's batches a
    random time apart, some longer than 30 s): after each line, the ETA is the work left at the pace so far
    (elapsed / done), and it is never missing. Rich measured the speed from the first advance on (four cells of an
    hour each finishing together read as no time: ETA 0:00:08 for an hour's work) and over 30 s only (an
    evaluation's batches 40 s apart never had an ETA; the window is an hour now, as training's)."""
    rng = random.Random(seed)
    total, done, now = rng.randint(4, 40), rng.randint(0, 3), [0.0]
    console = Console(file=io.StringIO(), width=300, get_time=lambda: now[0], force_terminal=False)
    pace = rng.uniform(5, 90)  # seconds a unit
    with progress_bar(console, "work", total, unit="it", done=done) as advance:
        count = done
        while count < total:
            burst = min(total - count, rng.randint(1, 4))
            count += burst
            now[0] = (count - done) * pace
            advance(burst)
    for line in console.file.getvalue().splitlines():
        shown = re.match(r"work  (\d+)/\d+ it  (\S+) elapsed  ETA (\S+)", line)
        assert shown, line
        finished = int(shown[1])
        elapsed = (finished - done) * pace
        expected = (total - finished) * elapsed / (finished - done)
        h, m, s = (int(x) for x in shown[3].split(":"))
        assert abs(h * 3600 + m * 60 + s - expected) <= 1.01, (line, expected)


def test_a_training_error_still_ends_the_progress_with_its_last_line(lab, tiny_model_dir):
    """A step that raises (here a callback's error) stops the progress on the way out: a log gets the last step's
    line, a terminal its cursor back (the trainer does not call on_train_end when training raises)."""
    from transformers import TrainerCallback

    from llamalab.training.trainer import train

    class FailAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("a callback failed")

    write_experiment(lab, "tiny", json.dumps({
        "task": "sentiment", "base_model": str(tiny_model_dir), "batch_size": 4, "max_steps": 50,
        "save_steps": 1000, "train_examples": 64, "lora": {"r": 4, "alpha": 8}}))
    console = log_console()
    with pytest.raises(RuntimeError, match="a callback failed"):
        train(lab, "tiny", console=console, callbacks=[FailAt()])
    lines = [line for line in console.file.getvalue().splitlines() if line.startswith("train  ")]
    assert lines and lines[-1].startswith("train  2/50 steps"), lines
