"""Turning a task's data files into examples, and deriving (then pinning) its splits."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llamalab.config import LlamalabError
from llamalab.runs.files import write_json_atomic
from llamalab.tasks.readers import BadRow, Record, follow, lookup, read_records
from llamalab.tasks.task import SPLITS, DataFile, SpanSpec, Task


@dataclass(frozen=True)
class Example:
    id: str
    fields: dict[str, Any]
    answer: str
    source: str  # file:line, for error messages


@dataclass
class TaskData:
    """Every example of a task by split, plus rows that could not be used and what else is wrong."""

    splits: dict[str, list[Example]]
    bad_rows: list[BadRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # problems beyond single rows: empty splits
    prompt_error: str | None = None  # the prompt template does not render on the first example
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


def current_file_hashes(task: Task) -> dict[str, str]:
    """The SHA-256 of each of the task's data files (and pinned split manifest) as they are now, as runs record
    them in task.data_sha256. Data that cannot be assembled now (a split manifest that no longer matches its
    files, a file gone) is hashed as it lies, so an evaluation of other bytes is never taken for a current one."""
    try:
        return load_task_data(task, strict=False).file_hashes
    except LlamalabError:
        hashes = {file.path: sha256_path(path) for file in task.data.files if (path := task.data_path(file)).exists()}
        manifest = task.lab_root / "data" / "splits" / f"{task.name}.json"
        if manifest.is_file():
            hashes[manifest.relative_to(task.lab_root).as_posix()] = sha256_file(manifest)
        return hashes


def sha256_path(path: Path) -> str:
    """A file's SHA-256; for a dataset folder, one over its files' names and hashes."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{member.relative_to(path).as_posix()}\0{sha256_file(member)}\n".encode())
    return digest.hexdigest()


def load_task_data(task: Task, *, strict: bool = True) -> TaskData:
    """Read all files, validate rows, and assemble train/dev/test.

    With `strict`, any bad row, empty split or prompt that does not fit the data is an error listing each
    (rows as file:line); otherwise they are returned for `data check` to report.
    """
    by_split: dict[str, list[Example]] = defaultdict(list)
    files_of: dict[str, list[str]] = defaultdict(list)
    bad_in: dict[str, int] = {}
    bad: list[BadRow] = []
    hashes: dict[str, str] = {}
    first: Example | None = None
    seen: dict[str, dict[str, str]] = defaultdict(dict)  # split -> id -> first row: predictions are keyed by id
    file_of: dict[int, str] = {}  # id(example) -> its data file
    _listed_once(task)
    for file in task.data.files:
        path = task.data_path(file)
        if not path.exists():
            raise LlamalabError(
                f"task {task.name!r}: data file {file.path} not found (looked at {path}); "
                "fix `data.files[].path` in the task file"
            )
        if file.path not in hashes:  # one file may hold several splits (`records:`)
            hashes[file.path] = sha256_path(path)
        examples, file_bad = _read_file(task, file, path)
        # pool rows are drawn into train (and dev/test only where no file gives them): one id space with train's
        examples, repeated = _first_of_each_id(task, examples, seen["train" if file.split in (None, "train")
                                                                    else file.split])
        file_bad += repeated
        by_split[file.split or "pool"].extend(examples)
        file_of.update((id(ex), file.path) for ex in examples)
        files_of[file.split or "pool"].append(file.path)
        bad_in[file.path] = bad_in.get(file.path, 0) + len(file_bad)
        bad.extend(sorted(file_bad, key=_line))  # in file order, as an editor goes through them
        first = first or next(iter(examples), None)
    everything = [ex for examples in by_split.values() for ex in examples]
    failing = _unrendered(task, everything)  # id(example) -> (example, why)
    prompt_error = None
    if failing and len(failing) == len(everything):  # the template, not the rows: one error, on the first row
        prompt_error = failing[id(first)][1] if id(first) in failing else next(iter(failing.values()))[1]
    elif failing:  # rows without (or with a null in) a field the template prints
        for name, examples in by_split.items():
            by_split[name] = [ex for ex in examples if id(ex) not in failing]
        for key, (example, why) in failing.items():
            bad_in[file_of[key]] += 1
            bad.append(BadRow(example.source, why.removeprefix(f"task {task.name!r}: ")))
    data = TaskData(splits=dict(by_split), bad_rows=bad, file_hashes=hashes)
    id_field = task.data.id_field
    if id_field and first is not None and not any(
            follow(ex.fields, id_field) is not None for examples in by_split.values() for ex in examples):
        data.errors.append(f"no record in any file has data.id_field {id_field!r} (the records have "
                           f"{', '.join(_paths(first.fields))}): fix data.id_field, or remove it to use line ids")
    data.prompt_error = prompt_error
    # Pin a split only from clean data: one drawn around bad rows would no longer match once they are fixed.
    drawn = _assemble_splits(task, data, pin=not bad)
    data.errors.extend(_empty_splits(data, files_of, bad_in, drawn))
    if strict and (bad or data.errors):
        lines = [f"{len(bad)} bad row(s):", *(f"  {b}" for b in bad[:20])] if bad else []
        if len(bad) > 20:
            lines.append(f"  ... and {len(bad) - 20} more")
        lines += [*data.errors, f"run `llamalab data check {task.name}` for the full report"]
        raise LlamalabError(f"task {task.name!r}: " + "\n".join(lines))
    if strict and data.prompt_error:
        raise LlamalabError(data.prompt_error)
    return data


