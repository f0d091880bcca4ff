"""`llamalab data check`: describe a task's data and find what would spoil an experiment."""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from llamalab.evaluation.answers import parse_entities
from llamalab.tasks.data import Example, TaskData
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import Task


@dataclass
class CheckReport:
    counts: dict[str, int]
    label_balance: dict[str, dict[str, int]]
    token_lengths: dict[str, dict[str, float]]
    answer_lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # tokens of the gold answers
    entity_types: dict[str, dict[str, int]] = field(default_factory=dict)  # entity tasks: gold entities per type
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overlap: dict[str, int] = field(default_factory=dict)  # held-out split -> texts also in train (leakage)

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "label_balance": self.label_balance,
            "entity_types": self.entity_types,
            "token_lengths": self.token_lengths,
            "answer_lengths": self.answer_lengths,
            "errors": self.errors,
            "warnings": self.warnings,
            "overlap": self.overlap,
        }


_MATH = "+-−*/=<>^%×÷±≤≥≠·⋅"  # arithmetic signs: "12 + 5" and "12 - 5", "x > 3" and "x < 3" are different problems


def normalize_text(text: str) -> str:
    """Lower-case, strip the accents of Latin, Greek and Cyrillic letters, drop punctuation at the edges of words,
    collapse whitespace: the form duplicates are found in. Marks inside a word stay ("12+5" and "12-5" are
    different problems, "well-made" is one word); an arithmetic sign stays next to a number ("-5", "50%") and
    on its own between words when a number is next to it ("12 + 5", "x > 3"); the marks of other scripts are
    letters of their words (か and が, का and की); emoji and currency signs are words (or parts of them)."""
    kept, base = [], ""
    for c in unicodedata.normalize("NFKD", text.casefold()):
        if not unicodedata.combining(c):
            base = c
        elif base.isascii() or unicodedata.name(base, "").startswith(("LATIN", "GREEK", "CYRILLIC")):
            continue  # an accent on a Latin, Greek or Cyrillic letter
        kept.append(c)
    tokens = unicodedata.normalize("NFC", "".join(kept)).split()
    words = []
    for i, token in enumerate(tokens):
        if all(c in _MATH for c in token):  # an operator on its own: kept where it stands between numbers
            near = "".join(tokens[max(i - 1, 0) : i] + tokens[i + 1 : i + 2])
            if any(c.isdigit() for c in near):
                words.append(token)
            continue
        if word := _trimmed(token):
            words.append(word)
    return " ".join(words)


def _trimmed(token: str) -> str:
    """A token without the punctuation at its edges (a sign before or after a digit is the number's)."""
    def part(c: str) -> bool:  # symbols are words: "I love it 😀" is not "I love it 😡", "$5" is not "£5"
        return c.isalnum() or c == "_" or unicodedata.category(c)[0] == "M" or unicodedata.category(c) in ("So", "Sc")

    start, end = 0, len(token)
    while start < end and not part(token[start]) and not (
            token[start] in _MATH and start + 1 < end and token[start + 1].isdigit()):
        start += 1
    while end > start and not part(token[end - 1]) and not (
            token[end - 1] in _MATH and end - 2 >= start and token[end - 2].isdigit()):
        end -= 1
    return token[start:end]


