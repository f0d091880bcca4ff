"""Hostile data: each message names the cause, the file as written in the task file, and the fix."""

from __future__ import annotations

import json
import textwrap
import unicodedata

import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.config import LlamalabError
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import load_task
from llamalab.training.trainer import train
from tests.conftest import write_experiment


def write_lab_task(lab, files: str, template: str = "{{ text }}", extra: str = "", answer: str = "") -> str:
    """tasks/probe.yaml with the given `data.files` (YAML flow), in a lab whose data/p/ holds the probe files."""
    (lab.root / "tasks" / "probe.yaml").write_text(textwrap.dedent(f"""\
        name: probe
        data:
          files: {files}
        {extra}
        prompt: {{template: "{template}"}}
        answer: {answer or "{labels: [neg, pos]}"}
        """))
    return "probe"


def data_dir(lab):
    folder = lab.root / "data" / "p"
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    return folder


def check(lab, *options: str):
    return CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root), *options])


def printed(result) -> str:
    """The command's output with the terminal's line wrapping undone."""
    return " ".join(result.stdout.split())


def test_latin1_csv_names_file_line_and_the_encoding_option(lab, tiny_model_dir):
    folder = data_dir(lab)
    (folder / "test.csv").write_bytes("text,label\nok,pos\ncafé crème,pos\n".encode("latin-1"))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.csv, split: test}]")
    result = check(lab)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no UnicodeDecodeError traceback
    assert "data/p/test.csv:3: not UTF-8 (byte 0xe9 at column 4): set `encoding:` on this file" in printed(result)
    assert "`encoding: latin-1`" in printed(result)
    with pytest.raises(LlamalabError, match=r"data/p/test.csv:3: not UTF-8"):
        evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="probe"))

    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, "
                        "{path: data/p/test.csv, split: test, encoding: latin-1}]")
    test = load_task_data(load_task(lab.task_path("probe"), lab.root)).split("test")
    assert test[1].fields["text"] == "café crème"


def test_utf8_bom_does_not_leak_into_the_header(lab):
    folder = data_dir(lab)
    (folder / "test.csv").write_bytes("text,label\ngood,pos\n".encode("utf-8-sig"))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.csv, split: test}]")
    test = load_task_data(load_task(lab.task_path("probe"), lab.root)).split("test")
    assert list(test[0].fields) == ["text", "label"]


def test_an_emptied_split_shows_its_bad_rows_and_names_its_files(lab):
    folder = data_dir(lab)
    (folder / "test.jsonl").write_text('{"text": "", "label": "pos"}\n{"text": "meh", "label": "maybe"}\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.jsonl, split: test}]")
    task = load_task(lab.task_path("probe"), lab.root)
    data = load_task_data(task, strict=False)  # reports, does not raise
    assert data.splits["test"] == []
    report = check_task_data(data, task)
    assert report.errors == [
        "data/p/test.jsonl:1: missing or empty field(s): text",
        "data/p/test.jsonl:2: label 'maybe' is not in the task's label set ('neg', 'pos'): add it to answer.labels, "
        "or fix the row",
        "split 'test' is empty: no usable row in data/p/test.jsonl (2 bad row(s), listed above)",
    ]
    result = check(lab)
    assert result.exit_code == 1  # a data error, as the README promises; 2 is for unusable commands
    assert "split 'test' is empty: no usable row in data/p/test.jsonl" in printed(result)
    assert "data/p/test.jsonl:2: label 'maybe'" in printed(result)
    with pytest.raises(LlamalabError, match=r"(?s)2 bad row\(s\).*data/p/test.jsonl:1.*split 'test' is empty"):
        load_task_data(task)


def test_a_derived_split_that_rounds_to_nothing_says_so(lab):
    folder = data_dir(lab)
    (folder / "pool.jsonl").write_text('{"text": "fine", "label": "pos"}\n{"text": "awful", "label": "neg"}\n')
    write_lab_task(lab, "[{path: data/p/pool.jsonl}]", extra="  split: {dev: 0.1}")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert data.errors == ["split 'dev' is empty: data.split.dev of the 2 usable pool example(s) "
                           "(data/p/pool.jsonl) rounds to none"]


def test_multiline_csv_record_is_cited_at_its_first_line(lab):
    folder = data_dir(lab)
    (folder / "test.csv").write_text('text,label\n"one\ntwo\nthree",maybe\nok,pos\n"four\nfive",pos\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.csv, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == ["data/p/test.csv:2: label 'maybe' is not in the task's label set "
                                               "('neg', 'pos'): add it to answer.labels, or fix the row"]
    last = data.split("test")[1]
    assert last.source == "data/p/test.csv:6"
    assert last.id == "data/p/test.csv:7"  # ids keep the line a record ends on: pinned splits stay valid


def test_paths_in_messages_are_as_written_in_the_task_file(lab):
    folder = data_dir(lab)
    (folder / "bad.jsonl").write_text('{"text": "x", "label": "pos"\n')
    (folder / "bad.csv").write_text("text,label\ntoo,many,columns\n")
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/bad.jsonl, split: train}, "
                        "{path: data/p/bad.csv, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [b.source for b in data.bad_rows] == ["data/p/bad.jsonl:1", "data/p/bad.csv:2"]

    (folder / "pool.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": "pos"}) + "\n" for i in range(9)))
    write_lab_task(lab, "[{path: data/p/pool.jsonl}]", extra="  split: {dev: 0.2}")
    load_task_data(load_task(lab.task_path("probe"), lab.root))
    write_lab_task(lab, "[{path: data/p/pool.jsonl}]", extra="  split: {dev: 0.3}")
    with pytest.raises(LlamalabError, match=r"^data/splits/probe.json: the recorded split no longer matches"):
        load_task_data(load_task(lab.task_path("probe"), lab.root))


