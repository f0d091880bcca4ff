"""Random datasets written in every data layout the README documents ("Data files": jsonl, json lists, a JSON
object of splits with `records:` and `columns:`, nested records with `fields:`, csv/tsv with and without a header,
`delimiter`, `quotechar` (also null), `encoding` (latin-1, cp1252, utf-16, a UTF-8 byte-order mark), one text
file per label, Parquet, Arrow, `save_to_disk` folders), then loaded through the public path (`load_task`,
`load_task_data`): every layout gives exactly the examples written (text, answer, split, ids where the layout
carries them, file order, the `file:line` / `[index]` a record is cited at), the same in every layout, and a
derived split is a recorded, deterministic partition of its pool with the documented sizes.

The texts hold quotes, delimiters, line breaks (LF, CRLF, lone CR), tabs, spaces around them, emoji, RTL marks,
combining accents, NUL, template-looking text, number-looking and empty-looking strings and, now and then, one
field longer than the csv module's default field limit.
"""

from __future__ import annotations

import codecs
import json
import random
import re
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from llamalab import LlamalabError, load_task
from llamalab.tasks.data import load_task_data

SPLITS = ("train", "dev", "test")

PLAIN = ["good", "bad", "film", "plot", "The", "a", "0", "42", "-3.5", "1e3", "NaN", "null", "None", "true", "N/A",
         "{{ text }}", "{% if x %}", "\\", "\\n", "\\u0041", "</script>", "#", "--", "=1+1", "@x", "*", "[1]", "{}"]
QUOTES = ['"', "'", '""', "''", '"quoted"', "it's", "'single'", '\\"', '"a, b"']
DELIMITERS = [",", ";", "|", ",,", ";;", ", ", ";'"]
TABS = ["\t", "\t\t", "a\tb"]
BREAKS = ["\n", "\r\n", "\r", "\n\n", "\r\n\r\n", "\n\r", "x\ry"]
SPACES = [" ", "  ", "\xa0", "\u3000", "\u2009"]
LATIN1 = ["é", "ß", "ñ", "¿qué?", "naïve", "Ünïcödé", "£5", "©", "µ", "½", "ÿ", "Ø", "«»", "\xad", "\x85"]
UNICODE = ["中文", "日本語", "😀", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "שלום", "مرحبا", "\u200f", "\u202e", "\u200b",
           "e\u0301", "\u2028", "\u2029", "Ωμέγα", "Москва", "\U0001d54f", "\ufffd", "…", "—", "€", "\x00", "\x07"]
EMPTYISH = ["0", "-", ".", "nan", "None", "null", "''", '""', "'", '"', "[]", "{}", "0.0", "false", "\u200b"]
BLANKS = ["", " ", "  ", "\t", "\u3000", "\xa0", "\n", "\r\n", " \n\t "]
LABELS = ["neg", "pos", "0", "1", "10", "-1", "2.5", "1.0", "très bon", "😀 happy", "שלילי", "null", "yes", "N/A",
          "mixed, really", "it's \"ok\"; fine", "Ωμέγα"]
NEWLINE = re.compile(r"\r\n|\r|\n")


@dataclass(eq=False)
class Row:
    uid: str
    text: str
    answer: str
    blank: bool = False  # a text with nothing in it: a bad row wherever a row has fields, a skipped line in a .txt
    note: str = ""


@dataclass
class Dataset:
    groups: dict[str, list[Row]]  # split name, or "pool" for files without `split:`
    labels: list[str]
    answer_type: str  # label | text
    id_field: str | None  # None, "uid" or the dotted "meta.id"
    latin1: bool  # every text, label and id is latin-1 (and maybe cp1252)
    oneline: bool  # no tab, CR or LF anywhere and no space at a text's edges: a .txt line or an unquoted tsv holds it
    split_spec: str | None = None  # data.split as YAML flow

    def representable(self, encoding: str) -> bool:
        values = [v for rows in self.groups.values() for r in rows for v in (r.text, r.answer, r.uid, r.note)]
        try:
            "".join(values + self.labels).encode(encoding)
        except UnicodeEncodeError:
            return False
        return True


