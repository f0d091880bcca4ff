"""Scorers that say what they did: strict and SQL exact match, parse failures, degenerate label scoring, and the
label normalisations (sum, mean, chars, calibrate), each checked for consistency on real evaluations."""

from __future__ import annotations

import json

import pytest
import yaml

from llamalab.evaluation.answers import exact_match, exact_match_strict, extract_sql, normalize_sql
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.evaluation.metrics import label_score, prediction_summary, score_generation
from llamalab.runs.files import read_jsonl
from llamalab.tasks.task import AnswerSpec


@pytest.mark.parametrize(("a", "b", "same"), [
    ("SELECT COUNT(*) FROM singer;", "select count( * )\n  from singer", True),
    ("SELECT name FROM t WHERE city = 'Paris'", 'select NAME from T where CITY = "Paris"', True),
    ("SELECT name FROM t WHERE city = 'Paris'", "select name from t where city = 'paris'", False),
    ("SELECT a FROM t WHERE b LIKE '%x_%'", "SELECT a FROM t WHERE b LIKE 'x'", False),
    ("SELECT t.a FROM t", "SELECT ta FROM t", False),
    ("SELECT a, b FROM t", "SELECT a b FROM t", False),
    ("SELECT `Name` FROM t WHERE x >= 1.5", "select name from t where x>=1.5", True),
    ("SELECT a FROM t WHERE b = 'it''s'", 'SELECT a FROM t WHERE b = "it\'s"', True),
])
def test_sql_normaliser_keeps_what_matters(a, b, same):
    assert (normalize_sql(a) == normalize_sql(b)) is same


def test_lenient_text_match_is_meaningless_for_sql_but_the_sql_match_is_not():
    # The SQuAD-style normaliser drops ( ) . , and quotes: these two queries would "match".
    assert exact_match("SELECT t.a FROM t", "SELECT ta FROM t") == 1.0
    assert normalize_sql("SELECT t.a FROM t") != normalize_sql("SELECT ta FROM t")


def test_strict_exact_match_only_forgives_whitespace():
    assert exact_match_strict("The cat sat.", "  The  cat\nsat. ") == 1.0
    assert exact_match_strict("The cat sat.", "the cat sat") == 0.0
    assert exact_match("The cat sat.", "the cat sat") == 1.0


def test_sql_answers_are_extracted_and_scored():
    answer = AnswerSpec(type="sql")
    fenced = score_generation(answer, "SELECT a FROM t", "Sure:\n```sql\nselect A from T;\n```\nDone.")
    assert fenced["parsed"] and fenced["correct"] and not fenced["exact_strict"]
    assert extract_sql("SELECT 1; SELECT 2;") == "SELECT 1;"
    assert extract_sql("SELECT * FROM t WHERE n = 'a;b'; DROP") == "SELECT * FROM t WHERE n = 'a;b';"  # in a literal
    for fenced_answer in ("```sqlite3\nSELECT 1\n```", "``` sql\nSELECT 1\n```", "```sql\nSELECT 1",
                          "Here: ```SELECT 1``` done", "```\nSELECT 1;\n```", "```sql SELECT 1```"):
        assert extract_sql(fenced_answer).rstrip(";") == "SELECT 1", fenced_answer  # info string, unclosed fence
    empty = score_generation(answer, "SELECT a FROM t", "   ")
    assert not empty["parsed"] and not empty["correct"]


def test_degenerate_label_scoring_is_reported():
    labels = [f"intent{i}" for i in range(40)] + ["no", "yes"]
    answer = AnswerSpec(type="label", labels=labels)
    rows = [{"id": str(i), "gold": f"intent{i}", "prediction": "no" if i % 5 else "yes", "correct": False}
            for i in range(40)]
    summary = prediction_summary(answer, rows, "loglikelihood")
    assert summary["predicted"] == {"no": 32, "yes": 8}
    [warning] = summary["warnings"]
    assert "'no' takes 80% of predictions (32 of 40) but 0% of gold" in warning
    assert "answer.normalize" in warning

    balanced = [{"id": str(i), "gold": "no" if i % 2 else "yes", "prediction": "no" if i % 3 else "yes"}
                for i in range(40)]
    assert prediction_summary(answer, balanced, "loglikelihood")["warnings"] == []


def test_parse_failures_are_counted_and_flagged():
    answer = AnswerSpec(type="entities")
    rows = [{"id": str(i), "parsed": i < 3} for i in range(10)]
    summary = prediction_summary(answer, rows, "generate")
    assert summary["parse_failures"] == 7
    assert "7 of 10 outputs (70%) did not parse as a JSON entity list" in summary["warnings"][0]
    # Rows written before `parsed` existed: the entity row's valid_json says it.
    assert prediction_summary(answer, [{"id": "a", "valid_json": False}], "generate")["parse_failures"] == 1