def test_unknown_template_field_names_field_template_and_the_first_example_in_file_order(lab, tiny_model_dir):
    folder = data_dir(lab)
    (folder / "pool.jsonl").write_text("".join(
        json.dumps({"text": f"t{i}", "label": "pos" if i % 2 else "neg"}) + "\n" for i in range(40)))
    write_lab_task(lab, "[{path: data/p/pool.jsonl}]", template="Say: {{ txt }}",
                   extra="  split: {dev: 0.2, test: 0.2}")
    expected = ("task 'probe': prompt.template 'Say: {{ txt }}' uses field 'txt', which example "
                "data/p/pool.jsonl:1 does not have; its fields: text, label.")
    messages = []
    for run in (lambda: evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="probe")),
                lambda: train(lab, write_experiment(lab, "probe", f"task: probe\nbase_model: {tiny_model_dir}\n"))):
        with pytest.raises(LlamalabError) as err:
            run()
        messages.append(str(err.value))
    result = check(lab)
    assert result.exit_code == 1
    messages.append(printed(result))
    assert all(expected in message for message in messages), messages


def test_headerless_tsv_read_with_a_header_says_header_false(lab):
    folder = data_dir(lab)
    (folder / "test.tsv").write_text("good\tpos\nbad\tneg\nfine\tpos\n")
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.tsv, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/test.tsv:1: the first line was read as a header (good, pos) and names none of the task's fields "
        "(text, label); if the file has no header row, set `header: false` and `columns: [text, label]`"
    ]
    assert data.errors == ["split 'test' is empty: no usable row in data/p/test.tsv (1 bad row(s), listed above)"]


def test_json_object_of_splits_says_how_json_is_read(lab):
    folder = data_dir(lab)
    (folder / "all.json").write_text(json.dumps({"train": [["good", "pos"]], "test": [["bad", "neg"], ["ok", "pos"]]}))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/all.json, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert str(data.bad_rows[0]) == (
        "data/p/all.json:1: the document is an object with keys train, test, not a list of records: point "
        "`records:` at the list inside it, one file entry per split, e.g. "
        "{path: data/p/all.json, records: train, split: train}"
    )
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/all.json, split: test, "
                        "records: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert str(data.bad_rows[1]) == (
        "data/p/all.json:1 (test[1]): a list, not an object: name its items with `columns:`, e.g. "
        "columns: [text, label]"
    )


