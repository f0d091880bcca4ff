"""`llamalab data check`: describe a task's data and find what would spoil an experiment."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from llamalab.tasks.data import TaskData
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import Task


@dataclass
class CheckReport:
    counts: dict[str, int]
    label_balance: dict[str, dict[str, int]]
    token_lengths: dict[str, dict[str, float]]
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
            "token_lengths": self.token_lengths,
            "errors": self.errors,
            "warnings": self.warnings,
            "overlap": self.overlap,
        }


def normalize_text(text: str) -> str:
    """Lower-case, strip accents and punctuation, collapse whitespace: the form duplicates are found in."""
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def check_task_data(
    data: TaskData, task: Task, prompter: Prompter | None = None, max_length: int | None = None
) -> CheckReport:
    """Counts, label balance, token lengths (with a prompter), duplicates, leakage between splits, and bad rows."""
    report = CheckReport(
        counts={name: len(examples) for name, examples in data.splits.items()},
        label_balance={},
        token_lengths={},
    )
    report.errors.extend(str(bad) for bad in data.bad_rows)

    keys: dict[str, dict[str, list]] = {}
    for name, examples in data.splits.items():
        if task.answer.type == "label":
            counted = Counter(ex.answer for ex in examples)
            report.label_balance[name] = {label: counted.get(label, 0) for label in task.answer.labels}
            missing = [label for label in task.answer.labels if not counted.get(label)]
            if missing and name != "train":
                report.warnings.append(f"{name}: no examples of {len(missing)} label(s): {', '.join(missing[:5])}")
        lengths = np.array([len(prompter.encode_training(ex).input_ids) for ex in examples] if prompter else [])
        if len(lengths):
            report.token_lengths[name] = {
                "min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max()),
            }
            if max_length and (long := int((lengths > max_length).sum())):
                report.warnings.append(f"{name}: {long} example(s) exceed max_length {max_length} tokens")
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
    for held_out in ("dev", "test"):
        if "train" in keys and held_out in keys:
            shared = keys["train"].keys() & keys[held_out].keys()
            report.overlap[held_out] = len(shared)
            if shared:
                first = next(iter(shared))
                report.warnings.append(
                    f"train/{held_out} overlap: {len(shared)} {held_out} text(s) also appear in train "
                    f"(leakage), e.g. {keys[held_out][first][0].source} = {keys['train'][first][0].source}"
                )
    return report


def _by_text(fields: list[str], examples) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for ex in examples:
        values = (ex.fields.get(f, "") for f in fields)
        text = " ".join(" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in values)
        groups[normalize_text(text)].append(ex)
    return groups
