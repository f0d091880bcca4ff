"""Reading one data file (or dataset folder) into raw records, each with the place it came from.

Every reader returns the records in file order, each with its source: the path as written in the task
file plus the line the record starts on (`data/x.csv:12`) or its row index (`data/x.parquet[11]`); and the
problems that stopped a record, or the whole file, as bad rows. Nothing here knows about tasks.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from llamalab.tasks.task import DataFile

Key = str | int


class Record(NamedTuple):
    source: str  # where a message should send the reader: the path as written, plus its first line or row
    value: dict[str, Any]
    pinned_id: str = ""  # the default example id where it is not the source

    @property
    def id(self) -> str:
        return self.pinned_id or self.source


@dataclass
class BadRow:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def read_records(file: DataFile, path: Path) -> tuple[list[Record], list[BadRow]]:
    """The records of one data file in file order, and the rows (or whole-file problems) that could not be read."""
    fmt = file.resolved_format()
    if fmt in ("parquet", "arrow", "hf_dataset"):
        return _read_dataset(file, path, fmt)
    if path.is_dir():
        return [], [BadRow(file.path, f"is a folder, not a {fmt} file: point `path:` at a file in it, or use "
                                      "`format: hf_dataset` for a `datasets.save_to_disk` folder")]
    text, problem = _decode(file, path)
    if problem:
        return [], [problem]
    if fmt == "jsonl":
        return _read_jsonl(file, text)
    if fmt == "json":
        return _read_json(file, text)
    if fmt == "lines":
        return _read_lines(file, text)
    return _read_delimited(file, text, fmt)


def follow(value: Any, path: str) -> list[Key] | None:
    """The keys leading to `path` in a record: dotted (`userInput.text`), numbers indexing lists (`answers.0`).

    A key that itself contains dots is taken whole. None when the path leads nowhere.
    """
    if isinstance(value, dict) and path in value:
        return [path]
    keys: list[Key] = []
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            key: Key = part
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            key = int(part)
        else:
            return None
        value = value[key]
        keys.append(key)
    return keys


def lookup(value: Any, keys: list[Key]) -> Any:
    """The value that `follow` found the keys of."""
    for key in keys:
        value = value[key]
    return value


def _decode(file: DataFile, path: Path) -> tuple[str, BadRow | None]:
    data = path.read_bytes()
    utf8 = codecs.lookup(file.encoding).name == "utf-8"
    for mark, wide in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                       (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if utf8 and data.startswith(mark):  # Excel's "Unicode text": its mark would become part of a field name
            return "", BadRow(f"{file.path}:1", f"starts with a {wide.upper()} byte-order mark: the file is {wide}, "
                                                f"not UTF-8: set `encoding: {wide}` on it")
    # utf-8-sig: a byte-order mark (Excel writes one) must not become part of the first column's name.
    try:
        return data.decode("utf-8-sig" if utf8 else file.encoding), None
    except UnicodeDecodeError as exc:
        line, column = data.count(b"\n", 0, exc.start) + 1, exc.start - data.rfind(b"\n", 0, exc.start)
        what = "not UTF-8" if utf8 else f"not valid {file.encoding}"
        return "", BadRow(f"{file.path}:{line}", f"{what} (byte {data[exc.start]:#04x} at column {column}): set "
                                 "`encoding:` on this file to the one it was written in, e.g. `encoding: latin-1` "
                                 "or `encoding: cp1252`")


def _lines(text: str) -> list[str]:
    # Only \n ends a line: JSON strings may legally hold U+2028, which str.splitlines would split at.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _read_lines(file: DataFile, text: str) -> tuple[list[Record], list[BadRow]]:
    """One text per line; blank lines are skipped, as in JSONL and CSV."""
    rows = [Record(f"{file.path}:{line_no}", {"text": line.strip()})
            for line_no, line in enumerate(_lines(text), 1) if line.strip()]
    return rows, []


_UNBUILDABLE = "an integer of over 4,300 digits, or lists and objects nested too deep to read"


def _read_jsonl(file: DataFile, text: str) -> tuple[list[Record], list[BadRow]]:
    rows, bad = [], []
    for line_no, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        source = f"{file.path}:{line_no}"
        try:
            value = json.loads(line, object_pairs_hook=_no_repeated_keys)
        except json.JSONDecodeError as exc:
            bad.append(BadRow(source, f"malformed JSON ({exc.msg}, column {exc.colno})"))
            continue
        except _RepeatedKey as exc:
            bad.append(BadRow(source, _repeated(exc.args[0])))
            continue
        except (ValueError, RecursionError):  # JSON Python cannot build: an integer of over 4,300 digits
            bad.append(BadRow(source, f"malformed JSON ({_UNBUILDABLE})"))
            continue
        _shape(file, source, value, rows, bad)
    return rows, bad


def _shape(file: DataFile, source: str, value: Any, rows: list[Record], bad: list[BadRow]) -> None:
    """Add a parsed record as an object; a list-valued record gets its item names from `columns:`."""
    if isinstance(value, dict):
        rows.append(Record(source, value))
    elif isinstance(value, list) and file.columns:
        if len(value) == len(file.columns):
            rows.append(Record(source, dict(zip(file.columns, value, strict=True))))
        else:
            bad.append(BadRow(source, f"has {len(value)} items, `columns:` names {len(file.columns)}"))
    elif isinstance(value, list):
        bad.append(BadRow(source, "a list, not an object: name its items with `columns:`, e.g. columns: [text, label]"))
    else:
        bad.append(BadRow(source, f"expected a JSON object, got {type(value).__name__}"))


def _read_json(file: DataFile, text: str) -> tuple[list[Record], list[BadRow]]:
    repeats: list[tuple[str, int, int, int]] = []  # key, offset, line, line of its first mention
    try:
        try:
            document = json.loads(text, object_pairs_hook=_no_repeated_keys)
        except _RepeatedKey:
            # Read again to find each repeat: a record that repeats a key is a bad row, as in JSONL; a repeat
            # outside the records (on the way to them) stops the file.
            document = json.loads(text)
            repeats = [(key, at, _line(text, at), _line(text, first))
                       for key, at, first in _repeats(text, _SPACE.match(text).end())]
    except json.JSONDecodeError as exc:
        return [], [BadRow(f"{file.path}:{exc.lineno}", f"malformed JSON ({exc.msg}, column {exc.colno})"
                                                        + _json_lines_hint(file, text, exc))]
    except (ValueError, RecursionError):  # JSON Python cannot build (either read)
        return [], [BadRow(f"{file.path}:1", f"malformed JSON ({_UNBUILDABLE})")]
    keys = follow(document, file.records) if file.records else []
    records = lookup(document, keys) if keys is not None else None
    start = _json_position(text, keys) if isinstance(records, list) else -1
    end = _DECODER.raw_decode(text, start)[1] if start >= 0 else -1
    outside = [repeat for repeat in repeats if not start < repeat[1] < end]
    if outside:
        key, _, line, first = outside[0]
        return [], [BadRow(f"{file.path}:{line}", _repeated(key, line, first))]
    if keys is None:
        shown = f" (its keys: {', '.join(map(str, document))})" if isinstance(document, dict) else ""
        return [], [BadRow(f"{file.path}:1", f"`records: {file.records}` leads nowhere in the document{shown}")]
    if not isinstance(records, list):
        return [], [BadRow(f"{file.path}:1", _not_a_list(file, records))]
    offsets = [offset for _, offset in _json_children(text, start)]
    lines = _line_numbers(text, offsets)
    repeated: dict[int, tuple[str, int, int, int]] = {}  # record index -> its first repeat
    for repeat in repeats:
        repeated.setdefault(bisect.bisect_right(offsets, repeat[1]) - 1, repeat)
    # A minified file puts records on one line: then `records:` and the index tell them apart (and keep ids unique,
    # also across file entries that read other lists of the same file).
    unique = len(set(lines)) == len(lines) and (not file.records or "\n" in text.strip())
    rows: list[Record] = []
    bad: list[BadRow] = []

    def source(line: int, index: int) -> str:
        return f"{file.path}:{line}" if unique else f"{file.path}:{line} ({file.records or ''}[{index}])"

    for index, (line, value) in enumerate(zip(lines, records, strict=True)):
        if index in repeated:  # cited at the repeat, where an editor finds it
            key, _, repeat_line, first = repeated[index]
            bad.append(BadRow(source(repeat_line, index), _repeated(key, repeat_line, first)))
        else:
            _shape(file, source(line, index), value, rows, bad)
    return rows, bad


def _json_lines_hint(file: DataFile, text: str, exc: json.JSONDecodeError) -> str:
    """A hint for JSON Lines in a .json file: a complete value, then another that starts a new line ("Extra data")."""
    line_start = text.rfind("\n", 0, exc.pos) + 1
    if (exc.msg != "Extra data" or text.lstrip()[:1] not in ("{", "[") or text[exc.pos] not in "{["
            or text[line_start:exc.pos].strip()):
        return ""
    drop = " and remove `records:`" if file.records else ""
    return (f": the file looks like JSON Lines (one record per line), not one JSON document: set `format: jsonl` on "
            f"this file{drop}, or name it .jsonl")


class _RepeatedKey(ValueError):
    pass


def _repeated(key: str, line: int = 0, first_line: int = 0) -> str:
    first = f", first on line {first_line}" if first_line != line else ""
    return (f"an object names {key!r} twice{first} (JSON readers keep one of the two silently): rename or merge "
            "the repeats")


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _RepeatedKey(next(key for key in keys if keys.count(key) > 1))
    return dict(pairs)


def _not_a_list(file: DataFile, found: Any) -> str:
    where = f"`records: {file.records}`" if file.records else "the document"
    message = (f"{where} is {type(found).__name__}, not a list: a .json file is read as a list of records, "
               "or as the list that `records:` points at")
    if isinstance(found, dict):
        # Suggest only a key that holds records: a list of objects (or lists); `records:` reads nothing else.
        inner = next((k for k, v in found.items()
                      if isinstance(v, list) and v and all(isinstance(item, dict | list) for item in v)), None)
        if inner is not None:
            path = f"{file.records}.{inner}" if file.records else inner
            return (f"{where} is an object with keys {', '.join(found)}, not a list of records: point `records:` at "
                    f"the list inside it, one file entry per split, e.g. {{path: {file.path}, records: {path}, "
                    "split: train}")
        message = (f"{where} is one object (keys {', '.join(found)}), not a list of records, and none of its keys "
                   "holds a list of records: a .json file is read as a list of records, `[{...}, {...}]`, or as the "
                   "list that `records:` points at")
        if not file.records:
            message += "; for one record per line (JSON Lines), set `format: jsonl` on this file, or name it .jsonl"
    return message


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")


def _json_position(text: str, keys: list[Key]) -> int:
    """Offset of the value at `keys` in a valid JSON document."""
    pos = _SPACE.match(text).end()
    for key in keys:
        pos = next(offset for k, offset in _json_children(text, pos) if k == key)
    return pos


def _repeats(text: str, pos: int) -> Iterator[tuple[str, int, int]]:
    """(key, offset of its repeat, offset of its first mention) for each key an object repeats in the valid JSON value
    at `pos`. A key's offset is its closing quote's: the last `"` before its value (only a colon lies between)."""
    if text[pos] not in "[{":
        return
    seen: dict[str, int] = {}
    for key, offset in _json_children(text, pos):
        if isinstance(key, str):
            at = text.rfind('"', 0, offset)
            if key in seen:
                yield key, at, seen[key]
            seen.setdefault(key, at)
        yield from _repeats(text, offset)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _json_children(text: str, pos: int):
    """(key or index, offset) of each member of the valid JSON object or array that starts at `pos`."""
    is_object = text[pos] == "{"
    pos = _SPACE.match(text, pos + 1).end()
    index = 0
    while text[pos] not in "]}":
        key: Key = index
        if is_object:
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _SPACE.match(text, _SPACE.match(text, pos).end() + 1).end()  # past the colon
        yield key, pos
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _SPACE.match(text, pos).end()
        if text[pos] == ",":
            pos = _SPACE.match(text, pos + 1).end()
        index += 1


def _line_numbers(text: str, offsets: list[int]) -> list[int]:
    numbers, line, last = [], 1, 0
    for offset in offsets:
        line += text.count("\n", last, offset)
        last = offset
        numbers.append(line)
    return numbers


_UNQUOTED_HINT = "; if the file does not quote its fields (a \" is just a character), set `quotechar: null` on it"


def _read_delimited(file: DataFile, text: str, fmt: str) -> tuple[list[Record], list[BadRow]]:
    csv.field_size_limit(max(csv.field_size_limit(), len(text)))  # a long document is one field (131,072 by default)
    reader = csv.reader(
        io.StringIO(text, newline=""), delimiter=file.delimiter or ("\t" if fmt == "tsv" else ","),
        quotechar=file.quotechar, quoting=csv.QUOTE_MINIMAL if file.quotechar else csv.QUOTE_NONE, strict=True,
    )
    names = file.columns or []
    what = "`columns:` names"
    if file.header:
        try:
            names = [name.strip() for name in next(reader)]
        except StopIteration:
            return [], []
        except csv.Error as exc:
            return [], [BadRow(f"{file.path}:1", f"malformed header ({exc})")]
        if repeated := sorted({name for name in names if name and names.count(name) > 1}):  # not a sheet's blanks
            return [], [BadRow(f"{file.path}:1", f"the header names {', '.join(map(repr, repeated))} more than "
                                                 "once: rename the columns, or set `header: false` and `columns:`")]
        what = "the header has"
    rows: list[Record] = []
    bad: list[BadRow] = []
    while True:
        # A quoted value may span lines: a record is cited at its first line, where an editor finds it.
        source = f"{file.path}:{reader.line_num + 1}"
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            unclosed = ": a quote opened here is never closed" if "unexpected end of data" in str(exc) else ""
            bad.append(BadRow(source, f"malformed {fmt.upper()} ({exc}{unclosed})"
                                      + (_UNQUOTED_HINT if file.quotechar else "")))
            continue
        if not values:
            continue
        values = [v.replace("\r\n", "\n") for v in values]  # a quoted line break reads the same from any checkout
        if len(values) != len(names):
            bad.append(BadRow(source, f"has {len(values)} columns, {what} {len(names)}"))
            continue
        # Ids keep the line a record ends on: splits and run records were pinned with those.
        rows.append(Record(source, dict(zip(names, values, strict=True)), f"{file.path}:{reader.line_num}"))
    return rows, bad


def _read_dataset(file: DataFile, path: Path, fmt: str) -> tuple[list[Record], list[BadRow]]:
    """Parquet, Arrow and `save_to_disk` folders through `datasets`, from the local disk only."""
    import datasets  # slow to import: only the formats that need it pay for it
    import pyarrow
    import pyarrow.parquet

    where = file.path
    try:
        if fmt == "parquet":
            dataset = datasets.Dataset(datasets.table.InMemoryTable(pyarrow.parquet.read_table(path)))
        elif fmt == "arrow":
            dataset = datasets.Dataset.from_file(str(path))
        else:
            problem = _not_a_dataset_folder(file, path)
            if problem:
                return [], [problem]
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if file.records not in loaded:
                    split = f"has no split {file.records!r}" if file.records else "holds several splits"
                    example = "train" if "train" in loaded else next(iter(loaded))
                    return [], [BadRow(file.path, f"{split} (it has {', '.join(loaded)}): name one with `records:`, "
                                                  f"one file entry per split, e.g. {{path: {file.path}, "
                                                  f"records: {example}, split: train}}")]
                dataset, where = loaded[file.records], f"{file.path}[{file.records}]"
            elif file.records:
                return [], [BadRow(file.path, "holds one dataset without splits: remove `records:`")]
            else:
                dataset = loaded
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        kind = {"parquet": "a Parquet file", "arrow": "an Arrow file as `datasets` writes it"}.get(fmt, "a dataset")
        return [], [BadRow(file.path, f"could not be read as {kind} ({type(exc).__name__}: {exc})")]
    # Hub datasets store class labels as integers with their names in the features: the task wants the names.
    names = {col: feature.names for col, feature in dataset.features.items()
             if isinstance(feature, datasets.ClassLabel)}
    rows: list[Record] = []
    for index, row in enumerate(dataset.to_list()):
        for column, labels in names.items():
            value = row[column]
            row[column] = labels[value] if isinstance(value, int) and 0 <= value < len(labels) else None
        rows.append(Record(f"{where}[{index}]", row))
    return rows, []


def _not_a_dataset_folder(file: DataFile, path: Path) -> BadRow | None:
    if path.is_file():
        if file.format is None:
            return BadRow(file.path, "the format cannot be told from the file name: set `format:` (jsonl, json, csv, "
                                     "tsv, parquet or arrow), or `label:` to read it as one example of that label per "
                                     "line")
        return BadRow(file.path, "is a file: `format: hf_dataset` reads a `datasets.save_to_disk` folder")
    if not any((path / marker).is_file() for marker in ("dataset_dict.json", "dataset_info.json", "state.json")):
        return BadRow(file.path, "is a folder but not a `datasets.save_to_disk` one (no dataset_dict.json or "
                                 "dataset_info.json): point `path:` at a data file in it")
    return None