def test_yaml_boolean_labels_say_quote_them(lab):
    data_dir(lab)
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]", answer="{labels: [yes, no]}")
    with pytest.raises(LlamalabError, match=r"probe.yaml:6: key 'answer.labels'.*as a boolean: quote them: 'yes'"):
        load_task(lab.task_path("probe"), lab.root)
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]",
                   answer="{labels: [pos, neg], verbalizers: {pos: yes}}")
    with pytest.raises(LlamalabError, match=r"key 'answer.verbalizers'.*quote them"):
        load_task(lab.task_path("probe"), lab.root)


@pytest.mark.parametrize(("entry", "message"), [
    ("{path: data/p/x.csv, delimeter: ';'}", r"probe.yaml:3: unknown key 'data.files.0.delimeter': did you mean "
                                             r"'delimiter'\?"),
    ("{path: data/p/x.jsonl, header: false}", r"data/p/x.jsonl is read as jsonl: header applies to csv, tsv"),
    ("{path: data/p/x.tsv, header: false}", r"`header: false` needs `columns:`"),
    ("{path: data/p/x.csv, columns: [text, label]}", r"add `header: false`"),
    ("{path: data/p/x.txt}", r"needs `label:`.*format: tsv, header: false, columns: \[text, label\]"),
    ("{path: data/p/x.csv, encoding: latin9x}", r"unknown text encoding 'latin9x'"),
    ("{path: data/p/x.csv, encoding: rot13}", r"unknown text encoding .rot13."),
    ("{path: data/p/x.csv, delimiter: ';;'}", r"at most 1 character"),
])
def test_file_options_are_validated_in_the_task_file(lab, entry, message):
    write_lab_task(lab, f"[{entry}]")
    with pytest.raises(LlamalabError, match=message):
        load_task(lab.task_path("probe"), lab.root)


def test_unknown_suffix_and_non_dataset_folders(lab):
    folder = data_dir(lab)
    (folder / "reviews.dat").write_text("good\n")
    (folder / "loose").mkdir()
    write_lab_task(lab, "[{path: data/p/reviews.dat, split: train}, {path: data/p/loose, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/reviews.dat: the format cannot be told from the file name: set `format:` (jsonl, json, csv, tsv, "
        "parquet or arrow), or `label:` to read it as one example of that label per line",
        "data/p/loose: is a folder but not a `datasets.save_to_disk` one (no dataset_dict.json or "
        "dataset_info.json): point `path:` at a data file in it",
    ]


def test_field_paths_that_lead_nowhere_are_reported_once_per_file(lab):
    folder = data_dir(lab)
    rows = [{"userInput": {"text": f"t{i}"}, "intent": "pos"} for i in range(5)]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, "
                        "{path: data/p/test.jsonl, split: test, fields: {text: userInput.txt, label: intent}}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/test.jsonl:1: no record has 'text' (from 'userInput.txt'); the records have userInput.text, intent: "
        "fix the path"
    ]


def test_spans_that_do_not_fit_the_text(lab):
    folder = data_dir(lab)
    (folder / "test.json").write_text(json.dumps([
        {"text": "to rome", "spans": [{"start": 3, "end": 7, "label": "city"}]},
        {"text": "to oslo", "spans": [{"start": 3, "end": 9, "label": "city"}]},
        {"text": "to bern", "spans": [{"start": 3, "end": "7", "label": "city"}]},
        {"text": "hello"},
    ], indent=1))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train, spans: {}}, "
                        "{path: data/p/test.json, split: test, spans: {}}]", extra="  answer_field: entities",
                   answer="{type: entities}")
    (folder / "train.jsonl").write_text('{"text": "x", "spans": []}\n')
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/test.json:12: span 1: offsets 3..9 do not fit the text (7 characters); if `end` is the last "
        "character, set spans.end_inclusive: true",
        "data/p/test.json:22: span 1: 'start' and 'end' must be character offsets (got 3, '7')",
    ]
    assert [(e.answer) for e in data.split("test")] == ['[{"type": "city", "text": "rome"}]', "[]"]

    (folder / "train.jsonl").write_text('{"text": "x", "slots": []}\n')
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert str(data.bad_rows[0]) == ("data/p/train.jsonl:1: no record has 'spans.spans'; the records have text, "
                                     "slots: fix the path")


