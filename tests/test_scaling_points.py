"""The task scaling figure's curves: each is one experiment, one set of training settings and one evaluation
setting across sizes, and no point is chosen by its score (a fine-tune evaluated plain and chat gave the better of
the two at every size, each size from whichever setting scored higher on test)."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from llamalab.publish.results import TaskBoard, scaling_points, task_boards, train_runs
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord
from tests.records import eval_fields, train_fields

N = 40


def fine_tune(lab, size: int, experiment: str = "tiny", started: str | None = None) -> RunRecord:
    train = RunRecord.create(lab.runs_dir, "train", experiment, {"train_examples": size},
                             **train_fields(experiment=experiment))
    train.update(status="finished", data_used={"train_examples": size, "skipped_too_long": 0},
                 **({"started": started} if started else {}))
    return train


def evaluate_as(lab, train: RunRecord, correct: list[bool], fmt: str = "plain", shots: tuple[str, ...] = (),
                protocol: str = "loglikelihood", backend: str = "hf", precision: str | None = None,
                max_new_tokens: int | None = None) -> RunRecord:
    """A finished test evaluation of `train`'s fine-tune in one setting, right on the examples `correct` says."""
    fields = eval_fields(label=train.run.name, kind="finetuned", train_run=train.id, n=len(correct), fmt=fmt,
                         shots=shots, protocol=protocol, backend=backend)
    if precision is not None:
        fields["scoring"]["precision"] = precision
    if max_new_tokens is not None:
        fields["scoring"]["decoding"] = {"greedy": True, "max_new_tokens": max_new_tokens}
    record = RunRecord.create(lab.runs_dir, "eval", f"{train.run.name}-eval", {"system": train.id}, **fields)
    append_jsonl(record.folder / "predictions.jsonl", [
        {"id": f"x{i}", "gold": "positive", "prediction": "positive" if ok else "negative", "correct": bool(ok)}
        for i, ok in enumerate(correct)])
    record.update(status="finished")
    return record


def hits(accuracy: float, n: int = N) -> list[bool]:
    right = round(accuracy * n)
    return [True] * right + [False] * (n - right)


def sentiment_board(lab) -> TaskBoard:
    [board] = [b for b in task_boards(lab) if b.name == "sentiment"]
    return board


def drawn(curves: dict) -> dict[str, list[tuple[int, str]]]:
    return {name: [(size, row.run) for size, row in points] for name, points in curves.items()}


def test_plain_and_chat_evaluations_are_two_curves_not_the_best_of_both(lab):
    """Train runs at 32 and 64 examples, each evaluated plain and chat on the same 40 test examples: the curve was
    [(32, chat 0.8), (64, plain 0.7)], neither the chat curve nor the plain one."""
    small, large = fine_tune(lab, 32), fine_tune(lab, 64)
    plain_small = evaluate_as(lab, small, hits(0.6), fmt="plain")
    chat_small = evaluate_as(lab, small, hits(0.8), fmt="chat")
    plain_large = evaluate_as(lab, large, hits(0.7), fmt="plain")
    chat_large = evaluate_as(lab, large, hits(0.5), fmt="chat")
    board = sentiment_board(lab)
    assert [row.run for row in board.rows] == [chat_small.id, plain_large.id, plain_small.id, chat_large.id]
    curves = scaling_points(board, {r.id: r for r in train_runs(lab)})
    assert drawn(curves) == {
        "tiny [chat]": [(32, chat_small.id), (64, chat_large.id)],
        "tiny [plain]": [(32, plain_small.id), (64, plain_large.id)],
    }
    assert [row.metrics["accuracy"].estimate for _, row in curves["tiny [chat]"]] == [0.8, 0.5]


def test_one_setting_is_named_as_before(lab):
    """With every fine-tune evaluated in one setting, the curve keeps its experiment's name alone."""
    for size in (32, 64):
        evaluate_as(lab, fine_tune(lab, size), hits(0.5), fmt="chat")
    assert list(scaling_points(sentiment_board(lab), {r.id: r for r in train_runs(lab)})) == ["tiny"]


# Evaluation settings a fine-tune may be evaluated in (what SystemKey holds besides the weights)
SETTINGS = [
    {"fmt": "plain"},
    {"fmt": "chat"},
    {"fmt": "plain", "shots": ("s:1", "s:2")},
    {"fmt": "plain", "shots": ("s:3", "s:4")},  # other shots drawn (another shot seed)
    {"fmt": "plain", "protocol": "generate", "max_new_tokens": 8},
    {"fmt": "plain", "protocol": "generate", "max_new_tokens": 32},
    {"fmt": "plain", "backend": "llama.cpp"},
    {"fmt": "plain", "precision": "bfloat16"},
]


@pytest.mark.parametrize("seed", range(4))
def test_every_curve_is_one_setting_and_no_point_depends_on_the_scores(lab, seed):
    """Random fine-tunes (two experiments, random sizes, some started at the same instant), each evaluated in a
    random set of settings with random scores: every curve holds one experiment and one setting; its point at a
    size is that setting's evaluation of the latest training at that size; every such group with two or more
    sizes is drawn; and the result is the same whatever order (best first, or any other) the board lists its rows."""
    rng = np.random.default_rng([2026, seed])
    setting_of: dict[str, int] = {}
    same_instant = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).isoformat(timespec="milliseconds")
    for _ in range(int(rng.integers(4, 10))):
        experiment = str(rng.choice(["alpha", "beta"]))
        started = same_instant if rng.random() < 0.3 else None  # equal start times: the run id decides
        train = fine_tune(lab, int(rng.choice([8, 16, 32])), experiment, started)
        chosen = rng.choice(len(SETTINGS), size=int(rng.integers(1, 4)), replace=False)
        for s in chosen:
            correct = list(rng.random(12) < rng.uniform(0.1, 0.9))
            setting_of[evaluate_as(lab, train, correct, **SETTINGS[s]).id] = int(s)
    board = sentiment_board(lab)
    trains = train_runs(lab)  # oldest first, as started_at orders them (then by id)
    by_id = {r.id: r for r in trains}

    expected: dict[tuple[str, int], dict[int, str]] = {}
    for train in trains:  # a later training replaces an earlier one of the same size
        for entry in board.entries:
            if entry.run.system.train_run == train.id:
                key = (train.run.name, setting_of[entry.record.id])
                expected.setdefault(key, {})[train.run.data_used.train_examples] = entry.record.id
    expected_curves = {key: sorted(points.items()) for key, points in expected.items() if len(points) >= 2}

    curves = scaling_points(board, by_id)
    found = set()
    for name, points in curves.items():
        experiments = {by_id[row.train_run].run.name for _, row in points}
        settings = {setting_of[row.run] for _, row in points}
        assert len(experiments) == 1 and len(settings) == 1, (name, experiments, settings)
        key = (experiments.pop(), settings.pop())
        found.add(key)
        assert [(size, row.run) for size, row in points] == expected_curves[key], name
        assert name.startswith(key[0])
        if len({setting for _, setting in expected_curves}) > 1:
            assert "[" in name, name  # named by the setting when more than one is drawn
    assert found == set(expected_curves) and len(found) == len(curves)  # every group drawn, each once

    for _ in range(5):  # any order of the rows (the board's is best first) gives the same curves
        order = rng.permutation(len(board.rows))
        shuffled = TaskBoard(board.task,
                             board.comparison.model_copy(update={"systems": [board.rows[i] for i in order]}),
                             [board.entries[i] for i in order])
        assert drawn(scaling_points(shuffled, by_id)) == drawn(curves)