def random_text(rng: random.Random, ds_latin1: bool, oneline: bool, long: bool = False) -> str:
    pool = PLAIN + QUOTES + DELIMITERS + LATIN1 + [s for s in SPACES if not ds_latin1 or ord(max(s)) < 256]
    if not ds_latin1:
        pool += UNICODE
    if not oneline:
        pool += TABS + BREAKS
    if rng.random() < 0.12:
        text = rng.choice([e for e in EMPTYISH if not ds_latin1 or ord(max(e)) < 256])
    else:
        text = "".join(rng.choice(pool) + rng.choice(["", "", " "]) for _ in range(rng.randint(1, 8)))
    if long:  # past csv's default field limit (131,072 characters)
        text = (text + " lorem ipsum ") * (140_000 // (len(text) + 13) + 1)
    if not oneline and rng.random() < 0.3:
        edges = [s for s in SPACES + TABS[:2] + BREAKS[:3] if not ds_latin1 or ord(max(s)) < 256]
        text = rng.choice(edges) + text + rng.choice(edges)
    if oneline:
        text = text.strip()
    return text if text.strip() else "0"


def random_dataset(rng: random.Random, groups: tuple[str, ...], size: tuple[int, int], *, answer_type: str = "",
                   id_field: str | None | bool = True, blanks: bool = True) -> Dataset:
    latin1 = rng.random() < 0.35
    oneline = rng.random() < 0.35
    answer_type = answer_type or ("text" if rng.random() < 0.2 else "label")
    if id_field is True:
        id_field = rng.choice([None, "uid", "meta.id"])
    choices = [label for label in LABELS if not latin1 or label.isascii() or label == "très bon"]
    labels = rng.sample(choices, rng.randint(2, 5))
    counts = [rng.randint(*size) for _ in groups]
    numbers = rng.sample(range(10_000), sum(counts))
    form = rng.choice(["int", "zero", "word"])
    uids = iter(str(n) if form == "int" else f"0{n}" if form == "zero" else f"ex-{n}-{'é' if latin1 else 'ид'}"
                for n in numbers)
    long_row = rng.randrange(sum(counts)) if rng.random() < 0.12 else -1
    out: dict[str, list[Row]] = {}
    for group, count in zip(groups, counts, strict=True):
        rows = []
        for _ in range(count):
            text = random_text(rng, latin1, oneline, long=long_row == 0)
            long_row -= 1
            answer = rng.choice(labels) if answer_type == "label" else random_text(rng, latin1, oneline)
            blank = blanks and rng.random() < 0.08
            if blank:
                text = rng.choice([b for b in BLANKS if not oneline or b in ("", " ", "  ", "\xa0")
                                   if not latin1 or ord(max(b or " ")) < 256])
            rows.append(Row(next(uids), text, answer, blank, rng.choice(["", "n/a", "vu 2×", "x,y"])))
        if all(r.blank for r in rows):  # a split keeps at least one example
            rows[0].text, rows[0].blank = rng.choice(PLAIN), False
        out[group] = rows
    return Dataset(out, labels, answer_type, id_field, latin1, oneline)


# --- writing the layouts ---------------------------------------------------------------------------------------


@dataclass
class Written:
    entries: list[str]  # data.files entries as YAML flow mappings
    order: dict[str, list[Row]]  # per split (or "pool"), the examples in the order the files give them
    sources: dict[int, str]  # id(row) -> where the README says the record is cited: `path:line`, `path[index]`
    ids: bool = True  # the rows carry data.id_field
    delimited: bool = False  # csv/tsv: a quoted CRLF reads as LF ("reads the same from any checkout")
    blank_is_bad: bool = True  # a blank text is a bad row (a .txt file skips blank lines instead)


def q(value: str) -> str:
    """A YAML double-quoted scalar."""
    return json.dumps(value, ensure_ascii=False)


def split_key(group: str) -> str:
    return "" if group == "pool" else f", split: {group}"


def save(path: Path, text: str, encoding: str = "utf-8", bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + text.encode(encoding))


def line_at(text: str, offset: int) -> int:
    """The line an offset is on, counting LF, CRLF and a lone CR as line ends."""
    return 1 + len(NEWLINE.findall(text, 0, offset))


def canonical_number(value: str) -> int | float | None:
    try:
        number = json.loads(value)
    except ValueError:
        return None
    return number if isinstance(number, int | float) and not isinstance(number, bool) and str(number) == value \
        else None


def written_answer(row: Row, ds: Dataset, rng: random.Random, numbers: bool = True) -> object:
    """The answer as a file might hold it: a JSON number where it is one, padded with spaces now and then."""
    if numbers and ds.answer_type == "label" and (n := canonical_number(row.answer)) is not None and rng.random() < .5:
        return n
    if ds.answer_type == "label" and rng.random() < 0.1:
        return f" {row.answer}  "
    return row.answer


def written_id(row: Row, rng: random.Random, numbers: bool = True) -> object:
    if numbers and (n := canonical_number(row.uid)) is not None and isinstance(n, int) and rng.random() < 0.5:
        return n
    return row.uid


def written_text(row: Row, rng: random.Random) -> str | None:
    """A blank text as written, or now and then as a null."""
    return None if row.blank and rng.random() < 0.3 else row.text


def json_record(row: Row, ds: Dataset, rng: random.Random) -> dict:
    items = [("text", written_text(row, rng)), ("label", written_answer(row, ds, rng)), ("note", row.note)]
    if ds.id_field == "uid":
        items.append(("uid", written_id(row, rng)))
    elif ds.id_field == "meta.id":  # nested, or a key that itself holds a dot (taken whole)
        items.append(("meta", {"id": written_id(row, rng)}) if rng.random() < 0.7 else ("meta.id", row.uid))
    rng.shuffle(items)
    return dict(items)


def write_jsonl(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    entries, sources = [], {}
    newline, bom, ascii_only = rng.choice(["\n", "\r\n"]), rng.random() < 0.3, rng.random() < 0.5
    for group, rows in ds.groups.items():
        suffix = rng.choice([".jsonl", ".ndjson", ".data"])
        path = f"data/{name}/{group}{suffix}"
        text = ""
        for row in rows:
            if rng.random() < 0.15:
                text += rng.choice(["", " ", "\t"]) + newline  # blank lines are skipped
            sources[id(row)] = f"{path}:{line_at(text, len(text))}"
            text += json.dumps(json_record(row, ds, rng), ensure_ascii=ascii_only) + newline
        if rng.random() < 0.3:
            text = text.removesuffix(newline)  # no newline at the end of the file
        save(root / path, text, bom=bom)
        fmt = ", format: jsonl" if suffix == ".data" else ""
        entries.append(f"{{path: {q(path)}{fmt}{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def pair_columns(ds: Dataset, rng: random.Random) -> list[str]:
    columns = ["text", "label"] + ([ds.id_field] if ds.id_field else [])
    rng.shuffle(columns)
    return columns


def pair(row: Row, columns: list[str], ds: Dataset, rng: random.Random, numbers: bool = True) -> list:
    values = {"text": written_text(row, rng), "label": written_answer(row, ds, rng, numbers)}
    return [values[c] if c in values else written_id(row, rng, numbers) for c in columns]


def write_jsonl_pairs(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    """List-valued JSONL records whose items `columns:` names."""
    entries, sources = [], {}
    for group, rows in ds.groups.items():
        columns = pair_columns(ds, rng)
        path = f"data/{name}/{group}.jsonl"
        lines = [json.dumps(pair(row, columns, ds, rng), ensure_ascii=rng.random() < 0.5) for row in rows]
        sources.update((id(row), f"{path}:{i}") for i, row in enumerate(rows, 1))
        save(root / path, "\n".join(lines) + "\n")
        entries.append(f"{{path: {q(path)}, columns: [{', '.join(map(q, columns))}]{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def json_list(records: list, rng: random.Random, path: str, before: str = "", after: str = ""
              ) -> tuple[str, list[str]]:
    """A JSON list of records inside `before`...`after` and where each is cited: minified (several records on one
    line: cited with `records:` and the index, as is a list `records:` reads from a one-line document), one record
    per line, or pretty-printed (each record from its own line)."""
    style, ascii_only = rng.choice(["minified", "lines", "pretty"]), rng.random() < 0.5
    if style == "minified":
        body = json.dumps(records, ensure_ascii=ascii_only)
        text = before + body + after
        if len(records) == 1 and not before:
            return text, [f"{path}:1"]
        return text, [f"{path}:1 ([{i}])" for i in range(len(records))]
    indent = rng.randint(1, 4)
    dumped = [json.dumps(r, ensure_ascii=ascii_only, indent=indent if style == "pretty" else None) for r in records]
    body = "[\n" + ",\n".join(dumped) + "\n]"
    text, cited, line = before + body + after, [], before.count("\n") + 2
    for record in dumped:
        cited.append(f"{path}:{line}")
        line += record.count("\n") + 1
    return text + "\n", cited


def write_json(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    entries, sources = [], {}
    for group, rows in ds.groups.items():
        path = f"data/{name}/{group}.json"
        text, cited = json_list([json_record(row, ds, rng) for row in rows], rng, path)
        sources.update((id(row), c) for row, c in zip(rows, cited, strict=True))
        save(root / path, text, bom=rng.random() < 0.2)
        entries.append(f"{{path: {q(path)}{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def write_json_splits(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    """CLINC150's data_full.json: one object of splits holding [text, label] pairs, each split's rows in two lists
    (`train` and `oos_train`), read with YAML anchors as the README shows; the lists maybe under `data`."""
    key = {"train": "train", "dev": "val", "test": "test", "pool": "all"}
    nest = rng.random() < 0.3
    columns = pair_columns(ds, rng)
    path = f"data/{name}/data_full.json"
    lists: list[tuple[str, list[Row]]] = []
    for group, rows in ds.groups.items():
        cut = rng.randint(0, len(rows))
        lists += [(key[group], rows[:cut]), (f"oos_{key[group]}", rows[cut:])]
    order = [lists[i] for i in rng.sample(range(len(lists)), len(lists))]  # the document's own key order
    minified, ascii_only = rng.random() < 0.5, rng.random() < 0.5
    sources = {}
    prefix = "data." if nest else ""
    if minified:
        document = {k: [pair(r, columns, ds, rng) for r in rows] for k, rows in order}
        text = json.dumps({"data": document} if nest else document, ensure_ascii=ascii_only)
        for k, rows in lists:
            sources.update((id(row), f"{path}:1 ({prefix}{k}[{i}])") for i, row in enumerate(rows))
    else:
        text = "{\n" + ('"data": {\n' if nest else "")
        for n, (k, rows) in enumerate(order):
            text += f'"{k}": [\n'
            for i, row in enumerate(rows):
                sources[id(row)] = f"{path}:{line_at(text, len(text))}"
                text += json.dumps(pair(row, columns, ds, rng), ensure_ascii=ascii_only)
                text += ",\n" if i < len(rows) - 1 else "\n"
            text += "]" + (",\n" if n < len(order) - 1 else "\n")
        text += ("}\n" if nest else "") + "}\n"
    save(root / path, text)
    entries = []
    for group in ds.groups:
        for k in (key[group], f"oos_{key[group]}"):
            entry = f"records: {prefix}{k}{split_key(group)}"
            if not entries:
                entries.append(f"&clinc {{path: {q(path)}, columns: [{', '.join(map(q, columns))}], {entry}}}")
            else:
                entries.append(f"{{<<: *clinc, {entry}}}")
    return Written(entries, dict(ds.groups), sources)


def write_json_nested(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    """Nested records [{"userInput": {"text": ...}, "intent": ...}] mapped with `fields:` (a list item as
    `answers.0`), maybe under `records: data.items`."""
    entries, sources = [], {}
    for group, rows in ds.groups.items():
        path = f"data/{name}/{group}-nested.json"
        answer_path = rng.choice(["intent", "answers.0"])
        records = []
        for row in rows:
            answer = written_answer(row, ds, rng)
            record = {"userInput": {"text": written_text(row, rng)},
                      **({"intent": answer} if answer_path == "intent" else {"answers": [answer, "other"]})}
            if ds.id_field == "uid":
                record["uid"] = written_id(row, rng)
            elif ds.id_field == "meta.id":
                record["meta"] = {"id": written_id(row, rng)}
            records.append(record)
        wrapped = rng.random() < 0.5
        if wrapped:
            text, cited = json_list(records, rng, path, '{"data": {"items": ', "}}")
            cited = [c.replace(" ([", " (data.items[") for c in cited]  # minified: cited with `records:`
        else:
            text, cited = json_list(records, rng, path)
        sources.update((id(row), c) for row, c in zip(rows, cited, strict=True))
        save(root / path, text)
        where = ", records: data.items" if wrapped else ""
        entries.append(f"{{path: {q(path)}{where}, fields: {{text: userInput.text, label: {answer_path}}}"
                       f"{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def delimited(rows: list[list[str]], delimiter: str, quotechar: str | None, newline: str, quote_all: bool
              ) -> tuple[str, list[int]]:
    """The csv text of rows (quoted where a value needs it), and the offset each row starts at."""
    out, offsets, at = [], [], 0

    def quoted(value: str) -> str:
        if quotechar is None:
            assert not set(value) & {delimiter, "\r", "\n"}, value
            return value
        if quote_all or set(value) & {delimiter, quotechar, "\r", "\n"}:
            return quotechar + value.replace(quotechar, quotechar * 2) + quotechar
        return value

    for values in rows:
        offsets.append(at)
        line = delimiter.join(map(quoted, values)) + newline
        out.append(line)
        at += len(line)
    return "".join(out), offsets


def write_delimited(ds: Dataset, rng: random.Random, root: Path, name: str, *, fmt: str, delimiter: str | None = None,
                    quotechar: str | None = '"', encoding: str | None = None, header: bool = True,
                    files_per_group: int = 1, quotechar_option: bool = False) -> Written:
    """csv/tsv files, with a header (its column names mapped with `fields:` where they are not the task's) or
    headerless with `columns:`, several files to a split read through the README's `&tsv` anchor."""
    entries, sources = [], {}
    separator = delimiter or ("\t" if fmt == "tsv" else ",")
    newline, bom = rng.choice(["\n", "\r\n"]), encoding is None and rng.random() < 0.4
    quote_all = quotechar is not None and rng.random() < 0.25
    text_column = rng.choice(["text", "Review Text", "review.text"]) if header else "text"
    label_column = rng.choice(["label", "Sentiment"]) if header else "label"
    suffix = rng.choice([f".{fmt}", ".txt"])  # `format:` says what the suffix does not
    columns = [text_column, label_column, *([ds.id_field] if ds.id_field else []), "note"]
    for group, rows in ds.groups.items():
        if header:
            rng.shuffle(columns)
        cuts = sorted(rng.randint(0, len(rows)) for _ in range(files_per_group - 1))
        for part, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(rows)], strict=True)):
            path = f"data/{name}/{group}-{part}{suffix}"
            chunk = rows[start:stop]

            def value(row: Row, column: str) -> str:
                return {text_column: row.text, label_column: str(written_answer(row, ds, rng)), "note": row.note,
                        }.get(column, row.uid)

            table = ([columns] if header else []) + [[value(row, c) for c in columns] for row in chunk]
            text, offsets = delimited(table, separator, quotechar, newline, quote_all)
            if rng.random() < 0.3:
                text = text.removesuffix(newline)
            for row, offset in zip(chunk, offsets[1:] if header else offsets, strict=True):
                sources[id(row)] = f"{path}:{line_at(text, offset)}"
            save(root / path, text, encoding or "utf-8", bom)
            split = [split_key(group).removeprefix(", ")] if group != "pool" else []
            if entries and not header:  # the README's `- &tsv {...}` then `- {<<: *tsv, path: ...}`
                entries.append("{" + ", ".join(["<<: *tsv", f"path: {q(path)}", *split]) + "}")
                continue
            options = [f"path: {q(path)}"]
            if suffix == ".txt":
                options.append(f"format: {fmt}")
            if delimiter:
                options.append(f"delimiter: {q(delimiter)}")
            if quotechar_option:
                options.append(f"quotechar: {q(quotechar) if quotechar else 'null'}")
            if encoding:
                options.append(f"encoding: {encoding}")
            if header:
                mapped = {k: c for k, c in (("text", text_column), ("label", label_column)) if c != k}
                if mapped:
                    options.append("fields: {" + ", ".join(f"{k}: {q(c)}" for k, c in mapped.items()) + "}")
            else:
                options += ["header: false", f"columns: [{', '.join(map(q, columns))}]"]
            entries.append(("" if header else "&tsv ") + "{" + ", ".join(options + split) + "}")
    return Written(entries, dict(ds.groups), sources, delimited=True)


def write_csv(ds, rng, root, name):
    return write_delimited(ds, rng, root, name, fmt="csv", delimiter=rng.choice([None, None, "|", ";", " ", ":"]))


def write_csv_latin1(ds, rng, root, name):
    """The README's `{path: data/export.csv, delimiter: ";", quotechar: "'", encoding: latin-1}`."""
    encoding = "cp1252" if ds.representable("cp1252") and rng.random() < 0.4 else "latin-1"
    return write_delimited(ds, rng, root, name, fmt="csv", delimiter=";", quotechar="'", encoding=encoding,
                           quotechar_option=True)


def write_tsv(ds, rng, root, name):
    return write_delimited(ds, rng, root, name, fmt="tsv")


def write_tsv_headerless(ds, rng, root, name):
    """The README's headerless `text<TAB>label` files, one per domain, read with a YAML anchor."""
    return write_delimited(ds, rng, root, name, fmt="tsv", header=False, files_per_group=2)


def write_tsv_unquoted(ds, rng, root, name):
    """`quotechar: null`: a tsv whose texts hold stray quotes."""
    return write_delimited(ds, rng, root, name, fmt="tsv", quotechar=None, header=rng.random() < 0.5,
                           quotechar_option=True)


def write_tsv_utf16(ds, rng, root, name):
    """Excel's "Unicode text": UTF-16 with its byte-order mark, `encoding: utf-16`."""
    return write_delimited(ds, rng, root, name, fmt="tsv", encoding="utf-16")


def write_lines(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    """One text file per label (`label:`), each line a text; blank lines are no examples."""
    entries, sources, order = [], {}, {}
    newline, bom = rng.choice(["\n", "\r\n"]), rng.random() < 0.3
    for group, rows in ds.groups.items():
        order[group] = []
        for k, label in enumerate(ds.labels):
            path = f"data/{name}/{group}-{k}" + rng.choice([".txt", ""])  # no suffix + `label:`: lines
            text = ""
            for row in rows:
                if row.answer != label:
                    continue
                if rng.random() < 0.1:
                    text += rng.choice(["", " "]) + newline
                sources[id(row)] = f"{path}:{line_at(text, len(text))}"
                text += row.text + newline
                if not row.blank:
                    order[group].append(row)
            save(root / path, text, bom=bom)
            yaml_label = label if label.isdigit() and label == str(int(label)) and rng.random() < 0.5 else q(label)
            entries.append(f"{{path: {q(path)}, label: {yaml_label}{split_key(group)}}}")
    return Written(entries, order, sources, ids=False, blank_is_bad=False)


def dataset_rows(rows: list[Row], ds: Dataset, rng: random.Random, class_labels: bool, int_ids: bool,
                 int_labels: bool) -> list[dict]:
    out = []
    for row in rows:
        record = {"text": written_text(row, rng), "note": row.note,
                  "label": ds.labels.index(row.answer) if class_labels else
                  int(row.answer) if int_labels else written_answer(row, ds, rng, numbers=False)}
        if ds.id_field == "uid":
            record["uid"] = int(row.uid) if int_ids else row.uid
        elif ds.id_field == "meta.id":
            record["meta"] = {"id": int(row.uid) if int_ids else row.uid}
        out.append(record)
    return out


def dataset_options(ds: Dataset, rng: random.Random) -> tuple[bool, bool, bool]:
    """Class labels (their names given as the answers), integer ids, integer labels: as the Hub stores them."""
    every = [r for rows in ds.groups.values() for r in rows]
    class_labels = ds.answer_type == "label" and rng.random() < 0.4
    int_ids = all(canonical_number(r.uid) is not None and r.uid.lstrip("-").isdigit() for r in every) \
        and rng.random() < 0.5
    int_labels = (not class_labels and ds.answer_type == "label" and rng.random() < 0.5
                  and all(label.lstrip("-").isdigit() and canonical_number(label) is not None for label in ds.labels))
    return class_labels, int_ids, int_labels


def hf_dataset(rows: list[dict], ds: Dataset, class_labels: bool):
    from datasets import ClassLabel, Features, Value
    from datasets import Dataset as HfDataset

    if not class_labels:
        return HfDataset.from_list(rows)
    features = {"text": Value("string"), "note": Value("string"), "label": ClassLabel(names=ds.labels)}
    if ds.id_field == "uid":
        features["uid"] = Value("string") if isinstance(rows[0]["uid"], str) else Value("int64")
    elif ds.id_field == "meta.id":
        features["meta"] = {"id": Value("string") if isinstance(rows[0]["meta"]["id"], str) else Value("int64")}
    return HfDataset.from_list(rows, features=Features({k: features[k] for k in rows[0]}))


def write_parquet(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries, sources = [], {}
    class_labels, int_ids, int_labels = dataset_options(ds, rng)
    for group, rows in ds.groups.items():
        path = f"data/{name}/{group}-00000-of-00001.parquet"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        records = dataset_rows(rows, ds, rng, class_labels, int_ids, int_labels)
        writer = rng.choice(["datasets", "pyarrow", "pandas"])
        if class_labels or writer == "datasets":
            hf_dataset(records, ds, class_labels).to_parquet(root / path)
        elif writer == "pyarrow":
            pq.write_table(pa.Table.from_pylist(records), root / path)
        else:  # pandas: an answer column as a Categorical, stored as a dictionary
            frame = pd.DataFrame(records)
            if not int_labels:
                frame["label"] = pd.Categorical(frame["label"])
            frame.to_parquet(root / path)
        sources.update((id(row), f"{path}[{i}]") for i, row in enumerate(rows))
        entries.append(f"{{path: {q(path)}{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def write_arrow(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    entries, sources = [], {}
    class_labels, int_ids, int_labels = dataset_options(ds, rng)
    for group, rows in ds.groups.items():
        hf_dataset(dataset_rows(rows, ds, rng, class_labels, int_ids, int_labels), ds, class_labels).save_to_disk(
            root / "data" / name / group)
        path = f"data/{name}/{group}/data-00000-of-00001.arrow"
        assert (root / path).is_file()
        sources.update((id(row), f"{path}[{i}]") for i, row in enumerate(rows))
        entries.append(f"{{path: {q(path)}{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


def write_hf_folder(ds: Dataset, rng: random.Random, root: Path, name: str) -> Written:
    """A `save_to_disk` folder: a DatasetDict read split by split with `records:`, or one Dataset per folder."""
    from datasets import DatasetDict

    class_labels, int_ids, int_labels = dataset_options(ds, rng)
    key = {"train": "train", "dev": "validation", "test": "test", "pool": "train"}
    parts = {g: hf_dataset(dataset_rows(rows, ds, rng, class_labels, int_ids, int_labels), ds, class_labels)
             for g, rows in ds.groups.items()}
    entries, sources = [], {}
    fmt = ", format: hf_dataset" if rng.random() < 0.3 else ""
    if rng.random() < 0.6:
        path = f"data/{name}/hub_dataset"
        DatasetDict({key[g]: part for g, part in parts.items()}).save_to_disk(root / path)
        for group, rows in ds.groups.items():
            sources.update((id(row), f"{path}[{key[group]}][{i}]") for i, row in enumerate(rows))
            entries.append(f"{{path: {q(path)}{fmt}, records: {key[group]}{split_key(group)}}}")
    else:
        for group, rows in ds.groups.items():
            path = f"data/{name}/{group}_folder"
            parts[group].save_to_disk(root / path)
            sources.update((id(row), f"{path}[{i}]") for i, row in enumerate(rows))
            entries.append(f"{{path: {q(path)}{fmt}{split_key(group)}}}")
    return Written(entries, dict(ds.groups), sources)


LAYOUTS = {
    "jsonl": write_jsonl, "jsonl-pairs": write_jsonl_pairs, "json": write_json, "json-splits": write_json_splits,
    "json-nested": write_json_nested, "csv": write_csv, "csv-latin1": write_csv_latin1, "tsv": write_tsv,
    "tsv-headerless": write_tsv_headerless, "tsv-unquoted": write_tsv_unquoted, "tsv-utf16": write_tsv_utf16,
    "lines": write_lines, "parquet": write_parquet, "arrow": write_arrow, "hf-dataset": write_hf_folder,
}


def applicable(ds: Dataset) -> list[str]:
    """The layouts that can hold this dataset as written: latin-1 files need latin-1 text, a line of a .txt file
    or an unquoted tsv field holds no tab or line break, a .txt file gives labels only."""
    layouts = [n for n in LAYOUTS if n not in ("csv-latin1", "tsv-unquoted", "lines")]
    if ds.latin1 and ds.representable("latin-1"):
        layouts.append("csv-latin1")
    if ds.oneline:
        layouts.append("tsv-unquoted")
        if ds.answer_type == "label":
            layouts.append("lines")
    return layouts


def write_task(root: Path, name: str, ds: Dataset, written: Written, rng: random.Random):
    labels = [label if label.isdigit() and label == str(int(label)) and rng.random() < 0.5 else q(label)
              for label in ds.labels]
    answer = f"{{type: label, labels: [{', '.join(labels)}]}}" if ds.answer_type == "label" else "{type: text}"
    lines = [f"name: {name}", "data:", "  files:", *(f"    - {e}" for e in written.entries)]
    if ds.id_field and written.ids:
        lines.append(f"  id_field: {ds.id_field}")
    if ds.split_spec is not None:
        lines.append(f"  split: {ds.split_spec}")
    lines += ['prompt: {template: "Text: {{ text }}\\nAnswer:"}', f"answer: {answer}"]
    path = root / "tasks" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_task(str(path), root)


def read_as(ds: Dataset, written: Written, row: Row) -> tuple[str | None, str, str]:
    """(id, text, answer) as the README says the row reads: the id where the layout carries data.id_field, the
    text as written (a csv/tsv quoted CRLF as LF), the answer without the spaces around it."""
    def fix(value: str) -> str:
        return value.replace("\r\n", "\n") if written.delimited else value

    return (row.uid if ds.id_field and written.ids else None, fix(row.text), fix(row.answer).strip())


def examples_of(data, written: Written, ds: Dataset) -> dict[str, list[tuple[str | None, str, str]]]:
    return {name: [(ex.id if ds.id_field and written.ids else None, ex.fields["text"], ex.answer) for ex in examples]
            for name, examples in data.splits.items()}


def lf(text: str) -> str:
    """Every CRLF as LF, repeatedly: CR CR LF reads the same whether or not a csv reader made its CRLF a LF."""
    while "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text


# --- the properties --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield
    datasets.enable_progress_bars()


@pytest.mark.parametrize("seed", range(36))
def test_every_layout_reads_back_the_examples_written(tmp_path, seed):
    rng = random.Random(seed)
    groups = tuple(s for s in SPLITS if s == "train" or rng.random() < 0.8)
    ds = random_dataset(rng, groups, (1, 7))
    seen: dict[str, dict] = {}
    for layout in applicable(ds):
        folder = layout + rng.choice(["", " data", "-é"])  # paths as written: spaces and accents too
        written = LAYOUTS[layout](ds, rng, tmp_path, folder)
        task = write_task(tmp_path, layout, ds, written, rng)
        data = load_task_data(task, strict=False)
        where = f"layout {layout} (seed {seed}): {written.entries}"
        assert data.errors == [] and data.prompt_error is None, where
        expected = {g: [read_as(ds, written, r) for r in rows if not r.blank] for g, rows in written.order.items()}
        assert examples_of(data, written, ds) == expected, where
        for name, examples in data.splits.items():
            good = [r for r in written.order[name] if not r.blank]
            if layout == "json-nested":  # a record's own top-level fields stay, next to the mapped ones
                assert [ex.fields["userInput"]["text"] for ex in examples] == [r.text for r in good], where
            assert [ex.source for ex in examples] == [written.sources[id(r)] for r in good], where
            if written.ids and ds.id_field:
                assert all(isinstance(ex.id, str) for ex in examples)
            assert len({ex.id for ex in examples}) == len(examples), where
        blank = [r for rows in ds.groups.values() for r in rows if r.blank] if written.blank_is_bad else []
        assert sorted((b.source, b.reason) for b in data.bad_rows) == sorted(
            (written.sources[id(r)], "missing or empty field(s): text") for r in blank), where
        if not blank:
            assert examples_of(load_task_data(task), written, ds) == expected, where  # strict: nothing to stop on
        else:
            with pytest.raises(LlamalabError, match=rf"{len(blank)} bad row\(s\)"):
                load_task_data(task)
        # the same examples in every layout (ids aside where a layout has none; a .txt file groups by label)
        seen[layout] = {name: Counter((lf(text), lf(answer)) for _, text, answer in rows)
                        for name, rows in examples_of(data, written, ds).items()}
        assert seen[layout] == next(iter(seen.values())), where


@pytest.mark.parametrize("seed", range(24))
def test_a_derived_split_is_a_recorded_deterministic_partition_in_any_layout(tmp_path, seed):
    """README "Task file": the splits no file gives are drawn from the pool (or from train) by `data.split`, recorded
    in data/splits/<task>.json (each split's ids and a fingerprint), used as recorded on later loads, drawn again
    the same once deleted, kept by the same data in another layout (the same ids), and each drawn split holds its
    fraction of the examples (of each label: stratified by default)."""
    rng = random.Random(10_000 + seed)
    source = rng.choice(["pool", "train"])
    groups = ("pool",) if source == "pool" else ("train", *(("test",) if rng.random() < 0.5 else ()))
    ds = random_dataset(rng, groups, (20, 70), answer_type="label", id_field=rng.choice(["uid", "meta.id"]),
                        blanks=False)
    settings: dict[str, object] = {}
    if source == "train" or rng.random() < 0.5:
        settings["source"] = source
    for key, values in (("dev", [0.05, 0.1, 0.2, 0.25, 0.33]), ("test", [0.0, 0.1, 0.2]), ("seed", [0, 7, 13]),
                        ("stratify", ["true", "false"])):
        if rng.random() < 0.7:
            settings[key] = rng.choice(values)
    ds.split_spec = "{" + ", ".join(f"{k}: {v}" for k, v in settings.items()) + "}"
    fractions = {"dev": float(settings.get("dev", 0.1)), "test": float(settings.get("test", 0.0))}  # the defaults
    drawn = {name: f for name, f in fractions.items() if f > 0 and name not in ds.groups}
    stratified = settings.get("stratify", "true") == "true"
    first, second = rng.sample([n for n in LAYOUTS if n != "lines" and n in applicable(ds)], 2)

    def write(root: Path, layout: str):
        written = LAYOUTS[layout](ds, random.Random(seed), root, layout)
        return write_task(root, "derived", ds, written, random.Random(seed)), written

    task, written = write(tmp_path, first)
    data = load_task_data(task)
    pool = ds.groups[source]
    by_id = {row.uid: row for row in pool}
    assert set(data.splits) == {"train", *drawn, *ds.groups} - {"pool"}
    ids = {name: [ex.id for ex in examples] for name, examples in data.splits.items()}
    from_pool = ids["train"] + [i for name in drawn for i in ids[name]]
    assert sorted(from_pool) == sorted(by_id), "every pool example in exactly one split"
    for name in ("train", *drawn):
        for ex in data.splits[name]:
            assert (ex.id, ex.fields["text"], ex.answer) == read_as(ds, written, by_id[ex.id])
    if "test" in ds.groups:  # a file's split is the file, in its order
        assert [(ex.id, ex.fields["text"], ex.answer) for ex in data.split("test")] == [
            read_as(ds, written, row) for row in ds.groups["test"]]
    n = len(pool)
    for name, fraction in drawn.items():
        assert abs(len(ids[name]) - n * fraction) <= 0.5 + 1e-9, (name, len(ids[name]), n, fraction)
        if stratified:
            held = Counter(ex.answer for ex in data.splits[name])
            for label, count in Counter(row.answer for row in pool).items():
                assert abs(held[label] - count * fraction) < 1 + 1e-9, (name, label, held[label], count, fraction)

    manifest = tmp_path / "data" / "splits" / "derived.json"
    assert data.split_manifest == manifest and "data/splits/derived.json" in data.file_hashes
    recorded = json.loads(manifest.read_text(encoding="utf-8"))
    assert {name: sorted(part) for name, part in recorded["assignment"].items()} == {
        name: sorted(ids[name]) for name in ("train", *drawn)}
    assert set(recorded["fingerprint"]) >= {"spec", "ids_sha256"}

    def split_ids(loaded) -> dict[str, list[str]]:
        return {name: [ex.id for ex in examples] for name, examples in loaded.splits.items()}

    assert split_ids(load_task_data(task)) == ids  # as recorded
    manifest.unlink()  # drawn again: the same split, recorded the same
    assert split_ids(load_task_data(task)) == ids
    assert json.loads(manifest.read_text(encoding="utf-8")) == recorded
    task, written = write(tmp_path, second)  # the same data in another layout keeps the recorded split
    other = load_task_data(task)
    assert split_ids(other) == ids, second
    for name in ("train", *drawn):
        for ex in other.splits[name]:
            assert (ex.fields["text"], ex.answer) == read_as(ds, written, by_id[ex.id])[1:], second
    fresh_task, _ = write(tmp_path / "fresh", second)  # and draws the same split in a lab of its own
    assert split_ids(load_task_data(fresh_task)) == ids, second
    fixed = rng.choice(pool)  # "an edit that keeps every id (a fixed label or text) keeps the split"
    fixed.text, fixed.answer = "a fixed text", rng.choice(ds.labels)
    task, written = write(tmp_path, second)
    edited = load_task_data(task)
    assert split_ids(edited) == ids, second
    assert [(ex.fields["text"], ex.answer) for examples in edited.splits.values() for ex in examples
            if ex.id == fixed.uid] == [("a fixed text", fixed.answer)]


SPAN_KEYS = [{}, {"spans": "slots", "start": "begin"}, {"start": "from", "end": "to", "label": "type"}]


def random_spans(rng: random.Random, text: str, keys: dict, inclusive: bool, omit: bool) -> tuple[list, list]:
    """Spans over `text` (distinct starts, in no particular order) as a file holds them under the key names of
    `keys` (the `spans:` options), and the entities the README says they become, in text order."""
    start_key, end_key, label_key = keys.get("start", "start"), keys.get("end", "end"), keys.get("label", "label")
    spans, entities = [], []
    for start in rng.sample(range(len(text)), min(len(text), rng.randint(0, 4))):
        stop = rng.randint(start + 1, min(len(text), start + 12))
        label = rng.choice(["city", "person", "org", "día", "😀 tag"])
        span = {start_key: start, end_key: stop - 1 if inclusive else stop, label_key: label}
        if omit and start == 0 and rng.random() < 0.7:  # a span without its start key starts at 0
            del span[start_key]
        spans.append(dict(sorted(span.items(), key=lambda _: rng.random())))
        entities.append((start, {"type": label, "text": text[start:stop]}))
    return spans, [entity for _, entity in sorted(entities, key=lambda pair: pair[0])]


@pytest.mark.parametrize("seed", range(12))
def test_character_offset_spans_become_the_entities_they_cover_in_every_layout(tmp_path, seed):
    """README `spans:`: each span's text cut from the record's text by character offsets (emoji, combining marks and
    line breaks count as the characters they are), as {"type", "text"} in text order; in JSON, which can leave
    keys out, a span without its start key starts at 0 and a record without the span list has no entities."""
    from datasets import Dataset as HfDataset
    from datasets import DatasetDict

    rng = random.Random(20_000 + seed)
    texts = [random_text(rng, False, False, long=rng.random() < 0.05) for _ in range(rng.randint(1, 8))]
    for layout in ("jsonl", "json", "parquet", "arrow", "hf-dataset"):
        json_like = layout in ("jsonl", "json")
        keys, inclusive = rng.choice(SPAN_KEYS), rng.random() < 0.3
        list_key = keys.get("spans", "spans")
        records, expected = [], []
        for text in texts:
            spans, entities = random_spans(rng, text, keys, inclusive, omit=json_like)
            record = {"text": text, "id": f"r{len(records)}"}
            if spans or not json_like or rng.random() < 0.5:
                record[list_key] = spans
            records.append(record)
            expected.append(entities)
        if not any(list_key in r for r in records):  # a file none of whose records has the list is refused whole
            records[0][list_key] = []
        folder = f"data/{layout}"
        (tmp_path / folder).mkdir(parents=True)
        if layout == "jsonl":
            path, extra = f"{folder}/train.jsonl", ""
            save(tmp_path / path, "".join(json.dumps(r, ensure_ascii=rng.random() < 0.5) + "\n" for r in records))
        elif layout == "json":
            path, extra = f"{folder}/train.json", ""
            save(tmp_path / path, json.dumps(records, indent=rng.choice([None, 2])))
        elif layout == "parquet":
            path, extra = f"{folder}/train.parquet", ""
            HfDataset.from_list(records).to_parquet(tmp_path / path)
        elif layout == "arrow":
            HfDataset.from_list(records).save_to_disk(tmp_path / folder / "d")
            path, extra = f"{folder}/d/data-00000-of-00001.arrow", ""
        else:
            DatasetDict({"train": HfDataset.from_list(records)}).save_to_disk(tmp_path / folder / "hub")
            path, extra = f"{folder}/hub", ", records: train"
        options = ", ".join([*(f"{k}: {v}" for k, v in keys.items()), *(["end_inclusive: true"] if inclusive else [])])
        task_file = tmp_path / "tasks" / f"slots-{layout}.yaml"
        task_file.parent.mkdir(exist_ok=True)
        task_file.write_text(textwrap.dedent(f"""\
            name: slots-{layout}
            data:
              files: [{{path: {path}{extra}, split: train, spans: {{{options}}}}}]
              answer_field: entities
              id_field: id
            prompt: {{template: "{{{{ text }}}}"}}
            answer: {{type: entities}}
            """), encoding="utf-8")
        data = load_task_data(load_task(task_file, tmp_path))
        got = [(ex.id, ex.fields["text"], json.loads(ex.answer)) for ex in data.split("train")]
        assert got == [(r["id"], r["text"], e) for r, e in zip(records, expected, strict=True)], (layout, options)


# --- where the code reads otherwise than the README says ----------------------------------------------------------


def pool_task(root: Path, rows: list[dict]) -> Path:
    save(root / "data" / "pool.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    task_file = root / "tasks" / "pool.yaml"
    task_file.parent.mkdir(parents=True, exist_ok=True)
    task_file.write_text("name: pool\ndata:\n  files: [{path: data/pool.jsonl}]\n"
                         "  split: {dev: 0.1, test: 0.2, seed: 3}\n"
                         "prompt: {template: '{{ text }}'}\nanswer: {labels: [neg, pos]}\n")
    return task_file


def test_removing_one_example_and_adding_another_stops_the_recorded_split(tmp_path):
    """With the default ids (file:line), one example removed and another added keeps the ids but moves every later
    example to another one: loading stops, naming one, instead of a pinned test split of other (train) examples.
    A text fixed in place, or a label, keeps the split."""
    rows = [{"text": f"review {i}", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    task_file = pool_task(tmp_path, rows)
    before = load_task_data(load_task(task_file, tmp_path))
    assert (tmp_path / "data" / "splits" / "pool.json").is_file()
    fixed = [dict(row) for row in rows]
    fixed[7]["text"], fixed[8]["label"] = "review 7, typo fixed", "pos" if fixed[8]["label"] == "neg" else "neg"
    fixed[9]["text"] = fixed[3]["text"]  # a text fixed into another example's: still no move
    pool_task(tmp_path, fixed)
    after = load_task_data(load_task(task_file, tmp_path))
    assert {s: [ex.id for ex in after.split(s)] for s in after.splits} == {
        s: [ex.id for ex in before.split(s)] for s in before.splits}
    pool_task(tmp_path, rows[:5] + rows[6:] + [{"text": "a new review", "label": "neg"}])  # 40 rows again
    with pytest.raises(LlamalabError, match=r"examples have moved to other ids .*:6 holds what .*:7 held, and 33 more"):
        load_task_data(load_task(task_file, tmp_path))


@pytest.mark.parametrize("layout", ["parquet", "hf-dataset"])
def test_spans_stored_by_datasets_read_as_the_same_records_in_json(tmp_path, layout):
    """A span's left-out start key and a record's left-out span list, stored as null by Parquet and dataset folders,
    read as in JSON (start 0, no entities), not as bad rows."""
    from datasets import Dataset as HfDataset
    from datasets import DatasetDict

    records = [  # the README's slot layout: spans under "slots", the start key "begin", left out at 0
        {"text": "book a flight to paris", "slots": [{"end": 4, "label": "action"},
                                                      {"begin": 17, "end": 22, "label": "city"}]},
        {"text": "no slot here"},
        {"text": "rome or oslo", "slots": [{"begin": 8, "end": 12, "label": "city"}]},
    ]
    expected = [[{"type": "action", "text": "book"}, {"type": "city", "text": "paris"}], [],
                [{"type": "city", "text": "oslo"}]]
    save(tmp_path / "data" / "slots.json", json.dumps(records, indent=2))
    if layout == "parquet":
        HfDataset.from_list(records).to_parquet(tmp_path / "data" / "slots.parquet")
        entry = "path: data/slots.parquet"
    else:
        DatasetDict({"train": HfDataset.from_list(records)}).save_to_disk(tmp_path / "data" / "hub")
        entry = "path: data/hub, records: train"
    for name, path in (("slots-json", "path: data/slots.json"), ("slots-datasets", entry)):
        (tmp_path / "tasks").mkdir(exist_ok=True)
        (tmp_path / "tasks" / f"{name}.yaml").write_text(
            f"name: {name}\ndata:\n  files: [{{{path}, split: train, spans: {{spans: slots, start: begin}}}}]\n"
            "  answer_field: entities\nprompt: {template: '{{ text }}'}\nanswer: {type: entities}\n")
        data = load_task_data(load_task(tmp_path / "tasks" / f"{name}.yaml", tmp_path), strict=False)
        assert [str(b) for b in data.bad_rows] == [], name
        assert [json.loads(ex.answer) for ex in data.split("train")] == expected, name


def test_a_line_of_a_text_file_is_its_text_without_the_whitespace_at_its_ends(tmp_path):
    """As the README says (rt_polarity's lines end in a space): every other layout keeps a text as written."""
    texts = ["  indented", "trailing ", "\u3000全角の字下げ", "nbsp\xa0", "plain"]
    save(tmp_path / "data" / "pos.txt", "".join(t + "\n" for t in texts))
    save(tmp_path / "data" / "pos.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    read = {}
    for path in ("data/pos.jsonl", "data/pos.txt"):
        (tmp_path / "tasks").mkdir(exist_ok=True)
        (tmp_path / "tasks" / "lines.yaml").write_text(
            f"name: lines\ndata:\n  files: [{{path: {path}, label: pos, split: train}}]\n"
            "prompt: {template: '{{ text }}'}\nanswer: {labels: [neg, pos]}\n")
        data = load_task_data(load_task(tmp_path / "tasks" / "lines.yaml", tmp_path))
        read[path] = [ex.fields["text"] for ex in data.split("train")]
    assert read["data/pos.jsonl"] == texts
    assert read["data/pos.txt"] == [text.strip() for text in texts]


@pytest.mark.parametrize("seed", range(25))
def test_the_moved_examples_message_names_the_first_and_counts_the_rest(tmp_path, seed):
    """Random lines of a recorded task reordered (a random subset of them permuted) and others fixed in place: each
    line whose text now stands where another line stood has moved, and nothing else has. The error names the first
    moved line in file order, the line that held its text, and counts the others ("and N more"); with only texts
    fixed in place the split still loads."""
    rng = random.Random(seed)
    n = rng.randint(4, 40)
    rows = [{"text": f"review {i}", "label": rng.choice(["neg", "pos"])} for i in range(n)]
    task_file = pool_task(tmp_path, rows)
    load_task_data(load_task(task_file, tmp_path))  # records the split
    positions = rng.sample(range(n), rng.randint(0, n))
    order = positions[:]
    rng.shuffle(order)
    changed = [dict(row) for row in rows]
    for to, frm in zip(positions, order, strict=True):
        changed[to] = dict(rows[frm])
    untouched = [i for i in range(n) if i not in positions]
    for i in rng.sample(untouched, rng.randint(0, len(untouched))):
        changed[i]["text"] = f"review {i}, fixed in place"
    pool_task(tmp_path, changed)
    moved = [(to, frm) for to, frm in sorted(zip(positions, order, strict=True)) if to != frm]
    if not moved:
        load_task_data(load_task(task_file, tmp_path))
        return
    (now, was), more = moved[0], len(moved) - 1
    # lines are numbered from 1
    expected = rf"examples have moved to other ids .*pool\.jsonl:{now + 1} holds what .*pool\.jsonl:{was + 1} held" + (
        f", and {more:,} more\\)" if more else r"\)")
    with pytest.raises(LlamalabError, match=expected):
        load_task_data(load_task(task_file, tmp_path))