def test_check_warns_about_answers_over_the_generation_budget_and_counts_entity_types(lab):
    folder = data_dir(lab)
    rows = [{"text": f"meet {name} in paris", "entities": [{"type": "person", "text": name},
                                                           {"type": "city", "text": "paris"}]}
            for name in ("ann", "bob", "cy")]
    (folder / "ner.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_lab_task(lab, "[{path: data/p/ner.jsonl, split: train}, {path: data/p/ner.jsonl, split: test}]",
                   extra="  answer_field: entities", answer="{type: entities}")
    result = check(lab, "--max-new-tokens", "8", "--json")
    report = json.loads(result.stdout)
    assert report["entity_types"] == {"train": {"city": 3, "person": 3}, "test": {"city": 3, "person": 3}}
    assert report["answer_lengths"]["test"]["max"] > 8
    assert any(w.startswith("test: 3 gold answer(s) are longer than the generation budget of 8 tokens")
               and "data/p/ner.jsonl:1" in w for w in report["warnings"])
    table = check(lab)
    assert table.exit_code == 0
    assert "entity types" in printed(table) and "city 3, person 3" in printed(table)
    assert "generation budget" not in printed(table)  # the default budget of a generation task is 256 tokens


def test_an_id_used_twice_is_a_bad_row_naming_both_places(lab):
    """Predictions and paired tests are keyed by example id: an id given twice in a split (in one file, or in two
    files of the same split) would pair one example's answer with another's, so `data check` fails on it. The same
    id in train and test is no error (the leakage check looks at the texts)."""
    folder = data_dir(lab)
    (folder / "train.jsonl").write_text('{"id": "a", "text": "good", "label": "pos"}\n'
                                        '{"id": "b", "text": "bad", "label": "neg"}\n'
                                        '{"id": "a", "text": "fine", "label": "pos"}\n')
    (folder / "test.jsonl").write_text('{"id": "b", "text": "meh", "label": "neg"}\n'
                                       '{"id": "c", "text": "great", "label": "pos"}\n')
    (folder / "test2.jsonl").write_text('{"id": "c", "text": "awful", "label": "neg"}\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.jsonl, split: test}, "
                        "{path: data/p/test2.jsonl, split: test}]", extra="  id_field: id")
    result = check(lab)
    assert result.exit_code == 1
    text = printed(result)
    assert "data/p/train.jsonl:3: example id 'a' was already used at data/p/train.jsonl:1" in text
    assert "data/p/test2.jsonl:1: example id 'c' was already used at data/p/test.jsonl:2" in text
    assert "fix data.id_field ('id')" in text and "'b' was already" not in text
    with pytest.raises(LlamalabError, match="2 bad row"):
        load_task_data(load_task(lab.task_path("probe"), lab.root))
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [ex.id for ex in data.split("train")] == ["a", "b"] and [ex.id for ex in data.split("test")] == ["b", "c"]


@pytest.mark.parametrize("template", ["{{ text + 1 }}", '{% include \\"x\\" %}{{ text }}', "{{ (text | int) / 0 }}"])
def test_a_template_that_fails_on_an_example_names_it(lab, template):
    data_dir(lab)
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]", template=template)
    task = load_task(lab.task_path("probe"), lab.root)
    with pytest.raises(LlamalabError, match=r"prompt.template .* fails on example data/p/train.jsonl:1 \("):
        load_task_data(task)


