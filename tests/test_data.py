from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.tasks.data import derive_split, load_task_data
from llamalab.tasks.task import Task


def make_task(root: Path, files: list[dict], split: dict | None = None, **data) -> Task:
    spec = {"files": files, **data}
    if split is not None:
        spec["split"] = split
    task = Task.model_validate({
        "name": "t",
        "data": spec,
        "prompt": {"template": "{{ text }}"},
        "answer": {"labels": ["neg", "pos"]},
    })
    return task.model_copy(update={"lab_root": root})


def test_jsonl_csv_tsv_and_text_per_label(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    (tmp_path / "dev.csv").write_text('text,label\n"fine, really",pos\nawful,neg\n')
    (tmp_path / "test.tsv").write_text("text\tlabel\ngreat\tpos\nmeh\tneg\n")
    task = make_task(tmp_path, [
        {"path": "train.jsonl", "split": "train"},
        {"path": "dev.csv", "split": "dev"},
        {"path": "test.tsv", "split": "test"},
    ])
    data = load_task_data(task)
    assert [e.fields["text"] for e in data.split("dev")] == ["fine, really", "awful"]
    assert [e.answer for e in data.split("test")] == ["pos", "neg"]
    assert data.split("train")[0].id == "train.jsonl:1"
    assert set(data.file_hashes) == {"train.jsonl", "dev.csv", "test.tsv"}

    (tmp_path / "p.txt").write_text("lovely\nsuperb\n")
    (tmp_path / "n.txt").write_text("dull\n")
    lines = make_task(tmp_path, [
        {"path": "p.txt", "label": "pos", "split": "train"},
        {"path": "n.txt", "label": "neg", "split": "train"},
    ])
    assert [(e.fields["text"], e.answer) for e in load_task_data(lines).split("train")] == [
        ("lovely", "pos"), ("superb", "pos"), ("dull", "neg"),
    ]


def test_bad_rows_are_reported_as_file_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"text": "good", "label": "pos"}\n'
        '{"text": "bad", "label": "neg"\n'  # malformed JSON
        '{"label": "pos"}\n'  # missing field
        '{"text": "odd", "label": "maybe"}\n'  # label outside the set
    )
    (tmp_path / "test.csv").write_text("text,label\nfine,pos\ntoo,many,columns\n")
    task = make_task(tmp_path, [{"path": "train.jsonl", "split": "train"}, {"path": "test.csv", "split": "test"}])
    with pytest.raises(LlamalabError) as err:
        load_task_data(task)
    message = str(err.value)
    assert "4 bad row(s)" in message
    assert "train.jsonl:2: malformed JSON" in message
    assert "train.jsonl:3: missing or empty field(s): text" in message
    assert "train.jsonl:4: label 'maybe' is not in the task's label set" in message
    assert "test.csv:3: has 3 columns, the header has 2" in message

    lenient = load_task_data(task, strict=False)
    assert len(lenient.bad_rows) == 4
    assert len(lenient.split("train")) == 1


