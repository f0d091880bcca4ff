"""The methods sentence about a choice made on dev, over random records: "chosen" is written exactly when one
configuration went to test and it scored highest among the dev runs that finished before any test evaluation of
the system began (not all of them alike), and the scores listed are those runs' recorded ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from llamalab.publish.methods import methods_paragraphs
from llamalab.publish.results import task_boards, task_evals
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord
from tests.records import eval_fields

CONFIGS = [("plain", 0), ("chat", 0), ("plain", 2), ("chat", 2)]
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _evaluation(lab, split: str, config: tuple[str, int], n: int, started: int, ended: int,
                accuracy: float | None) -> RunRecord:
    fmt, shots = config
    settings = {"system": "m", "task": "sentiment", "split": split, "format": fmt, "shots": shots,
                "protocol": "loglikelihood"}
    record = RunRecord.create(lab.runs_dir, "eval", "m", settings,
                              **eval_fields(label="m", model="m", split=split, n=n, fmt=fmt,
                                            shots=[f"train:{k}" for k in range(shots)]))
    if split == "test":
        append_jsonl(record.folder / "predictions.jsonl", [
            {"id": f"x:{i}", "prompt": "p", "gold": "positive", "prediction": "positive" if i % 3 else "negative",
             "correct": bool(i % 3), "scores": {}} for i in range(n)])
    metrics = {} if accuracy is None else {"accuracy": {"estimate": accuracy, "low": max(0.0, accuracy - 0.1),
                                                        "high": min(1.0, accuracy + 0.1), "n": n}}
    record.update(status="finished", metrics=metrics,
                  started=(START + timedelta(seconds=started)).isoformat(timespec="milliseconds"),
                  ended=(START + timedelta(seconds=ended)).isoformat(timespec="milliseconds"))
    return record


def _describe(config: tuple[str, int]) -> str:
    fmt, shots = config
    return f"{f'{shots}-shot' if shots else 'zero-shot'} {fmt}"


@pytest.mark.parametrize("seed", range(60))
def test_a_choice_on_dev_is_claimed_exactly_when_the_records_show_one(lab, seed):
    rng = np.random.default_rng(seed)
    on_board = [CONFIGS[i] for i in rng.choice(len(CONFIGS), 2 if rng.random() < 0.2 else 1, replace=False)]
    test_starts = {}
    for config in on_board:
        test_starts[config] = int(rng.integers(180, 240))
        _evaluation(lab, "test", config, 30, test_starts[config], test_starts[config] + 20, 0.5)
    if rng.random() < 0.3:  # an earlier quick test check (a --limit run): not the board's row, but test was seen
        config = on_board[0]
        _evaluation(lab, "test", config, 5, int(rng.integers(100, 240)), 250, 0.4)
    for _ in range(int(rng.integers(0, 8))):
        config = CONFIGS[int(rng.integers(len(CONFIGS)))]
        ended = int(rng.integers(20, 260))
        value = None if rng.random() < 0.1 else float(rng.choice([0.5, 0.6, 0.7]))
        _evaluation(lab, "dev", config, 10, ended - 10, ended, value)

    board = next(b for b in task_boards(lab) if b.name == "sentiment")
    records = task_evals(lab, "sentiment")
    text = " ".join(methods_paragraphs(board, {}, records))

    # the oracle: the records, read directly
    first_test = min(r.run.started for r in records if r.run.task.split == "test")
    latest = {}  # per configuration, the last dev run that finished before the first test run began
    for r in records:
        if r.run.task.split == "dev" and r.run.ended < first_test:
            latest[(r.config["format"], r.config["shots"])] = r
    values = {c: (m.estimate if (m := r.run.metrics.get("accuracy")) else None) for c, r in latest.items()}
    known = [v for v in values.values() if v is not None]
    [chosen] = on_board if len(on_board) == 1 else [None]
    expected = (chosen is not None and len(latest) > 1 and values.get(chosen) is not None
                and values[chosen] == max(known)
                and not (len(known) == len(values) and len(set(known)) == 1))
    assert ("chosen among" in text) == expected, text
    if expected:
        assert f"chosen among {len(latest)} dev evaluations" in text
        for config, value in values.items():
            assert f"{_describe(config)} {'(not recorded)' if value is None else f'{value:.3f}'}" in text
        ties = sorted(_describe(c) for c, v in values.items() if v == values[chosen] and c != chosen)
        assert f"its test configuration, {_describe(chosen)}, scored highest" in text
        assert ("tied with" in text) == bool(ties)
    if not any(r.run.task.split == "dev" for r in records):
        assert "the records hold no dev-split evaluation of sentiment" in text
