"""Four public-dataset layouts load straight from their original-style files: data check, eval and train on each.

Each fixture is a small file in the layout its dataset ships in, written here; the task file alone says how
to read it (no conversion script).
"""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import load_task
from llamalab.training.trainer import train
from tests.conftest import write_experiment

INTENTS = ["transfer", "balance", "weather", "oos"]
QUERIES = {
    "transfer": ["send money to my sister", "move 20 euros to savings", "wire cash to john", "pay back tom"],
    "balance": ["how much money do i have", "what is my balance", "show my account total", "funds left?"],
    "weather": ["will it rain tomorrow", "is it sunny in rome", "weather for the weekend", "how cold is it"],
    "oos": ["tell me a joke", "who won the game", "what is love", "sing a song"],
}


def write_task(lab, name: str, text: str) -> str:
    (lab.root / "tasks" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return name


def clinc_like(lab) -> str:
    """(a) CLINC150's data_full.json: one minified JSON object of splits, each a list of [text, label] pairs,
    with the out-of-scope class in splits of its own."""
    pairs = {label: [[text, label] for text in texts] for label, texts in QUERIES.items()}
    in_scope = [pair for label in INTENTS[:3] for pair in pairs[label]]
    document = {
        "train": in_scope[0::2], "val": in_scope[1::4], "test": in_scope[3::4],
        "oos_train": pairs["oos"][:2], "oos_val": pairs["oos"][2:3], "oos_test": pairs["oos"][3:],
    }
    folder = lab.root / "data" / "clinc"
    folder.mkdir()
    (folder / "data_full.json").write_text(json.dumps(document))
    return write_task(lab, "clinc", """\
        name: clinc
        data:
          files:
            - &clinc {path: data/clinc/data_full.json, records: train, columns: [text, label], split: train}
            - {<<: *clinc, records: oos_train}
            - {<<: *clinc, records: val, split: dev}
            - {<<: *clinc, records: oos_val, split: dev}
            - {<<: *clinc, records: test, split: test}
            - {<<: *clinc, records: oos_test, split: test}
        prompt: {template: "Query: {{ text }}\\nIntent:"}
        answer: {labels: [transfer, balance, weather, oos]}
    """)


def domain_tsvs(lab) -> str:
    """(b) A multi-domain sentiment set: one headerless `text<TAB>label` file per domain, pooled then split."""
    folder = lab.root / "data" / "reviews"
    folder.mkdir()
    for domain in ("books", "dvd"):
        lines = [f"{domain} {i}: {'a gripping read' if i % 2 else 'dull and too long'}\t{'pos' if i % 2 else 'neg'}"
                 for i in range(12)]
        (folder / f"{domain}.tsv").write_text("\n".join(lines) + "\n")
    return write_task(lab, "reviews", """\
        name: reviews
        data:
          files:
            - &tsv {path: data/reviews/books.tsv, header: false, columns: [text, label]}
            - {<<: *tsv, path: data/reviews/dvd.tsv}
          split: {source: pool, dev: 0.25, test: 0.25, seed: 1}
        prompt: {template: "Review: {{ text }}\\nSentiment:"}
        answer: {labels: [neg, pos]}
    """)


def span_offsets(lab) -> str:
    """(c) Slot filling as text plus character-offset spans; a span starting at 0 omits `start`."""
    rows = [
        {"text": f"book a flight to {city} on {day}",
         "spans": [{"end": 4, "label": "action"},
                   {"start": 17, "end": 17 + len(city), "label": "city"},
                   {"start": 21 + len(city), "end": 21 + len(city) + len(day), "label": "day"}]}
        for city, day in [("paris", "monday"), ("rome", "friday"), ("oslo", "sunday"), ("lima", "today"),
                          ("kyiv", "tuesday"), ("bern", "monday"), ("riga", "friday"), ("nice", "sunday")]
    ]
    folder = lab.root / "data" / "slots"
    folder.mkdir()
    for split, part in (("train", rows[:4]), ("dev", rows[4:6]), ("test", rows[6:])):
        (folder / f"{split}.json").write_text(json.dumps(part, indent=2))
    return write_task(lab, "slots", """\
        name: slots
        data:
          files:
            - {path: data/slots/train.json, split: train, spans: {}}
            - {path: data/slots/dev.json, split: dev, spans: {}}
            - {path: data/slots/test.json, split: test, spans: {}}
          answer_field: entities
        prompt: {template: "List the slots as JSON.\\n{{ text }}\\n"}
        answer: {type: entities}
    """)


SQL = [("how many users are there", "SELECT count(*) FROM users"),
       ("list all cities", "SELECT name FROM cities"),
       ("oldest user", "SELECT name FROM users ORDER BY age DESC LIMIT 1"),
       ("users in rome", "SELECT name FROM users WHERE city = 'rome'"),
       ("number of cities", "SELECT count(*) FROM cities"),
       ("youngest user", "SELECT name FROM users ORDER BY age LIMIT 1")]


def nested_sql(lab) -> str:
    """(d) Text-to-SQL as a nested JSON list (train), a Parquet file (test) and a `save_to_disk` folder (dev)."""
    from datasets import Dataset, DatasetDict

    def rows(pairs):
        return [{"question": {"text": q}, "query": {"sql": s}} for q, s in pairs]

    folder = lab.root / "data" / "sql"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps(rows(SQL[:3])))
    Dataset.from_list(rows(SQL[3:5])).to_parquet(folder / "test.parquet")
    DatasetDict({"validation": Dataset.from_list(rows(SQL[5:]))}).save_to_disk(folder / "hub")
    return write_task(lab, "sql", """\
        name: sql
        data:
          files:
            - &sql {path: data/sql/train.json, split: train, fields: {question: question.text, sql: query.sql}}
            - {<<: *sql, path: data/sql/hub, records: validation, split: dev}
            - {<<: *sql, path: data/sql/test.parquet, split: test}
          text_fields: [question]
          answer_field: sql
        prompt: {template: "Question: {{ question }}\\nSQL:"}
        answer: {type: sql}
    """)


