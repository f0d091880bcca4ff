"""The weekly post's "What changed" line over random records: the last post's best is named with its own interval,
and marked as evaluated before the task's data changed exactly when its recorded data hashes differ from the new
best's; the new best is the leaderboard's."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from llamalab.evaluation.compare import format_interval
from llamalab.publish.posts import new_post
from llamalab.publish.results import task_boards
from llamalab.publish.tables import md_escape
from llamalab.runs.record import RunRecord
from llamalab.tasks.data import current_file_hashes
from llamalab.tasks.task import load_task
from tests.records import sentiment_eval

LABELS = ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("seed", range(25))
def test_what_changed_names_the_last_posts_best_as_the_records_show_it(lab, seed):
    rng = np.random.default_rng(seed)
    now = current_file_hashes(load_task(lab.task_path("sentiment"), lab.root))
    earlier = {path: "0" * 64 for path in now}

    def some(k: int) -> list[RunRecord]:
        return [sentiment_eval(lab, str(rng.choice(LABELS)),
                               list(rng.random(int(rng.integers(10, 40))) < rng.uniform(0.3, 0.9)),
                               earlier if rng.random() < 0.3 else now) for _ in range(k)]

    old = some(int(rng.integers(0, 4)))
    if old:
        new_post(lab, "Week one", ["A"], today=datetime.date(2026, 11, 1))
    new = some(int(rng.integers(1, 4)))
    body = new_post(lab, "Week two", ["A"], today=datetime.date(2026, 11, 8)).read_text().split("---\n", 2)[2]

    boards = [b for b in task_boards(lab) if b.name == "sentiment"]
    if not boards or not {row.run for row in boards[0].rows} & {r.id for r in new}:
        assert "## sentiment" not in body  # nothing new on the task's current data
        return
    best = boards[0].rows[0]
    assert f"**Best on accuracy:** {md_escape(best.system)}, {format_interval(best.metrics['accuracy'])}" in body
    [line] = [line for line in body.splitlines() if line.startswith("- **What changed:**")]
    if not old:
        assert line == "- **What changed:** first results on this task."
        return
    [before] = task_boards(lab, only={r.id for r in old}, current_only=False)
    last = before.rows[0]
    records = {r.id: r for r in [*old, *new]}
    if last.run == best.run:
        assert "unchanged" in line
        return
    shown = format_interval(records[last.run].run.metrics["accuracy"]) if records[last.run].run.metrics else None
    assert f"the best was {md_escape(last.system)}, {format_interval(last.metrics['accuracy'])}" in line
    assert shown is None or shown == format_interval(last.metrics["accuracy"])
    changed = records[last.run].run.task.data_sha256 != records[best.run].run.task.data_sha256
    assert ("(evaluated before the task's data changed)" in line) == changed