def _listed_once(task: Task) -> None:
    """The same rows listed twice for one split (a YAML anchor copied without changing its path) would be every
    row's id used twice: say that, not a bad row each."""
    listed: dict[tuple, int] = {}
    for i, file in enumerate(task.data.files):
        key = (file.path, file.records, file.label, file.split if file.split in ("dev", "test") else "train")
        if key in listed:
            raise LlamalabError(f"task {task.name!r}: data.files[{i}] lists {file.path} again, as data.files"
                                f"[{listed[key]}] does, for the same split: remove one, or fix its path")
        listed[key] = i


def _line(bad: BadRow) -> int:
    """The line a bad row is at (`path:12`, `path:12 (records[3])`); 0 for the file as a whole."""
    match = re.search(r":(\d+)(?: \(|$)", bad.source)
    return int(match.group(1)) if match else 0


def _first_of_each_id(task: Task, examples: list[Example], seen: dict[str, str]
                      ) -> tuple[list[Example], list[BadRow]]:
    """The examples whose id no earlier row of their split had; each repeat is a bad row naming both rows."""
    kept, bad = [], []
    for ex in examples:
        if ex.id in seen:
            if seen[ex.id] == ex.source and not task.data.id_field:  # two lists' records on one line of a file
                bad.append(BadRow(ex.source, f"two records start on this line (from two `records:` lists) and so get "
                                             f"one id, {ex.id!r}: put each record on a line of its own, or give "
                                             "the records ids (data.id_field)"))
                continue
            how = f"fix data.id_field ({task.data.id_field!r})" if task.data.id_field else "remove the repeat"
            bad.append(BadRow(ex.source, f"example id {ex.id!r} was already used at {seen[ex.id]}; ids must be "
                                         f"unique within a split: {how}"))
            continue
        seen[ex.id] = ex.source
        kept.append(ex)
    return kept, bad


def _unrendered(task: Task, examples: list[Example]) -> dict[int, tuple[Example, str]]:
    """The examples the prompt template does not render on (a field missing, or null where it is printed), by
    id(example), with why; every command builds its prompts from the examples that are left."""
    from llamalab.tasks.prompts import Prompter  # prompts imports this module for Example

    prompter = Prompter(task, None, task.prompt.format)
    failing = {}
    for example in examples:
        try:
            prompter.user_text(example)
        except LlamalabError as exc:
            failing[id(example)] = (example, str(exc))
    return failing


def _empty_splits(
    data: TaskData, files_of: dict[str, list[str]], bad_in: dict[str, int], drawn: dict[str, tuple[str, int]]
) -> list[str]:
    """An error per empty split, naming its files and why: bad rows, no rows, or a fraction that rounds to none."""
    errors = []
    for name in SPLITS:
        if name not in data.splits or data.splits[name]:
            continue
        files = list(files_of.get(name, []))
        source, usable = drawn.get(name, ("", 0))
        files += [f for f in files_of.get(source, []) if f not in files]
        if usable:
            why = f"data.split.{name} of the {usable} usable {source} example(s) ({', '.join(files)}) rounds to none"
        else:
            rows = sum(bad_in[f] for f in files)
            why = f"no usable row in {', '.join(files)} " + (
                f"({rows} bad row(s), listed above)" if rows else "(no rows at all)")
        errors.append(f"split {name!r} is empty: {why}")
    return errors


