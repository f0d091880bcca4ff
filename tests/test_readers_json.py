"""A .json data file: a repeated key is cited at its own line and drops only its record; JSON Lines in a .json file
and a one-record document say so and how to read them."""

from __future__ import annotations

import json

from llamalab.tasks.readers import read_records
from llamalab.tasks.task import DataFile


def read(tmp_path, text: str, **options):
    path = tmp_path / "data.json"
    path.write_text(text)
    rows, bad = read_records(DataFile(path="data/x.json", **options), path)
    return rows, [str(b) for b in bad]


def test_a_repeated_key_is_cited_in_its_record_and_drops_only_that_record(tmp_path):
    text = json.dumps([{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(50)], indent=1)
    at = text.index('"text": "t40"')
    text = text[:at] + '"label": "neg",\n  ' + text[at:]  # record 40 names label twice, on lines 163 and 165
    assert text.splitlines()[162].strip() == '"label": "neg",' and '"label"' in text.splitlines()[164]
    rows, bad = read(tmp_path, text)
    assert bad == ["data/x.json:165: an object names 'label' twice, first on line 163 (JSON readers keep one of "
                   "the two silently): rename or merge the repeats"]
    assert len(rows) == 49 and "t40" not in [row.value["text"] for row in rows]
    assert rows[0].source == "data/x.json:2"  # the others keep their places (and ids)


def test_a_repeat_nested_in_a_record_or_in_a_minified_file(tmp_path):
    nested = '[\n {"text": "a", "meta": {"x": 1}},\n {"text": "b", "meta": {"x": 1,\n  "x": 2}}\n]\n'
    rows, bad = read(tmp_path, nested)
    assert [row.value["text"] for row in rows] == ["a"]
    assert bad == ["data/x.json:4: an object names 'x' twice, first on line 3 (JSON readers keep one of the two "
                   "silently): rename or merge the repeats"]
    minified = json.dumps({"train": [{"text": "a"}, {"text": "b"}]})[:-3] + ', "text": "c"}]}'
    rows, bad = read(tmp_path, minified, records="train")
    assert [row.value["text"] for row in rows] == ["a"]
    assert bad == ["data/x.json:1 (train[1]): an object names 'text' twice (JSON readers keep one of the two "
                   "silently): rename or merge the repeats"]


def test_a_repeat_outside_the_records_stops_the_file_at_its_line(tmp_path):
    text = '{\n "train": [{"text": "a"}],\n "test": [],\n "train": [{"text": "b"}]\n}\n'
    rows, bad = read(tmp_path, text, records="train")
    assert rows == []
    assert bad == ["data/x.json:4: an object names 'train' twice, first on line 2 (JSON readers keep one of the two "
                   "silently): rename or merge the repeats"]


def test_json_lines_in_a_json_file_says_to_read_it_as_jsonl(tmp_path):
    two = '{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n'
    assert read(tmp_path, two)[1] == [
        "data/x.json:2: malformed JSON (Extra data, column 1): the file looks like JSON Lines (one record per line), "
        "not one JSON document: set `format: jsonl` on this file, or name it .jsonl"]
    rows, bad = read(tmp_path, two, format="jsonl")
    assert [row.value["text"] for row in rows] == ["a", "b"] and bad == []
    # Extra data elsewhere than at the start of a line is no JSON Lines: no such hint
    assert read(tmp_path, '{"text": "a"} x\n')[1] == ["data/x.json:1: malformed JSON (Extra data, column 15)"]


def test_one_object_suggests_only_a_key_that_holds_records(tmp_path):
    _, bad = read(tmp_path, '{"text": "a", "label": "pos"}\n')
    assert bad == ["data/x.json:1: the document is one object (keys text, label), not a list of records, and none "
                   "of its keys holds a list of records: a .json file is read as a list of records, `[{...}, {...}]`, "
                   "or as the list that `records:` points at; for one record per line (JSON Lines), set "
                   "`format: jsonl` on this file, or name it .jsonl"]
    _, bad = read(tmp_path, json.dumps({"version": "1", "tags": ["a", "b"], "data": [{"text": "a"}]}))
    assert bad == ["data/x.json:1: the document is an object with keys version, tags, data, not a list of records: "
                   "point `records:` at the list inside it, one file entry per split, e.g. "
                   "{path: data/x.json, records: data, split: train}"]


def test_json_python_cannot_build_is_a_bad_row_even_with_a_repeated_key(tmp_path):
    """An integer of over 4,300 digits, or nesting past the recursion limit: one bad row naming it, with or without
    a repeated key elsewhere in the file (which reads the file a second time), never a traceback."""
    huge = "1" * 5000
    for text in (f'[{{"text": "c", "label": {huge}}}]', "[" * 100_000 + "]" * 100_000,
                 f'[{{"text": "a", "text": "b", "label": "x"}}, {{"text": "c", "label": {huge}}}]'):
        rows, bad = read(tmp_path, text)
        assert rows == [] and bad == ["data/x.json:1: malformed JSON (an integer of over 4,300 digits, or lists and "
                                      "objects nested too deep to read)"], bad