def test_missing_file_and_empty_split(tmp_path):
    task = make_task(tmp_path, [{"path": "nope.jsonl", "split": "train"}])
    with pytest.raises(LlamalabError, match="data file nope.jsonl not found"):
        load_task_data(task)
    (tmp_path / "train.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    (tmp_path / "test.jsonl").write_text("\n")
    task = make_task(tmp_path, [{"path": "train.jsonl", "split": "train"}, {"path": "test.jsonl", "split": "test"}])
    with pytest.raises(LlamalabError, match=r"split 'test' is empty: no usable row in test.jsonl \(no rows at all\)"):
        load_task_data(task)


def test_csv_delimiter_quoting_and_headerless_columns(tmp_path):
    (tmp_path / "semi.csv").write_text("label;text\npos;'fine; really'\nneg;awful\n")
    (tmp_path / "raw.tsv").write_text('"quoted\tpos\nplain"\tneg\n')
    task = make_task(tmp_path, [
        {"path": "semi.csv", "split": "train", "delimiter": ";", "quotechar": "'"},
        {"path": "raw.tsv", "split": "test", "header": False, "columns": ["text", "label"], "quotechar": None},
    ])
    data = load_task_data(task)
    assert [(e.fields["text"], e.answer) for e in data.split("train")] == [("fine; really", "pos"), ("awful", "neg")]
    assert [(e.fields["text"], e.answer) for e in data.split("test")] == [('"quoted', "pos"), ('plain"', "neg")]


def test_json_records_path_fields_list_records_and_dotted_ids(tmp_path):
    document = {"data": {"items": [{"meta": {"id": "a7"}, "userInput": {"text": "good"}, "intent": "pos"},
                                   {"meta": {"id": "b2"}, "userInput": {"text": "bad"}, "intent": "neg"}]}}
    (tmp_path / "nested.json").write_text(json.dumps(document, indent=2))
    (tmp_path / "pairs.jsonl").write_text('["fine", "pos"]\n["meh", "neg", "extra"]\n')
    task = make_task(tmp_path, [
        {"path": "nested.json", "split": "train", "records": "data.items",
         "fields": {"text": "userInput.text", "label": "intent"}},
        {"path": "pairs.jsonl", "split": "test", "columns": ["text", "label"]},
    ], id_field="meta.id")
    data = load_task_data(task, strict=False)
    train = data.split("train")
    assert [(e.id, e.fields["text"], e.answer, e.source) for e in train] == [
        ("a7", "good", "pos", "nested.json:4"), ("b2", "bad", "neg", "nested.json:13")]
    assert train[0].fields["userInput"] == {"text": "good"}  # the raw record stays usable in the template
    assert [str(b) for b in data.bad_rows] == ["pairs.jsonl:2: has 3 items, `columns:` names 2"]
    assert data.split("test")[0].id == "pairs.jsonl:1"  # no meta.id: the default id


def test_arrow_file_and_dataset_folder_give_class_label_names(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    features = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    Dataset.from_dict({"text": ["good", "bad", "hidden"], "label": [1, 0, -1]}, features=features).save_to_disk(
        tmp_path / "single")
    arrow = next((tmp_path / "single").glob("*.arrow"))
    both = Dataset.from_dict({"text": ["fine"], "label": [1]}, features=features)
    DatasetDict({"train": both, "test": both}).save_to_disk(tmp_path / "dict")
    task = make_task(tmp_path, [
        {"path": arrow.relative_to(tmp_path).as_posix(), "split": "train"},
        {"path": "single", "split": "dev"},
        {"path": "dict", "split": "test"},
    ])
    data = load_task_data(task, strict=False)
    assert [e.answer for e in data.split("train")] == ["pos", "neg"]
    assert [e.answer for e in data.split("dev")] == ["pos", "neg"]
    assert [str(b) for b in data.bad_rows] == [
        f"{arrow.relative_to(tmp_path).as_posix()}[2]: missing answer field 'label'",  # -1: no label (hidden test)
        "single[2]: missing answer field 'label'",
        "dict: holds several splits (it has train, test): name one with `records:`, one file entry per split, "
        "e.g. {path: dict, records: train, split: train}",
    ]


def test_a_split_drawn_around_bad_rows_is_not_pinned(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos"} for i in range(10)] + [{"text": "", "label": "pos"}]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task(tmp_path, [{"path": "all.jsonl"}], {"dev": 0.2})
    data = load_task_data(task, strict=False)
    assert len(data.split("dev")) == 2 and data.split_manifest is None
    assert not (tmp_path / "data" / "splits" / "t.json").exists()
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))  # fixed
    assert load_task_data(task).split_manifest == tmp_path / "data" / "splits" / "t.json"


def test_derived_split_is_stratified_seeded_and_pinned(tmp_path):
    rows = [{"text": f"t{i}", "label": "pos" if i % 4 else "neg"} for i in range(400)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = {"source": "pool", "dev": 0.1, "test": 0.2, "seed": 3}
    task = make_task(tmp_path, [{"path": "all.jsonl"}], split)
    data = load_task_data(task)
    sizes = {name: len(examples) for name, examples in data.splits.items()}
    assert sizes == {"train": 280, "dev": 40, "test": 80}
    assert Counter(e.answer for e in data.split("test")) == {"pos": 60, "neg": 20}  # stratified: same 3:1 ratio
    ids = {name: {e.id for e in ex} for name, ex in data.splits.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["dev"] & ids["test"])

    manifest = tmp_path / "data" / "splits" / "t.json"
    assert manifest.is_file()
    assert {e.id for e in load_task_data(task).split("test")} == ids["test"]  # same split again

    # Changing the data must not silently change the split.
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    with pytest.raises(LlamalabError, match="recorded split no longer matches"):
        load_task_data(task)
    # Nor may changing the split settings.
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LlamalabError, match="recorded split no longer matches"):
        load_task_data(make_task(tmp_path, [{"path": "all.jsonl"}], {**split, "seed": 4}))


@pytest.mark.parametrize("change", ["a file now gives dev", "the dev file is gone"])
def test_a_pinned_split_whose_drawn_splits_change_is_refused(tmp_path, change):
    """A manifest pinned while the pool gave dev and test, then a dev file added (its pinned dev examples were in
    no split, silently), or pinned with a dev file that is then removed (a KeyError): both are a mismatch."""
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(100)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({**r, "text": f"d{i}"}) + "\n" for i, r in
                                                enumerate(rows[:10])))
    pool_only = [{"path": "all.jsonl"}]
    with_dev = [{"path": "all.jsonl"}, {"path": "dev.jsonl", "split": "dev"}]
    split = {"source": "pool", "dev": 0.1, "test": 0.1, "seed": 3}
    first, then = (pool_only, with_dev) if change == "a file now gives dev" else (with_dev, pool_only)
    data = load_task_data(make_task(tmp_path, first, split))
    assert sum(len(v) for v in data.splits.values()) == 100 + (10 if first is with_dev else 0)
    with pytest.raises(LlamalabError, match=r"t.json: the recorded split no longer matches the task's files: it "
                                            r"draws .* from pool, and now .* must be drawn; .* delete this file"):
        load_task_data(make_task(tmp_path, then, split))


