"""`llamalab data check`'s lengths over random small datasets: token lengths of whole training examples and of the
gold answers (min / mean / p95 / max), the examples over --max-length and the answers over the generation budget
(how many, the longest, which rows) are the ones computed here, independently, with a tokenizer of one token per
character; the printed table and the JSON say the returned numbers."""

from __future__ import annotations

import json
import math
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task
from tests.data_probe import SPLIT_NAMES, CharTokenizer, use_char_tokenizer, write_split

LETTERS = list("abcdefghijklmnopqrstuvwxyzéøß") + ["😀", "中"]


def _words(rng: np.random.Generator, most: int) -> str:
    text = " ".join("".join(rng.choice(LETTERS, int(rng.integers(1, 9)))) for _ in range(int(rng.integers(1, most))))
    return text


def _setup(lab, seed: int):
    """A random label or text task with random texts and answers; the rows each split's file holds."""
    rng = np.random.default_rng(seed)
    kind = "label" if rng.random() < 0.5 else "text"
    labels, verbal = [], {}
    if kind == "label":
        labels = [f"l{i}" for i in range(int(rng.integers(2, 6)))]
        verbal = {label: _words(rng, 6) for label in labels if rng.random() < 0.5}
    rows, entries = {}, []
    for split in [s for s in SPLIT_NAMES if rng.random() < 0.85] or ["train"]:
        size = int(rng.choice([0, 1, int(rng.integers(2, 25))], p=[0.1, 0.15, 0.75]))
        rows[split] = []
        for _ in range(size):
            text = _words(rng, 12)
            if rng.random() < 0.2:
                text = " " * int(rng.integers(1, 3)) + text + " " * int(rng.integers(0, 3))
            answer = str(rng.choice(labels)) if kind == "label" else _words(rng, int(rng.choice([4, 60])))
            rows[split].append((text, answer))
        entries.append(write_split(lab.root, split, "".join(
            json.dumps({"text": t, "label": a}, ensure_ascii=False) + "\n" for t, a in rows[split])))
    answer = (f"{{labels: [{', '.join(labels)}], verbalizers: {json.dumps(verbal, ensure_ascii=False)}}}"
              if kind == "label" else "{type: text}")
    (lab.root / "tasks" / "probe.yaml").write_text(textwrap.dedent(f"""\
        name: probe
        data:
          files: [{', '.join(entries)}]
        prompt: {{template: "{{{{ text }}}}", format: plain}}
        answer: {answer}
        """), encoding="utf-8")
    max_length = int(rng.integers(5, 120)) if rng.random() < 0.7 else None
    max_new_tokens = int(rng.integers(1, 40 if kind == "label" else 300)) if rng.random() < 0.6 else None
    return load_task(lab.task_path("probe"), lab.root), kind, verbal, rows, max_length, max_new_tokens


def _p95(values: list[int]) -> int:
    """The 95th percentile (linear between the closest ranks), in exact arithmetic, rounded up to a whole token."""
    ordered = sorted(values)
    rank = Fraction(95, 100) * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return math.ceil(ordered[low] + (rank - low) * (ordered[high] - ordered[low]))


def _check_stats(shown: dict, values: list[int]) -> None:
    assert shown["min"] == min(values) and shown["max"] == max(values)
    assert shown["p95"] == _p95(values)
    mean = Fraction(sum(values), len(values))
    # one decimal: the nearest tenth (at an exact half, either neighbour)
    assert abs(Fraction(str(shown["mean"])) - mean) <= Fraction(1, 20), (shown["mean"], float(mean))
    assert Fraction(str(shown["mean"])) * 10 == int(Fraction(str(shown["mean"])) * 10)