class _RowProblem(ValueError):
    """Why one record cannot become an example."""


def _read_file(task: Task, file: DataFile, path: Path) -> tuple[list[Example], list[BadRow]]:
    raw, bad = read_records(file, path)
    records = [record._replace(value=_map_fields(file, record.value)) for record in raw]
    if records and (missing := _missing_everywhere(task, file, records, raw[0].value)):
        return [], [*bad, missing]
    examples = []
    labels = set(task.answer.labels)
    with_ids = bool(task.data.id_field) and any(follow(r.value, task.data.id_field) is not None for r in records)
    for record in records:
        source, row = record.source, record.value
        if file.spans:
            try:
                row[file.spans.into or task.data.answer_field] = spans_to_entities(file.spans, row)
            except _RowProblem as exc:
                bad.append(BadRow(source, str(exc)))
                continue
        answer = file.label if file.label is not None else row.get(task.data.answer_field)
        missing = [f for f in task.data.text_fields if _empty(row.get(f))]
        if missing:
            bad.append(BadRow(source, f"missing or empty field(s): {', '.join(missing)}"))
            continue
        if _empty(answer):
            bad.append(BadRow(source, f"missing answer field {task.data.answer_field!r}"))
            continue
        # Unicode stays as written: the model is taught (and scored on) the text itself, not \u escapes.
        answer = json.dumps(answer, ensure_ascii=False) if isinstance(answer, list | dict) else (
            _as_label(answer, labels) if task.answer.type == "label" else str(answer).strip())
        if task.answer.type == "label" and answer not in labels:
            shown = ", ".join(repr(label) for label in sorted(labels)[:12]) + (", ..." if len(labels) > 12 else "")
            bad.append(BadRow(source, f"label {answer!r} is not in the task's label set ({shown}): add it to "
                                      "answer.labels, or fix the row"))
            continue
        if unscorable := _unscorable(task, answer):
            bad.append(BadRow(source, unscorable))
            continue
        keys = follow(row, task.data.id_field) if task.data.id_field else None
        if with_ids and (keys is None or _empty(lookup(row, keys))):  # a file without ids keeps the default ones
            bad.append(BadRow(source, f"missing id field {task.data.id_field!r} (data.id_field), which other "
                                      "records of this file have"))
            continue
        ident = str(lookup(row, keys)) if keys is not None else record.id
        examples.append(Example(ident, row, answer, source))  # JSON values stay: a template may join a list
    return examples, bad


def _unscorable(task: Task, answer: str) -> str | None:
    """Why a gold answer cannot be scored (every system would be wrong on it), or None: a number answer with no
    number in it, an entity answer that is no list of {type, text} entities; scored as predictions are parsed."""
    from llamalab.evaluation.answers import extract_number, parse_entities

    shown = answer if len(answer) <= 60 else answer[:57] + "..."
    if task.answer.type == "number" and extract_number(answer) is None:
        return f"answer {shown!r} holds no number (answer.type: number): fix the row, or drop it"
    if task.answer.type == "entities" and parse_entities(answer) is None:
        return (f"answer {shown!r} is not a JSON list of entities (answer.type: entities), e.g. "
                '[{"type": "per", "text": "Ada"}]; [] for none: fix the row')
    return None