def test_label_scores_under_each_normalisation():
    assert label_score(-6.0, 3, 12, -1.0, "sum") == -6.0
    assert label_score(-6.0, 3, 12, -1.0, "mean") == -2.0
    assert label_score(-6.0, 3, 12, -1.0, "chars") == -0.5
    assert label_score(-6.0, 3, 12, -1.0, "calibrate") == -5.0


@pytest.mark.parametrize("normalize", ["sum", "mean", "chars", "calibrate"])
def test_each_normalisation_scores_what_the_record_says(lab, tiny_model_dir, normalize):
    path = lab.root / "tasks" / "intent.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["answer"]["normalize"] = normalize
    path.write_text(yaml.safe_dump(spec))
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="intent", limit=12))
    data = record.run.model_dump(mode="json")
    summary, scoring = data["predictions_summary"], data["scoring"]
    assert scoring["normalize"] == normalize
    calibration = scoring["calibration"]
    assert "N/A" in calibration["prompt"] and len(calibration["logprobs"]) == 77
    # The same log-likelihoods re-scored under the task's own normalisation give the run's accuracy.
    assert summary["accuracy_by_normalization"][normalize] == pytest.approx(
        data["metrics"]["accuracy"]["estimate"])
    assert sum(summary["predicted"].values()) == 12
    for row in read_jsonl(record.folder / "predictions.jsonl"):
        assert set(row["logprobs"]) == set(row["scores"]) == set(calibration["logprobs"])
        assert row["prediction"] == max(row["scores"], key=row["scores"].get)


def test_a_sql_task_end_to_end(lab, tiny_model_dir):
    rows = [{"question": f"How many rows in table t{i}?", "query": f"SELECT count(*) FROM t{i}"} for i in range(8)]
    (lab.root / "data" / "sql.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (lab.root / "tasks" / "sql.yaml").write_text(
        "name: sql\ndata:\n  files: [{path: data/sql.jsonl}]\n  text_fields: [question]\n  answer_field: query\n"
        "  split: {source: pool, dev: 0.25, test: 0.25, seed: 0, stratify: false}\n"
        "prompt: {template: 'Question: {{ question }}\\nSQL:'}\nanswer: {type: sql}\n"
    )
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sql", max_new_tokens=4))
    data = record.run.model_dump(mode="json")
    assert set(data["metrics"]) == {"exact_match", "exact_match_strict"}
    assert data["scoring"]["protocol"] == "generate"
    assert data["predictions_summary"]["parse_failures"] == sum(
        not row["parsed"] for row in read_jsonl(record.folder / "predictions.jsonl"))
    for row in read_jsonl(record.folder / "predictions.jsonl"):
        assert {"parsed", "correct", "exact_strict"} <= set(row)


def test_every_normalisation_has_its_description():
    from typing import get_args

    from llamalab.tasks.task import NORMALIZATIONS, LabelNormalization

    assert list(NORMALIZATIONS) == list(get_args(LabelNormalization))


def test_prediction_summary_counts_and_warnings_on_random_samples():
    """Property: the distributions are exact counts, and a label is flagged exactly when its share of predictions
    exceeds its gold share by 25 points or more (with at least 5 predictions)."""
    import random
    from collections import Counter

    rng = random.Random(5)
    for _ in range(300):
        labels = [f"l{i}" for i in range(rng.choice([2, 5, 40]))]
        answer = AnswerSpec(type="label", labels=labels)
        n = rng.randint(1, 60)
        favourite = rng.choice(labels)
        rows = [{"id": str(i), "gold": rng.choice(labels),
                 "prediction": favourite if rng.random() < rng.random() else rng.choice([*labels, None])}
                for i in range(n)]
        summary = prediction_summary(answer, rows, "loglikelihood")
        predicted = Counter("<no answer>" if r["prediction"] is None else r["prediction"] for r in rows)
        gold = Counter(r["gold"] for r in rows)
        assert summary["predicted"] == dict(predicted) and summary["gold"] == dict(gold)
        flagged = {w.split("'")[1] for w in summary["warnings"]}
        expected = {label for label, c in predicted.items()
                    if label != "<no answer>" and c >= 5 and (c - gold.get(label, 0)) / n >= 0.25}
        assert flagged == expected