def _expected(kind: str, verbal: dict, rows: dict, max_length, max_new_tokens):
    lengths, answers, warnings = {}, {}, []
    budget = max_new_tokens or (16 if kind == "label" else 256)
    for split, pairs in rows.items():
        if not pairs:
            continue
        targets = [verbal.get(a, a) if kind == "label" else a for _, a in pairs]
        # BOS, the text as written, the space before the answer, the answer, the end-of-text marker
        lengths[split] = [1 + len(t) + 1 + len(target) + 1 for (t, _), target in zip(pairs, targets, strict=True)]
        answers[split] = [1 + len(target) for target in targets]
        sources = [f"data/p/{split}.jsonl:{n}" for n in range(1, len(pairs) + 1)]
        if max_length:
            over = [s for s, n in zip(sources, lengths[split], strict=True) if n > max_length]
            if over:
                where = " and would be skipped in training" if split == "train" else " (longer than any trained on)"
                warnings.append(f"{split}: {len(over)} example(s) exceed max_length {max_length} tokens{where}, "
                                f"e.g. {', '.join(over[:3])}")
        over = [s for s, n in zip(sources, answers[split], strict=True) if n > budget]
        if over:
            protocol = " (under --protocol generate)" if kind == "label" else ""
            warnings.append(f"{split}: {len(over)} gold answer(s) are longer than the generation budget of {budget} "
                            f"tokens{protocol} (longest {max(answers[split])}), e.g. {', '.join(over[:3])}: generated "
                            "answers would be cut off; raise --max-new-tokens (of `llamalab eval` and `llamalab data "
                            "check`)")
    return lengths, answers, warnings


def _length_warnings(warnings: list[str]) -> list[str]:
    return sorted(w for w in warnings if "exceed max_length" in w or "generation budget" in w)


@pytest.mark.parametrize("seed", range(60))
def test_token_lengths_and_what_does_not_fit(lab, seed):
    task, kind, verbal, rows, max_length, max_new_tokens = _setup(lab, seed)
    prompter = Prompter(task, CharTokenizer(), "plain")
    report = check_task_data(load_task_data(task, strict=False), task, prompter, max_length, max_new_tokens)
    lengths, answers, warnings = _expected(kind, verbal, rows, max_length, max_new_tokens)
    assert report.counts == {split: len(pairs) for split, pairs in rows.items()}
    assert set(report.token_lengths) == set(lengths) and set(report.answer_lengths) == set(answers)
    for split, values in lengths.items():
        _check_stats(report.token_lengths[split], values)
        _check_stats(report.answer_lengths[split], answers[split])
    assert _length_warnings(report.warnings) == sorted(warnings)


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in SPLIT_NAMES:
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("seed", range(30))
def test_printed_lengths_are_the_reports(lab, seed, monkeypatch):
    task, kind, verbal, rows, max_length, max_new_tokens = _setup(lab, seed)
    use_char_tokenizer(monkeypatch)
    options = [*(["--max-length", str(max_length)] if max_length else []),
               *(["--max-new-tokens", str(max_new_tokens)] if max_new_tokens else [])]
    lengths, answers, warnings = _expected(kind, verbal, rows, max_length, max_new_tokens)
    result = CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root), "--json", *options])
    shown = json.loads(result.stdout)
    for split, values in lengths.items():
        _check_stats(shown["token_lengths"][split], values)
        _check_stats(shown["answer_lengths"][split], answers[split])
    assert set(shown["token_lengths"]) == set(lengths)
    assert _length_warnings(shown["warnings"]) == sorted(warnings)

    result = CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root), *options])
    table = _table(result.stdout)
    assert list(table) == list(rows)
    for split, cells in table.items():
        assert int(cells[1]) == len(rows[split])
        if split not in lengths:
            assert cells[2] == cells[3] == ""
            continue
        t, a = shown["token_lengths"][split], shown["answer_lengths"][split]
        assert cells[2] == f"{t['min']} / {t['mean']} / {t['p95']} / {t['max']}"
        assert cells[3] == f"{a['mean']} / {a['max']}"
        mean, most = cells[3].split(" / ")
        assert int(most) == max(answers[split])
        _check_stats({"min": min(lengths[split]), "mean": float(cells[2].split(" / ")[1]),
                      "p95": int(cells[2].split(" / ")[2]), "max": int(cells[2].split(" / ")[3])}, lengths[split])
    text = " ".join(result.stdout.split())
    for line in warnings:
        assert f"warning {' '.join(line.split())}" in text