def test_records_the_readers_used_to_lose_or_crash_on(lab):
    """A blank line in a one-text-per-line file, a JSON NaN text, repeated header names or JSON keys, a field
    past csv's default size limit, and minified JSON lists read by two file entries."""
    folder = data_dir(lab)
    (folder / "pos.txt").write_text("good one\nnice\n\n")
    write_lab_task(lab, "[{path: data/p/pos.txt, label: pos, split: train}, {path: data/p/train.jsonl, split: test}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root))
    assert [e.fields["text"] for e in data.split("train")] == ["good one", "nice"]

    (folder / "nan.json").write_text('[{"text": NaN, "label": "pos"}, {"text": "ok", "label": "neg"}]')
    write_lab_task(lab, "[{path: data/p/nan.json, split: train}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == ["data/p/nan.json:1 ([0]): missing or empty field(s): text"]

    (folder / "twice.csv").write_text("text,label,text\nhello,pos,\n")
    write_lab_task(lab, "[{path: data/p/twice.csv, split: train}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == ["data/p/twice.csv:1: the header names 'text' more than once: "
                                               "rename the columns, or set `header: false` and `columns:`"]

    (folder / "sheet.csv").write_text("text,label,,\ngreat,pos,,\nbad,neg,,\n")  # a spreadsheet's blank columns
    write_lab_task(lab, "[{path: data/p/sheet.csv, split: train}]")
    assert len(load_task_data(load_task(lab.task_path("probe"), lab.root)).split("train")) == 2

    (folder / "keys.json").write_text('{"train": [{"text": "a", "label": "pos"}], "train": []}')
    write_lab_task(lab, "[{path: data/p/keys.json, records: train, split: train}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert "names 'train' twice" in str(data.bad_rows[0])

    (folder / "long.csv").write_text('text,label\n"' + "x" * 200_000 + '",pos\n')
    write_lab_task(lab, "[{path: data/p/long.csv, split: train}]")
    assert len(load_task_data(load_task(lab.task_path("probe"), lab.root)).split("train")[0].fields["text"]) == 200_000

    (folder / "mini.json").write_text('{"train": [["hi", "pos"]], "more": [["what", "neg"]]}\n')
    write_lab_task(lab, "[{path: data/p/mini.json, records: train, split: train, columns: [text, label]}, "
                        "{path: data/p/mini.json, records: more, split: train, columns: [text, label]}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root))
    assert [e.id for e in data.split("train")] == ["data/p/mini.json:1 (train[0])", "data/p/mini.json:1 (more[0])"]


def test_a_misspelled_id_field_is_an_error_and_a_file_without_ids_keeps_line_ids(lab):
    folder = data_dir(lab)
    (folder / "ids.jsonl").write_text('{"uid": "a", "text": "t", "label": "pos"}\n{"text": "u", "label": "neg"}\n')
    write_lab_task(lab, "[{path: data/p/ids.jsonl, split: train}]", extra="  id_field: uuid")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert any("no record in any file has data.id_field 'uuid'" in e and "uid" in e for e in data.errors)
    write_lab_task(lab, "[{path: data/p/ids.jsonl, split: train}, {path: data/p/train.jsonl, split: test}]",
                   extra="  id_field: uid")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/ids.jsonl:2: missing id field 'uid' (data.id_field), which other records of this file have"]
    assert [e.id for e in data.split("test")] == ["data/p/train.jsonl:1", "data/p/train.jsonl:2"]


def test_a_task_file_whose_name_is_not_its_own_is_refused(lab):
    copy = lab.root / "tasks" / "sentiment_v2.yaml"
    copy.write_text(lab.task_path("sentiment").read_text().replace("seed: 13", "seed: 14"))
    with pytest.raises(LlamalabError, match=r"(?s)sentiment_v2.yaml: key .name.: .sentiment. is not the file.s "
                                            r"name.*rename the file to tasks/sentiment.yaml.*set name: sentiment_v2"):
        load_task(copy, lab.root)


def test_pool_rows_drawn_into_train_share_its_ids(lab):
    """A pool row whose id a train file already has went into train twice: predictions keyed by id paired one
    example's answer with the other's."""
    folder = data_dir(lab)
    (folder / "train.jsonl").write_text('{"id": "1", "text": "x", "label": "pos"}\n'
                                        '{"id": "2", "text": "y", "label": "neg"}\n')
    (folder / "pool.jsonl").write_text("".join(json.dumps({"id": str(i), "text": f"t{i}", "label": "pos"}) + "\n"
                                               for i in range(1, 7)))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, {path: data/p/pool.jsonl}]",
                   extra="  id_field: id")
    task_file = lab.task_path("probe")
    task_file.write_text(task_file.read_text().replace("  id_field: id", "  id_field: id\n  split: {dev: 0.5}"))
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows][:2] == [
        "data/p/pool.jsonl:1: example id '1' was already used at data/p/train.jsonl:1; ids must be unique within a "
        "split: fix data.id_field ('id')",
        "data/p/pool.jsonl:2: example id '2' was already used at data/p/train.jsonl:2; ids must be unique within a "
        "split: fix data.id_field ('id')"]
    with pytest.raises(LlamalabError, match="2 bad row"):
        load_task_data(load_task(lab.task_path("probe"), lab.root))


def test_label_values_are_read_as_the_task_spells_its_labels(lab):
    """JSON's true read as "True", a pandas float column's 1.0 as "1.0": every row was refused."""
    folder = data_dir(lab)
    (folder / "train.jsonl").write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n')
    (folder / "test.jsonl").write_text('{"text": "c", "label": 1.0}\n{"text": "d", "label": 0}\n'
                                       '{"text": "e", "label": 2.5}\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]", answer="{labels: ['true', 'false']}")
    assert [ex.answer for ex in load_task_data(load_task(lab.task_path("probe"), lab.root)).split("train")] == [
        "true", "false"]
    write_lab_task(lab, "[{path: data/p/test.jsonl, split: test}]", answer="{labels: [0, 1]}")  # YAML ints: "0", "1"
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [ex.answer for ex in data.split("test")] == ["1", "0"]
    assert [str(b) for b in data.bad_rows] == ["data/p/test.jsonl:3: label '2.5' is not in the task's label set "
                                               "('0', '1'): add it to answer.labels, or fix the row"]
    from llamalab.tasks.data import _as_label

    assert [_as_label(v, {"0", "1"}) for v in (True, False, 1, 0.0)] == ["1", "0", "1", "0"]
    # a CSV pandas wrote from that float column says "1.0"; a label in NFD (macOS) is the task's NFC one
    assert [_as_label(v, {"0", "1"}) for v in ("1.0", " 0.0", "1.5", "x")] == ["1", "0", "1.5", "x"]
    nfd, nfc = unicodedata.normalize("NFD", "négatif"), unicodedata.normalize("NFC", "négatif")
    assert _as_label(nfd, {nfc, "positif"}) == nfc and _as_label(nfc, {nfd}) == nfd
    (folder / "test.csv").write_text(f"text,label\nc,1.0\nd,0.0\ne,{nfd}\n")
    write_lab_task(lab, "[{path: data/p/test.csv, split: test}]", answer=f"{{labels: [0, 1, {nfc}]}}")
    assert [ex.answer for ex in load_task_data(load_task(lab.task_path("probe"), lab.root)).split("test")] == [
        "1", "0", nfc]


def test_a_nested_path_as_a_task_field_says_how_to_map_it(lab):
    """`text_fields: [question.text]` passed the file check and then failed every row as "missing"."""
    folder = data_dir(lab)
    (folder / "train.jsonl").write_text('{"question": {"text": "q1"}, "label": "pos"}\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]", extra="  text_fields: [question.text]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/train.jsonl:1: 'question.text' is a path into the records, not a field of their own: map it with "
        "`fields: {question_text: question.text}` on the data file and name 'question_text' in the task instead"]
    (folder / "lines.txt").write_text("good\n")
    write_lab_task(lab, "[{path: data/p/lines.txt, label: pos, split: train}]", extra="  text_fields: [sentence]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert "each line of data/p/lines.txt is the field 'text'" in str(data.bad_rows[0])


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "z", "label": "pos", "label": "neg"}\n', "data/p/train.jsonl:1: an object names 'label' twice"),
    ("\ufefftext\tlabel\nz\tpos\n".encode("utf-16"), "data/p/train.jsonl:1: starts with a UTF-16 byte-order mark"),
])
def test_rows_a_reader_would_misread_silently_are_bad_rows(lab, content, message):
    folder = data_dir(lab)
    (folder / "train.jsonl").write_bytes(content.encode() if isinstance(content, str) else content)
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert message in str(data.bad_rows[0]), data.bad_rows