def _as_label(value: Any, labels: set[str]) -> str:
    """A data value as a label: JSON's true/false or a float column's 1.0 (pandas, with a gap; "1.0" in a CSV it
    wrote) read as the label the task spells it with ("true", "True", "1"), when it has one; a label written in
    another Unicode normal form (macOS tools write "é" as e + accent) read as the task's."""
    text = str(value).strip()
    if text in labels:
        return text
    number = value if isinstance(value, float) else _float(text) if isinstance(value, str) else None
    spellings = ([str(value).lower(), str(int(value))] if isinstance(value, bool) else
                 [str(int(number))] if number is not None and number.is_integer() else [])
    spellings.append(unicodedata.normalize("NFC", text))
    by_form = {unicodedata.normalize("NFC", label): label for label in labels}
    return next((label for spelling in spellings if (label := by_form.get(spelling)) is not None), text)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _empty(value: Any) -> bool:
    """No text: absent, blank, or a float NaN (JSON's NaN, a pandas-written gap) that would become "nan"."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _map_fields(file: DataFile, raw: dict[str, Any]) -> dict[str, Any]:
    """The raw record plus each `fields:` entry found in it (a path found nowhere is reported per file). Where
    the path is not in this record, neither is the field: a key of the record's own under that name (the raw
    `text` next to the `clean.text` asked for) must not stand in for it."""
    record = dict(raw)
    for name, path in file.fields.items():
        if (keys := follow(raw, path)) is not None:
            record[name] = lookup(raw, keys)
        else:
            record.pop(name, None)
    return record


def _missing_everywhere(task: Task, file: DataFile, records: list[Record], raw: dict[str, Any]) -> BadRow | None:
    """One message for a field no record has (a misnamed field, a header that is data), instead of a bad row each."""
    produced = {file.spans.into or task.data.answer_field} if file.spans else set()
    needed = [*task.data.text_fields, *([] if file.label is not None else [task.data.answer_field])]
    wanted = {name: name for name in needed if name not in produced} | dict(file.fields)
    if file.spans:
        wanted |= {"spans.text": file.spans.text, "spans.spans": file.spans.spans}
    # the task's fields are a record's own keys (a mapped name is one); a nested path is reached through `fields:`
    absent = [name for name, path in wanted.items()
              if not any((name in r.value) if name in needed and name not in file.fields else
                         follow(r.value, name if name in file.fields else path) is not None for r in records)]
    if not absent:
        return None
    nested = next((name for name in absent if name in needed and "." in name
                   and any(follow(r.value, name) is not None for r in records)), None)
    if nested is not None:
        own = nested.replace(".", "_")
        return BadRow(records[0].source, f"{nested!r} is a path into the records, not a field of their own: map it "
                                         f"with `fields: {{{own}: {nested}}}` on the data file and name {own!r} in "
                                         "the task instead")
    if file.resolved_format() in ("csv", "tsv") and file.header and not set(needed) & set(raw):
        columns = f"columns: [{', '.join(needed)}]" if len(raw) == len(needed) else "columns: [...]"
        return BadRow(f"{file.path}:1", f"the first line was read as a header ({', '.join(raw)}) and names none "
                                        f"of the task's fields ({', '.join(needed)}); if the file has no header row, "
                                        f"set `header: false` and `{columns}`")
    shown = ", ".join(f"{name!r} (from {file.fields[name]!r})" if name in file.fields else repr(name)
                      for name in absent)
    if file.resolved_format() == "lines":  # `fields:` does not apply: a line is one field
        return BadRow(records[0].source, f"no record has {shown}: each line of {file.path} is the field 'text' "
                                         "(a file of lines has no other): name 'text' in the task's text_fields")
    fix = ("fix the path" if all(name in file.fields or name.startswith("spans.") for name in absent)
           else f"map it with `fields: {{{absent[0]}: <path>}}`")
    return BadRow(records[0].source, f"no record has {shown}; the records have {', '.join(_paths(raw))}: {fix}")


def _paths(record: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths into a record's nested objects, for messages that say what a record does have."""
    paths = []
    for key, value in record.items():
        if isinstance(value, dict) and value:
            paths.extend(_paths(value, f"{prefix}{key}."))
        else:
            paths.append(f"{prefix}{key}")
    return paths


