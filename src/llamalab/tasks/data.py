"""Reading a task's data files into examples, and deriving (then pinning) its splits."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamalab.config import LlamalabError
from llamalab.runs.files import write_json_atomic
from llamalab.tasks.task import SPLITS, DataFile, Task


@dataclass(frozen=True)
class Example:
    id: str
    fields: dict[str, Any]
    answer: str
    source: str  # file:line, for error messages


@dataclass
class BadRow:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass
class TaskData:
    """Every example of a task by split, plus rows that could not be used."""

    splits: dict[str, list[Example]]
    bad_rows: list[BadRow] = field(default_factory=list)
    file_hashes: dict[str, str] = field(default_factory=dict)
    split_manifest: Path | None = None

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise LlamalabError(f"split {name!r} does not exist (have: {', '.join(self.splits)})")
        return self.splits[name]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_task_data(task: Task, *, strict: bool = True) -> TaskData:
    """Read all files, validate rows, and assemble train/dev/test.

    With `strict`, any bad row is an error listing each as file:line; otherwise bad rows are
    returned for `data check` to report.
    """
    by_split: dict[str, list[Example]] = defaultdict(list)
    bad: list[BadRow] = []
    hashes: dict[str, str] = {}
    for file in task.data.files:
        path = task.data_path(file)
        if not path.is_file():
            raise LlamalabError(
                f"task {task.name!r}: data file {file.path} not found (looked at {path}); "
                "fix `data.files[].path` in the task file"
            )
        hashes[file.path] = sha256_file(path)
        examples, file_bad = _read_file(task, file, path)
        by_split[file.split or "pool"].extend(examples)
        bad.extend(file_bad)
    if strict and bad:
        shown = "\n".join(f"  {b}" for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise LlamalabError(
            f"task {task.name!r}: {len(bad)} bad row(s):\n{shown}{more}\n"
            f"run `llamalab data check {task.name}` for the full report"
        )
    data = TaskData(splits=dict(by_split), bad_rows=bad, file_hashes=hashes)
    _assemble_splits(task, data)
    for name in SPLITS:
        if name in data.splits and not data.splits[name]:
            raise LlamalabError(f"task {task.name!r}: split {name!r} is empty; check its files or split fractions")
    return data


def _read_file(task: Task, file: DataFile, path: Path) -> tuple[list[Example], list[BadRow]]:
    fmt = file.resolved_format()
    rows = _read_lines(path, file) if fmt == "lines" else _read_records(path, fmt)
    examples, bad = [], []
    labels = set(task.answer.labels)
    for line_no, row in rows:
        source = f"{file.path}:{line_no}"
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        missing = [f for f in task.data.text_fields if not str(row.get(f) or "").strip()]
        if missing:
            bad.append(BadRow(source, f"missing or empty field(s): {', '.join(missing)}"))
            continue
        answer = file.label if file.label is not None else row.get(task.data.answer_field)
        if answer is None or str(answer).strip() == "":
            bad.append(BadRow(source, f"missing answer field {task.data.answer_field!r}"))
            continue
        answer = json.dumps(answer) if isinstance(answer, list | dict) else str(answer).strip()
        if task.answer.type == "label" and answer not in labels:
            bad.append(BadRow(source, f"label {answer!r} is not in the task's label set"))
            continue
        ident = str(row[task.data.id_field]) if task.data.id_field and task.data.id_field in row else source
        fields = dict(row)  # JSON values stay as they are: a template may join a list of sentences
        examples.append(Example(ident, fields, answer, source))
    return examples, bad


def _read_lines(path: Path, file: DataFile) -> list[tuple[int, dict | BadRow]]:
    if file.label is None:
        raise LlamalabError(f"{file.path}: a plain-text file needs `label:` (one text file per label)")
    rows: list[tuple[int, dict | BadRow]] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            text = line.strip()
            if text:
                rows.append((line_no, {"text": text}))
            else:
                rows.append((line_no, BadRow(f"{file.path}:{line_no}", "empty line")))
    return rows


def _read_records(path: Path, fmt: str) -> list[tuple[int, dict | BadRow]]:
    rows: list[tuple[int, dict | BadRow]] = []
    name = path.name
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "jsonl":
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    rows.append((line_no, BadRow(f"{name}:{line_no}", f"malformed JSON ({exc.msg})")))
                    continue
                if not isinstance(record, dict):
                    rows.append((line_no, BadRow(f"{name}:{line_no}", "expected a JSON object")))
                    continue
                rows.append((line_no, record))
            return rows
        reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",", strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            raise LlamalabError(f"{name}:1: malformed header ({exc})") from None
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                rows.append((reader.line_num, BadRow(f"{name}:{reader.line_num}", f"malformed {fmt.upper()} ({exc})")))
                continue
            if not values:
                continue
            if len(values) != len(header):
                reason = f"has {len(values)} columns, the header has {len(header)}"
                rows.append((reader.line_num, BadRow(f"{name}:{reader.line_num}", reason)))
                continue
            rows.append((reader.line_num, dict(zip(header, values, strict=True))))
    return rows


def _assemble_splits(task: Task, data: TaskData) -> None:
    """Derive missing splits from the pool (or train), pinned by a manifest next to the data."""
    spec = task.data.split
    has_pool = "pool" in data.splits
    if spec is None:
        if has_pool:
            raise LlamalabError(
                f"task {task.name!r}: some files have no `split:` and the task has no `data.split` "
                "section saying how to divide them"
            )
        return
    source_name = "pool" if spec.source == "pool" else "train"
    if source_name not in data.splits:
        raise LlamalabError(f"task {task.name!r}: data.split.source is {spec.source!r} but no file provides it")
    wanted = [s for s in ("dev", "test") if getattr(spec, s) > 0 and s not in data.splits]
    source = data.splits.pop(source_name)
    manifest = task.lab_root / "data" / "splits" / f"{task.name}.json"
    assignment = _pinned_assignment(task, source, wanted, manifest)
    data.split_manifest = manifest
    # The manifest decides which example lands in which split: it is part of the data's identity.
    data.file_hashes[manifest.relative_to(task.lab_root).as_posix()] = sha256_file(manifest)
    by_id = {ex.id: ex for ex in source}
    for split_name in ("train", *wanted):
        chosen = [by_id[i] for i in assignment[split_name]]
        data.splits[split_name] = data.splits.get(split_name, []) + chosen if split_name == "train" else chosen


def _pinned_assignment(task: Task, source: list[Example], wanted: list[str], manifest: Path) -> dict[str, list[str]]:
    spec = task.data.split
    assert spec is not None
    ids = [ex.id for ex in source]
    if len(set(ids)) != len(ids):
        raise LlamalabError(f"task {task.name!r}: example ids are not unique; fix data.id_field")
    fingerprint = {
        "spec": spec.model_dump(),
        "ids_sha256": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
    }
    if manifest.is_file():
        pinned = json.loads(manifest.read_text(encoding="utf-8"))
        if pinned.get("fingerprint") != fingerprint:
            raise LlamalabError(
                f"{manifest}: the recorded split no longer matches the task's data or `data.split` settings; "
                "if the change is intended, delete this file to derive (and record) a new split"
            )
        return pinned["assignment"]
    assignment = derive_split(source, {s: getattr(spec, s) for s in wanted}, spec.seed, spec.stratify)
    write_json_atomic(manifest, {"task": task.name, "fingerprint": fingerprint, "assignment": assignment})
    return assignment


def derive_split(
    examples: list[Example], fractions: dict[str, float], seed: int, stratify: bool
) -> dict[str, list[str]]:
    """Assign example ids to train and the named splits; per label when stratified."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.answer if stratify else ""].append(ex)
    rng = random.Random(seed)
    assignment: dict[str, list[str]] = {"train": [], **{name: [] for name in fractions}}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda e: e.id)
        rng.shuffle(members)
        start = 0
        for name, fraction in fractions.items():
            count = round(len(members) * fraction)
            assignment[name].extend(e.id for e in members[start : start + count])
            start += count
        assignment["train"].extend(e.id for e in members[start:])
    return assignment