def test_parse_failures_on_random_samples():
    import random

    rng = random.Random(9)
    for answer_type in ("entities", "number", "text", "sql", "label"):
        answer = AnswerSpec(type=answer_type, labels=["a", "b"] if answer_type == "label" else [])
        rows = [{"id": str(i), "parsed": rng.random() < 0.7, "gold": "a", "prediction": "a"} for i in range(50)]
        summary = prediction_summary(answer, rows, "generate")
        failures = sum(not r["parsed"] for r in rows)
        assert summary["parse_failures"] == failures
        assert bool(summary["warnings"] and "did not parse" in summary["warnings"][0]) == (failures / 50 >= 0.2)


def test_outputs_cut_off_by_the_budget_on_random_samples():
    """Property: the count of outputs cut off is exact when every row says whether it was, unknown (None) when some
    row does not (kept before it was, or a chat API without finish_reason), absent when none does; the warning fires
    exactly from 5% of known cut-offs, with their count ("at least" when rows are missing)."""
    import random
    import re

    rng = random.Random(13)
    answer = AnswerSpec(type="number")
    for _ in range(400):
        n = rng.randint(1, 80)
        share, said = rng.choice([0, 0.02, 0.05, 0.3, 1]), rng.choice([0, 1, 0.9])
        rows = [{"id": str(i), "parsed": True, "prediction": "1", "gold": "1"} for i in range(n)]
        for row in rows:
            if rng.random() < said:
                row["truncated"] = rng.random() < share
        summary = prediction_summary(answer, rows, "generate")
        known = [r["truncated"] for r in rows if "truncated" in r]
        cut = sum(known)
        if not known:
            assert "truncated" not in summary
        else:
            assert summary["truncated"] == (cut if len(known) == n else None)
        warned = [w for w in summary["warnings"] if "cut off" in w]
        assert bool(warned) == (bool(known) and cut / n >= 0.05)
        if warned:
            counted = re.match(r"(at least )?(\d+) of (\d+) outputs", warned[0])
            assert (bool(counted[1]), int(counted[2]), int(counted[3])) == (len(known) < n, cut, n)


def test_normalisation_accuracies_on_random_scores():
    """Property: each accuracy equals an independent argmax of that normalisation's score."""
    import random

    from llamalab.evaluation.metrics import normalization_accuracies

    rng = random.Random(11)
    labels = ["no", "yes", "maybe later"]
    chars = {label: len(label) for label in labels}
    for _ in range(100):
        unconditional = {label: -rng.uniform(0, 5) for label in labels}
        rows = []
        for i in range(rng.randint(1, 30)):
            tokens = {label: rng.randint(1, 4) for label in labels}
            rows.append({"id": str(i), "gold": rng.choice(labels), "tokens": tokens,
                         "logprobs": {label: -rng.uniform(0, 10) for label in labels}})
        result = normalization_accuracies(rows, labels, chars, unconditional)
        for how, divide in (("sum", lambda r, lab: 1), ("mean", lambda r, lab: r["tokens"][lab]),
                            ("chars", lambda r, lab: chars[lab])):
            right = sum(max(labels, key=lambda lab: r["logprobs"][lab] / divide(r, lab)) == r["gold"] for r in rows)
            assert result[how] == pytest.approx(right / len(rows))
        right = sum(max(labels, key=lambda lab: r["logprobs"][lab] - unconditional[lab]) == r["gold"] for r in rows)
        assert result["calibrate"] == pytest.approx(right / len(rows))


def test_sql_and_strict_match_properties_on_random_queries():
    """Property: the SQL form ignores keyword case and spacing between tokens, and is idempotent; it keeps the
    case of literals. The strict match ignores whitespace only."""
    import random

    rng = random.Random(3)
    keywords = ["SELECT", "FROM", "WHERE", "AND", "COUNT", "ORDER BY", "LIMIT"]
    for _ in range(200):
        tokens = [rng.choice([*keywords, "t.a", "b", "(", ")", "*", ",", ">=", "=", "'Paris'", "3"])
                  for _ in range(rng.randint(1, 12))]
        query = " ".join(tokens)
        spaced = rng.choice(["  ", " ", "\n"]).join(tokens)
        recased = " ".join(t if t.startswith("'") else t.swapcase() for t in tokens)
        assert normalize_sql(spaced) == normalize_sql(query) == normalize_sql(recased)
        assert normalize_sql(normalize_sql(query)) == normalize_sql(query)
        assert exact_match_strict(query, spaced) == 1.0
        if "'Paris'" in tokens:
            assert normalize_sql(query.replace("'Paris'", "'paris'")) != normalize_sql(query)
        if any(t.isalpha() and t.upper() != t.lower() for t in tokens):
            assert exact_match_strict(query, recased) == 0.0