def test_quoted_line_breaks_read_the_same_from_any_checkout_and_a_bad_quote_says_quotechar_null(lab):
    folder = data_dir(lab)
    (folder / "a.tsv").write_text('one\tpos\n"never closed\tpos\nlast\tneg\n')
    write_lab_task(lab, "[{path: data/p/a.tsv, split: train, header: false, columns: [text, label]}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert str(data.bad_rows[0]) == (
        "data/p/a.tsv:2: malformed TSV (unexpected end of data: a quote opened here is never closed); if the file "
        'does not quote its fields (a " is just a character), set `quotechar: null` on it')
    for newline in ("\n", "\r\n"):
        (folder / "b.csv").write_bytes(f'text,label{newline}"multi{newline}line",pos{newline}'.encode())
        write_lab_task(lab, "[{path: data/p/b.csv, split: train}]")
        (example,) = load_task_data(load_task(lab.task_path("probe"), lab.root)).split("train")
        assert example.fields["text"] == "multi\nline"


def test_bad_rows_are_listed_in_file_order(lab):
    folder = data_dir(lab)
    (folder / "train.jsonl").write_text('{"text": "a", "label": "pos"}\n{"text": "", "label": "pos"}\n'
                                        '{"text": "c", "label": "nope"}\n{"text": "d", "label": "pos"}\n{"broken\n')
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [b.source for b in data.bad_rows] == ["data/p/train.jsonl:2", "data/p/train.jsonl:3",
                                                 "data/p/train.jsonl:5"]