def spans_to_entities(spec: SpanSpec, record: dict[str, Any]) -> list[dict[str, str]]:
    """A record's character-offset spans as the entity answer [{"type", "text"}, ...], in text order.

    A span without its start key starts at 0 (formats that omit a zero offset). A record without the span
    list has no entities. A null is read as the key left out (Parquet, Arrow and dataset folders store a key some
    records lack as null). Raises _RowProblem naming the span that does not fit the text.
    """
    keys = follow(record, spec.text)
    text = lookup(record, keys) if keys is not None else None
    if not isinstance(text, str):
        raise _RowProblem(f"no text at spans.text {spec.text!r}")
    keys = follow(record, spec.spans)
    spans = lookup(record, keys) if keys is not None else None
    spans = [] if spans is None else spans
    if not isinstance(spans, list):
        raise _RowProblem(f"spans.spans {spec.spans!r} is not a list")
    found = []
    for number, span in enumerate(spans, 1):
        if not isinstance(span, dict):
            raise _RowProblem(f"span {number} is not an object")
        start, end, label = span.get(spec.start), span.get(spec.end), span.get(spec.label)
        start = 0 if start is None else start
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)):
            raise _RowProblem(f"span {number}: {spec.start!r} and {spec.end!r} must be character offsets "
                              f"(got {start!r}, {end!r})")
        stop = end + 1 if spec.end_inclusive else end
        if not 0 <= start < stop <= len(text):
            raise _RowProblem(f"span {number}: offsets {start}..{end} do not fit the text ({len(text)} characters)"
                              + ("" if spec.end_inclusive else "; if `end` is the last character, set "
                                 "spans.end_inclusive: true"))
        if label is None or str(label).strip() == "":
            raise _RowProblem(f"span {number} has no {spec.label!r}")
        found.append((start, stop, str(label)))
    return [{"type": label, "text": text[start:stop]} for start, stop, label in sorted(found)]


def _assemble_splits(task: Task, data: TaskData, pin: bool) -> dict[str, tuple[str, int]]:
    """Derive missing splits from the pool (or train), pinned by a manifest next to the data.

    Returns each drawn split's source and how many examples it was drawn from.
    """
    spec = task.data.split
    has_pool = "pool" in data.splits
    if spec is None:
        if has_pool:
            raise LlamalabError(
                f"task {task.name!r}: some files have no `split:` and the task has no `data.split` "
                "section saying how to divide them"
            )
        return {}
    source_name = "pool" if spec.source == "pool" else "train"
    if has_pool and source_name != "pool":
        raise LlamalabError(
            f"task {task.name!r}: some files have no `split:` but data.split.source is {spec.source!r}, so their "
            "examples would be left out: give each file a `split:`, or set data.split.source: pool")
    if source_name not in data.splits:
        raise LlamalabError(f"task {task.name!r}: data.split.source is {spec.source!r} but no file provides it")
    wanted = [s for s in ("dev", "test") if getattr(spec, s) > 0 and s not in data.splits]
    source = data.splits.pop(source_name)
    manifest = task.lab_root / "data" / "splits" / f"{task.name}.json"
    assignment = _pinned_assignment(task, source, wanted, manifest, pin)
    if manifest.is_file() and pin:
        data.split_manifest = manifest
        # The manifest decides which example lands in which split: it is part of the data's identity.
        data.file_hashes[manifest.relative_to(task.lab_root).as_posix()] = sha256_file(manifest)
    by_id = {ex.id: ex for ex in source}
    for split_name in ("train", *wanted):
        chosen = [by_id[i] for i in assignment[split_name]]
        data.splits[split_name] = data.splits.get(split_name, []) + chosen if split_name == "train" else chosen
    return {name: (source_name, len(source)) for name in ("train", *wanted)}


def _pinned_assignment(
    task: Task, source: list[Example], wanted: list[str], manifest: Path, pin: bool
) -> dict[str, list[str]]:
    """The recorded split if it matches; else a new one, recorded when `pin` (unpinned, a mismatch is no error)."""
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
        shown = manifest.relative_to(task.lab_root).as_posix()
        try:
            pinned = json.loads(manifest.read_text(encoding="utf-8"))
            if not isinstance(pinned, dict) or not isinstance(pinned.get("assignment", {}), dict):
                raise ValueError("not a split manifest")
        except (ValueError, UnicodeDecodeError) as exc:
            raise LlamalabError(f"{shown}: the recorded split cannot be read ({exc}); if a merge left conflict "
                                "markers in it, resolve them, or delete the file to derive (and record) the split "
                                "again") from None
        drawn = sorted(pinned.get("assignment", {}))
        moved = _moved(source, pinned.get("texts_sha256"), task.data.answer_field)
        if pinned.get("fingerprint") == fingerprint and drawn == sorted(["train", *wanted]) and not moved:
            return pinned["assignment"]
        if pin and moved and pinned.get("fingerprint") == fingerprint:
            (now, was), more = moved[0], len(moved) - 1
            raise LlamalabError(
                f"{shown}: examples have moved to other ids since the split was recorded ({now} holds what {was} "
                f"held{f', and {more:,} more' if more else ''}): lines were inserted, deleted or reordered, so the "
                "recorded split would put other examples in each split. Restore the order, give the examples ids "
                "that stay with them (data.id_field), or delete this file to derive (and record) a new split")
        if pin:
            why = "data or `data.split` settings"
            if pinned.get("fingerprint") == fingerprint:  # a file now gives a split the manifest draws, or the reverse
                why = (f"files: it draws {', '.join(s for s in drawn if s != 'train') or 'no split'} from "
                       f"{spec.source}, and now {', '.join(wanted) or 'no split'} must be drawn")
            raise LlamalabError(
                f"{shown}: the recorded split no longer matches the task's {why}; if the change is intended, delete "
                "this file to derive (and record) a new split"
            )
    # only labels are strata: an answer of another kind (a number, a text) is nearly unique, and each group of one
    # or two would round to no held-out example at all
    stratify = spec.stratify and task.answer.type == "label"
    assignment = derive_split(source, {s: getattr(spec, s) for s in wanted}, spec.seed, stratify)
    if pin:
        hashes = _text_hashes(source, task.data.answer_field)
        write_json_atomic(manifest, {"task": task.name, "fingerprint": fingerprint, "assignment": assignment,
                                     "texts_sha256": [hashes[i] for i in sorted(hashes)]})
    return assignment