def test_derive_split_depends_on_seed_only():
    from llamalab.tasks.data import Example

    examples = [Example(f"f:{i}", {"text": str(i)}, "pos", f"f:{i}") for i in range(50)]
    a = derive_split(examples, {"dev": 0.2}, seed=1, stratify=True)
    assert a == derive_split(list(reversed(examples)), {"dev": 0.2}, seed=1, stratify=True)
    assert a != derive_split(examples, {"dev": 0.2}, seed=2, stratify=True)
    assert len(a["dev"]) == 10


@pytest.mark.parametrize("seed", range(60))
def test_derived_splits_have_their_share_in_all_and_of_each_label(seed):
    """Each held-out split has round(n * fraction) examples however many labels share them (no label group
    rounding down on its own, even groups of one), each label about its share, and every example lands in exactly
    one split."""
    import random as stdlib_random

    from llamalab.tasks.data import Example

    rng = stdlib_random.Random(seed)
    labels = [f"l{k}" for k in range(rng.choice([1, 2, 5, 77, 300]))]
    examples = [Example(f"e{i}", {}, rng.choice(labels), "") for i in range(rng.randint(1, 900))]
    dev = rng.choice([0.05, 0.1, 0.2, 0.33])
    fractions = {"dev": dev, **({"test": rng.choice([0.1, 0.2])} if rng.random() < 0.5 else {})}
    for stratify in (True, False):
        split = derive_split(examples, fractions, seed, stratify)
        ids = [i for part in split.values() for i in part]
        assert sorted(ids) == sorted(ex.id for ex in examples)  # each exactly once
        for name, fraction in fractions.items():
            assert len(split[name]) == round(len(examples) * fraction), (name, stratify)
            if stratify:
                held = set(split[name])
                for label in labels:
                    group = [ex for ex in examples if ex.answer == label]
                    share = sum(ex.id in held for ex in group)
                    assert abs(share - len(group) * fraction) < 1 + 1e-9, (label, share, len(group))