def test_two_lists_records_on_one_line_in_one_split_say_why_they_share_an_id(lab):
    """CLINC-style JSON with `"train": [...], "oos_train": [...]` on one line: a one-record list's record gets the
    bare `path:line` id its neighbour's has; the message told the user to remove a repeat that is not one."""
    folder = data_dir(lab)
    (folder / "f.json").write_text('{\n"train": [["t1", "pos"]], "oos_train": [["o1", "neg"]],\n'
                                   '"val": [["v1", "pos"]]\n}\n')
    write_lab_task(lab, "[{path: data/p/f.json, records: train, split: train, columns: [text, label]}, "
                        "{path: data/p/f.json, records: oos_train, split: train, columns: [text, label]}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [str(b) for b in data.bad_rows] == [
        "data/p/f.json:2: two records start on this line (from two `records:` lists) and so get one id, "
        "'data/p/f.json:2': put each record on a line of its own, or give the records ids (data.id_field)"]


def test_every_row_is_rendered_and_a_row_without_or_with_a_null_printed_field_is_a_bad_row(lab, tiny_model_dir):
    """The template was tried on the first row only: a later row without `title` stopped `data check` (exit 2, no
    table) and failed `eval` inside its run folder, and a null title was written into the prompt as "None"."""
    folder = data_dir(lab)
    rows = [{"title": "A", "text": "good", "label": "pos"}, {"title": None, "text": "bad", "label": "neg"},
            {"text": "meh", "label": "neg"}, {"title": "B", "text": "fine", "label": "neg"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = "[{path: data/p/train.jsonl, split: train}, {path: data/p/test.jsonl, split: test}]"
    write_lab_task(lab, files, template="Title: {{ title }} {{ text }}")
    (folder / "train.jsonl").write_text('{"title": "T", "text": "good", "label": "pos"}\n')
    result = check(lab)
    assert result.exit_code == 1, result.output
    text = printed(result)
    assert "data/p/test.jsonl:2: prompt.template prints 'title', which example data/p/test.jsonl:2 has no value" in text
    assert "data/p/test.jsonl:3: prompt.template" in text and "uses field 'title'" in text
    assert "test.jsonl:1:" not in text and "test.jsonl:4:" not in text and "examples" in text  # the table is shown
    with pytest.raises(LlamalabError, match="2 bad row"):
        evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="probe"))
    assert not list(lab.runs_dir.glob("*eval*"))  # refused before a run folder was made
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [ex.source for ex in data.split("test")] == ["data/p/test.jsonl:1", "data/p/test.jsonl:4"]

    # Printed only when it has one, a null title is fine; a NaN (a pandas gap) is as null as None.
    write_lab_task(lab, files, template="{% if title %}Title: {{ title }} {% endif %}{{ text }}")
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if "title" in r))
    assert check(lab).exit_code == 0
    (folder / "test.jsonl").write_text('{"title": NaN, "text": "x", "label": "pos"}\n{"title": "C", "text": "y", '
                                       '"label": "neg"}\n')
    write_lab_task(lab, files, template="Title: {{ title }} {{ text }}")
    assert "data/p/test.jsonl:1: prompt.template prints 'title'" in printed(check(lab))