def _text_hashes(examples: list[Example], answer_field: str) -> dict[str, str]:
    """Each example's inputs (its fields but the answer: a fixed label keeps the split), as a hash by id."""
    return {ex.id: hashlib.sha256(json.dumps({k: v for k, v in ex.fields.items() if k != answer_field},
                                             sort_keys=True, ensure_ascii=False, default=str).encode())
            .hexdigest()[:16] for ex in examples}


def _moved(examples: list[Example], recorded: Any, answer_field: str) -> list[tuple[str, str]]:
    """(id, the id it held before) for each example whose inputs a split manifest recorded under another id that
    no longer holds them: ids that are positions (file:line) after lines were inserted, deleted or reordered. A
    text fixed in place (even into another example's) is no move; a manifest from before the hashes were recorded,
    or of other ids, tells nothing."""
    now = _text_hashes(examples, answer_field)
    if not isinstance(recorded, list) or len(recorded) != len(now):
        return []
    before = dict(zip(sorted(now), recorded, strict=True))
    counts = Counter(before.values())
    held = {digest: i for i, digest in before.items() if counts[digest] == 1}  # a repeated text tells nothing
    return [(ex.id, was) for ex in examples  # in file order
            if now[ex.id] != before[ex.id] and (was := held.get(now[ex.id], ex.id)) != ex.id
            and now[was] != before[was]]


def derive_split(
    examples: list[Example], fractions: dict[str, float], seed: int, stratify: bool
) -> dict[str, list[str]]:
    """Assign example ids to train and the named splits; per label when stratified.

    Each split gets round(n * fraction) examples in all (stratified: shared among the labels by largest
    remainder, so that small labels rounding down one by one cannot shrink, or empty, the split)."""
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.answer if stratify else ""].append(ex)
    rng = random.Random(seed)
    shuffled = {}
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda e: e.id)
        rng.shuffle(members)
        shuffled[key] = members
    assignment: dict[str, list[str]] = {"train": [], **{name: [] for name in fractions}}
    taken = dict.fromkeys(shuffled, 0)
    for name, fraction in fractions.items():
        counts = _apportion(round(len(examples) * fraction), {k: len(v) * fraction for k, v in shuffled.items()},
                            {k: len(v) - taken[k] for k, v in shuffled.items()})
        for key, members in shuffled.items():
            assignment[name].extend(e.id for e in members[taken[key]: taken[key] + counts[key]])
            taken[key] += counts[key]
    for key, members in shuffled.items():
        assignment["train"].extend(e.id for e in members[taken[key]:])
    return assignment


def _apportion(total: int, quotas: dict[str, float], room: dict[str, int]) -> dict[str, int]:
    """`total` split among the keys in proportion to their quotas (largest remainder, ties in key order), none
    over its room."""
    counts = {k: min(int(q), room[k]) for k, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda k: -(quotas[k] - int(quotas[k])))
    while sum(counts.values()) < total and any(counts[k] < room[k] for k in quotas):
        for key in by_remainder:
            if sum(counts.values()) >= total:
                break
            if counts[key] < room[key]:
                counts[key] += 1
    return counts