def check_task_data(
    data: TaskData, task: Task, prompter: Prompter | None = None, max_length: int | None = None,
    max_new_tokens: int | None = None,
) -> CheckReport:
    """Counts, label (or entity type) balance, token lengths of examples and gold answers (with a prompter),
    duplicates, leakage between splits, bad rows and whatever else keeps the data from loading."""
    report = CheckReport(
        counts={name: len(examples) for name, examples in data.splits.items()},
        label_balance={},
        token_lengths={},
    )
    report.errors.extend(str(bad) for bad in data.bad_rows)
    report.errors.extend(data.errors)
    if data.prompt_error:
        report.errors.append(data.prompt_error)
        prompter = None  # no prompt renders, so there is nothing to measure
    budget = max_new_tokens or task.answer.default_max_new_tokens

    keys: dict[str, dict[str, list]] = {}
    for name, examples in data.splits.items():
        if task.answer.type == "label":
            counted = Counter(ex.answer for ex in examples)
            report.label_balance[name] = {label: counted.get(label, 0) for label in task.answer.labels}
            missing = [label for label in task.answer.labels if not counted.get(label)]
            if missing and name != "train":
                report.warnings.append(f"{name}: no examples of {len(missing)} label(s): {', '.join(missing[:5])}")
        if task.answer.type == "entities":
            report.entity_types[name] = dict(sorted(Counter(
                kind for ex in examples for kind, _ in parse_entities(ex.answer) or []).items()))
        if prompter and examples:
            _measure(report, name, examples, prompter, max_length, budget)
        keys[name] = _by_text(task.data.text_fields, examples)

    for name, groups in keys.items():
        dupes = {k: v for k, v in groups.items() if len(v) > 1}
        if dupes:
            extra = sum(len(v) - 1 for v in dupes.values())
            conflicting = sum(1 for v in dupes.values() if len({ex.answer for ex in v}) > 1)
            sample = next(iter(dupes.values()))
            report.warnings.append(
                f"{name}: {extra} exact duplicate(s) after normalisation ({conflicting} with conflicting answers), "
                f"e.g. {', '.join(ex.source for ex in sample[:3])}"
            )
    for seen_in, held_out in (("train", "dev"), ("train", "test"), ("dev", "test")):
        if keys.get(seen_in) and keys.get(held_out):  # an empty split overlaps nothing, and proves nothing
            shared = keys[seen_in].keys() & keys[held_out].keys()
            if seen_in == "train":  # the leakage the data card shows; dev/test overlap is a warning
                report.overlap[held_out] = len(shared)
            if shared:
                first = next(k for k in keys[held_out] if k in shared)  # in file order: the same every run
                report.warnings.append(
                    f"{seen_in}/{held_out} overlap: {len(shared)} {held_out} text(s) also appear in {seen_in} "
                    f"({'leakage' if seen_in == 'train' else 'a choice made on dev has seen them'}), e.g. "
                    f"{keys[held_out][first][0].source} = {keys[seen_in][first][0].source}"
                )
    return report


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"min": int(values.min()), "mean": round(float(values.mean()), 1),
            "p95": int(np.ceil(np.percentile(values, 95))), "max": int(values.max())}  # a token count: never below


def _measure(report: CheckReport, name: str, examples: list[Example], prompter: Prompter, max_length: int | None,
             budget: int) -> None:
    """Token lengths of whole training examples and of the gold answers, with warnings where they do not fit."""
    lengths = np.array([len(prompter.encode_training(ex).input_ids) for ex in examples])
    report.token_lengths[name] = _stats(lengths)
    if max_length and (long := np.flatnonzero(lengths > max_length)).size:
        report.warnings.append(
            f"{name}: {long.size} example(s) exceed max_length {max_length} tokens"
            + (" and would be skipped in training" if name == "train" else " (longer than any trained on)")
            + f", e.g. {', '.join(examples[i].source for i in long[:3])}"
        )
    # What the model must generate after the prompt; labels repeat, so each distinct answer is tokenized once.
    targets = [prompter.continuation(prompter.task.answer.target(ex.answer)) for ex in examples]
    distinct = sorted(set(targets))
    counted = dict(zip(distinct, map(len, prompter.tokenizer(distinct, add_special_tokens=False)["input_ids"]),
                       strict=True))
    answers = np.array([counted[t] for t in targets])
    report.answer_lengths[name] = _stats(answers)
    if (long := np.flatnonzero(answers > budget)).size:
        protocol = " (under --protocol generate)" if prompter.task.answer.type == "label" else ""
        report.warnings.append(
            f"{name}: {long.size} gold answer(s) are longer than the generation budget of {budget} tokens{protocol} "
            f"(longest {answers.max()}), e.g. {', '.join(examples[i].source for i in long[:3])}: generated answers "
            "would be cut off; raise --max-new-tokens (of `llamalab eval` and `llamalab data check`)"
        )


def _by_text(fields: list[str], examples) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for ex in examples:
        values = (ex.fields.get(f, "") for f in fields)
        # each field apart: ("a b", "c") and ("a", "b c") are different examples
        texts = (" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values)
        # a text of punctuation alone normalises to nothing: it is kept as written, or all such texts would be one
        key = "\x1f".join(normalize_text(t) or t.strip() for t in texts)
        groups[key].append(ex)
    return groups