def test_a_number_task_is_not_stratified_by_answer(tmp_path):
    """Number answers are nearly unique: stratified by answer, every group of one would round its held-out share
    to nothing. Only label tasks are stratified, so dev has its 10%."""
    rows = [{"q": f"question {i}", "a": str(i % 300)} for i in range(1000)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "nums.yaml").write_text(
        "name: nums\ndata:\n  files: [{path: all.jsonl}]\n  text_fields: [q]\n  answer_field: a\n"
        "  split: {source: pool, dev: 0.1, test: 0.2}\nprompt: {template: '{{ q }}'}\nanswer: {type: number}\n")
    from llamalab.tasks.task import load_task

    data = load_task_data(load_task(tmp_path / "tasks" / "nums.yaml", tmp_path))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 700, "dev": 100, "test": 200}


def test_files_without_split_are_not_silently_dropped_when_dev_comes_from_train(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(f'{{"text": "t{i}", "label": "pos"}}\n' for i in range(20)))
    (tmp_path / "more.jsonl").write_text('{"text": "m", "label": "neg"}\n')
    files = [{"path": "train.jsonl", "split": "train"}, {"path": "more.jsonl"}]
    with pytest.raises(LlamalabError, match="some files have no `split:` but data.split.source is 'train'"):
        load_task_data(make_task(tmp_path, files, {"source": "train", "dev": 0.1}))