def test_a_mapped_field_missing_from_a_record_is_missing_not_the_records_own_key_of_that_name(lab):
    """`fields: {text: clean.text}`: a record without clean.text took its raw `text` (the HTML the mapping was
    there to avoid) without a word; it is a bad row now."""
    folder = data_dir(lab)
    rows = [{"text": "RAW <b>1</b>", "clean": {"text": "clean 1"}, "label": "pos"},
            {"text": "RAW <b>2</b>", "label": "neg"}, {"text": "RAW 3", "clean": {"txt": "clean 3"}, "label": "neg"}]
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_lab_task(lab, "[{path: data/p/train.jsonl, split: train}, "
                        "{path: data/p/test.jsonl, split: test, fields: {text: clean.text}}]")
    data = load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert [ex.fields["text"] for ex in data.split("test")] == ["clean 1"]
    assert [str(b) for b in data.bad_rows] == [f"data/p/test.jsonl:{n}: missing or empty field(s): text"
                                               for n in (2, 3)]


def test_gold_answers_no_prediction_could_match_are_bad_rows(lab):
    """A number task's gold without a number, or an entity task's gold that is no entity list, was kept: every
    system was wrong on it (even one repeating the gold), and data check said the data was fine."""
    folder = data_dir(lab)
    (folder / "num.jsonl").write_text('{"q": "x", "a": "seventy"}\n{"q": "y", "a": "n/a"}\n{"q": "z", "a": 3}\n'
                                      '{"q": "w", "a": "#### 1,234"}\n')
    def loaded(file: str, fields: str, answer_type: str):
        """Task probe reading `file` as its test and train split, with these data fields and answer type."""
        (lab.root / "tasks" / "probe.yaml").write_text(
            f"name: probe\ndata:\n  files: [{{path: {file}, split: test}}, {{path: {file}, split: train}}]\n"
            f"{fields}prompt: {{template: '{{{{ {'q' if 'q' in fields else 'text'} }}}}'}}\n"
            f"answer: {{type: {answer_type}}}\n")
        return load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)

    data = loaded("data/p/num.jsonl", "  text_fields: [q]\n  answer_field: a\n", "number")
    assert [ex.answer for ex in data.split("test")] == ["3", "#### 1,234"]
    assert [str(b) for b in data.bad_rows][:2] == [
        "data/p/num.jsonl:1: answer 'seventy' holds no number (answer.type: number): fix the row, or drop it",
        "data/p/num.jsonl:2: answer 'n/a' holds no number (answer.type: number): fix the row, or drop it"]

    (folder / "ent.jsonl").write_text(
        '{"text": "Paris", "ents": [{"type": "loc", "text": "Paris"}]}\n{"text": "Bob in Rome", "ents": "PER: Bob"}\n'
        '{"text": "Ann", "ents": [{"kind": "per", "span": "Ann"}]}\n{"text": "none here", "ents": []}\n')
    data = loaded("data/p/ent.jsonl", "  answer_field: ents\n", "entities")
    assert [ex.source for ex in data.split("test")] == ["data/p/ent.jsonl:1", "data/p/ent.jsonl:4"]
    assert [b.source for b in data.bad_rows][:2] == ["data/p/ent.jsonl:2", "data/p/ent.jsonl:3"]
    assert "is not a JSON list of entities" in str(data.bad_rows[0])


def test_a_file_listed_twice_for_one_split_says_so(lab):
    """A YAML anchor copied without changing its path: every row was "two records start on this line (from two
    `records:` lists)", though the file has no `records:`."""
    folder = data_dir(lab)
    (folder / "books.tsv").write_text("good\tpos\nbad\tneg\nfine\tpos\nawful\tneg\nok\tpos\n")
    (lab.root / "tasks" / "probe.yaml").write_text(textwrap.dedent("""\
        name: probe
        data:
          files:
            - &tsv {path: data/p/books.tsv, header: false, columns: [text, label]}
            - {<<: *tsv}
          split: {dev: 0.2, test: 0.2}
        prompt: {template: "{{ text }}"}
        answer: {labels: [neg, pos]}
        """))
    with pytest.raises(LlamalabError, match=r"data.files\[1\] lists data/p/books.tsv again, as data.files\[0\] "
                                            r"does, for the same split: remove one, or fix its path"):
        load_task_data(load_task(lab.task_path("probe"), lab.root), strict=False)
    assert "lists data/p/books.tsv again" in str(check(lab).exception)  # data check: the same error