def test_object_of_splits_with_pairs(lab):
    task = load_task(lab.task_path(clinc_like(lab)), lab.root)
    data = load_task_data(task)
    assert {name: len(examples) for name, examples in data.splits.items()} == {"train": 8, "dev": 4, "test": 4}
    first = data.split("train")[0]
    assert (first.fields["text"], first.answer) == ("send money to my sister", "transfer")
    assert first.source == "data/clinc/data_full.json:1 (train[0])"  # minified: the index tells records apart
    assert data.split("test")[-1].answer == "oos"
    assert list(data.file_hashes) == ["data/clinc/data_full.json"]


def test_headerless_tsv_per_domain_pooled(lab):
    task = load_task(lab.task_path(domain_tsvs(lab)), lab.root)
    data = load_task_data(task)
    assert {name: len(examples) for name, examples in data.splits.items()} == {"train": 12, "dev": 6, "test": 6}
    sources = {ex.source.split(":")[0] for examples in data.splits.values() for ex in examples}
    assert sources == {"data/reviews/books.tsv", "data/reviews/dvd.tsv"}


def test_span_offsets_become_entities(lab):
    task = load_task(lab.task_path(span_offsets(lab)), lab.root)
    first = load_task_data(task).split("train")[0]
    assert json.loads(first.answer) == [
        {"type": "action", "text": "book"}, {"type": "city", "text": "paris"}, {"type": "day", "text": "monday"}]
    assert first.source == "data/slots/train.json:2"  # pretty-printed: each record at its own line


def test_nested_json_parquet_and_dataset_folder(lab):
    task = load_task(lab.task_path(nested_sql(lab)), lab.root)
    data = load_task_data(task)
    assert [(ex.fields["question"], ex.answer) for ex in data.split("dev")] == [SQL[5]]
    assert [(ex.fields["question"], ex.answer) for ex in data.split("test")] == SQL[3:5]
    assert data.split("train")[2].answer == SQL[2][1]
    assert data.split("dev")[0].source == "data/sql/hub[validation][0]"
    assert data.split("test")[0].source == "data/sql/test.parquet[0]"
    assert set(data.file_hashes) == {"data/sql/train.json", "data/sql/hub", "data/sql/test.parquet"}


@pytest.mark.parametrize("layout", [clinc_like, domain_tsvs, span_offsets, nested_sql])
def test_check_eval_and_train_on_each_layout(lab, tiny_model_dir, layout):
    name = layout(lab)
    checked = CliRunner().invoke(app, ["data", "check", name, "--lab", str(lab.root), "--model", str(tiny_model_dir),
                                       "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["ok"]

    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task=name, limit=2, max_new_tokens=4))
    assert record.run.status == "finished" and record.run.task.n == 2

    experiment = write_experiment(lab, f"{name}-tiny", json.dumps({
        "task": name, "base_model": str(tiny_model_dir), "max_steps": 2, "batch_size": 2, "save_steps": 2,
        "lora": {"r": 2, "alpha": 4},
    }))
    run = train(lab, experiment)
    assert run.run.status == "finished" and run.run.metrics.steps == 2