@pytest.mark.parametrize("content", ['<<<<<<< HEAD\n{"task": "t"}\n=======\n', '[1, 2]', '{"assignment": 3}'])
def test_an_unreadable_split_manifest_names_the_file_and_the_fix(tmp_path, content):
    rows = [{"text": f"t{i}", "label": "pos" if i % 2 else "neg"} for i in range(20)]
    (tmp_path / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = make_task(tmp_path, [{"path": "all.jsonl"}], {"dev": 0.2})
    load_task_data(task)  # derives and records the split
    manifest = tmp_path / "data" / "splits" / "t.json"
    manifest.write_text(content)
    with pytest.raises(LlamalabError, match=r"data/splits/t.json: the recorded split cannot be read .* delete the"):
        load_task_data(task)


def test_pool_without_split_spec_is_an_error(tmp_path):
    (tmp_path / "all.jsonl").write_text('{"text": "good", "label": "pos"}\n')
    with pytest.raises(LlamalabError, match="no `data.split` section"):
        load_task_data(make_task(tmp_path, [{"path": "all.jsonl"}]))


def test_example_lab_tasks_load(lab):
    from llamalab.tasks.task import load_task

    sentiment = load_task_data(load_task(lab.task_path("sentiment"), lab.root))
    assert {k: len(v) for k, v in sentiment.splits.items()} == {"train": 8530, "dev": 1066, "test": 1066}
    intent_task = load_task(lab.task_path("intent"), lab.root)
    intent = load_task_data(intent_task)
    assert len(intent.split("test")) == 3080
    assert len(intent.split("train")) + len(intent.split("dev")) == 10003
    assert len(intent_task.answer.labels) == 77


def test_duplicates_and_leakage_are_the_same_text_not_the_same_words():
    """Case, accents, spacing and punctuation at word edges do not make texts different; a mark inside a word
    does (12+5 is not 12-5), and fields are compared one by one."""
    from llamalab.tasks.checks import normalize_text

    assert normalize_text("  What is   12+5? ") == normalize_text("what is 12+5") == "what is 12+5"
    assert normalize_text("What is 12+5?") != normalize_text("What is 12-5?")
    assert normalize_text("What is 7*3?") != normalize_text("What is 7/3?")
    assert normalize_text("A well-made, café film!") == normalize_text("a well-made cafe film") == \
        "a well-made cafe film"
    assert normalize_text("«Bonjour» — dit-il.") == "bonjour dit-il"
    # an arithmetic sign between spaces is part of the problem; the marks of other scripts are letters
    for a, b in (("What is 12 + 5?", "What is 12 - 5?"), ("Compute -5 + 3", "Compute 5 * 3"), ("x > 3", "x < 3"),
                 ("かき", "がき"), ("कत", "क्त")):
        assert normalize_text(a) != normalize_text(b), (a, b)
    assert normalize_text("Ἀθῆναι, Москва́") == normalize_text("αθηναι москва")  # Greek and Cyrillic accents go
    for a, b in (("क", "क्"), ("का", "की"), ("ناصر", "ناصرُ"), ("12 − 5", "12 · 5"), ("12 − 5", "12 5")):
        assert normalize_text(a) != normalize_text(b), (a, b)  # a mark at a word's end is a letter too
    for a, b in (("Great film - loved it", "Great film, loved it"), ("**great** movie", "great movie"),
                 ("- item one", "item one"), ("(12 + 5)", "12 + 5")):
        assert normalize_text(a) == normalize_text(b), (a, b)  # a sign as punctuation is punctuation
    for a, b in (("I love it 😀", "I love it 😡"), ("😀", "😡"), ("Cost is $5", "Cost is £5"), ("👍", "")):
        assert normalize_text(a) != normalize_text(b), (a, b)  # emoji and currency signs are words
    assert normalize_text("Great film!!! 👍") == normalize_text("great film 👍")


def test_leakage_counts_only_the_same_problem(tmp_path):
    from llamalab.tasks.checks import check_task_data
    from llamalab.tasks.task import Task

    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": "pos"}) + "\n" for t in (
        "What is 12+5?", "What is 7*3?", "What is 9/3?", "Great film!")))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": "neg"}) + "\n" for t in (
        "What is 12-5?", "What is 7+3?", "great   FILM")))
    task = make_task(tmp_path, [{"path": "train.jsonl", "split": "train"}, {"path": "test.jsonl", "split": "test"}])
    assert isinstance(task, Task)
    report = check_task_data(load_task_data(task, strict=False), task)
    assert report.overlap == {"test": 1}
    # dev and test share a text: a choice made on dev has seen a test example
    (tmp_path / "dev.jsonl").write_text(json.dumps({"text": "what is 12-5", "label": "neg"}) + "\n")
    task = make_task(tmp_path, [{"path": "train.jsonl", "split": "train"}, {"path": "dev.jsonl", "split": "dev"},
                                {"path": "test.jsonl", "split": "test"}])
    report = check_task_data(load_task_data(task, strict=False), task)
    assert report.overlap == {"dev": 0, "test": 1}
    assert any(w.startswith("dev/test overlap: 1 test text(s) also appear in dev") for w in report.warnings)

    # texts that differ in emoji only, or are punctuation alone, are no duplicates and no leakage
    def lines(*texts: str) -> str:
        return "".join(json.dumps({"text": t, "label": "pos"}) + "\n" for t in texts)

    (tmp_path / "train.jsonl").write_text(lines("😀", "😡", "?!"))
    (tmp_path / "dev.jsonl").write_text(lines("👍", "..."))
    (tmp_path / "test.jsonl").write_text(json.dumps({"text": "😢", "label": "neg"}) + "\n")
    report = check_task_data(load_task_data(task, strict=False), task)
    assert report.overlap == {"dev": 0, "test": 0}
    assert not [w for w in report.warnings if "duplicate" in w or "overlap" in w], report.warnings

    # an empty dev file overlaps nothing: the data card said "no dev text appears in train" of no text at all
    (tmp_path / "dev.jsonl").write_text("")
    report = check_task_data(load_task_data(task, strict=False), task)
    assert "dev" not in report.overlap and report.overlap == {"test": 0}
