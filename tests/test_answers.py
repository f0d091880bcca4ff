"""Answer extraction, entity / ROUGE scoring, and the shipped generation-task data."""

from __future__ import annotations

import importlib.util
import json
import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from rouge_score import rouge_scorer

from llamalab.evaluation.answers import (
    entity_scores,
    exact_match,
    extract_number,
    normalize_text,
    parse_entities,
    rouge_scores,
)
from llamalab.evaluation.metrics import metric_intervals, paired_test, score_generation
from llamalab.evaluation.stats import resample_indices
from llamalab.lab import example_lab_source
from llamalab.tasks.task import AnswerSpec

DATA = example_lab_source() / "data"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "convert_wnut17.py"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def converter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_wnut17", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- exact match ------------------------------------------------------------------------------------------------


def test_normalize_text_follows_the_documented_rule():
    assert normalize_text("  The Café, an   A-frame!  ") == "cafe aframe"
    assert normalize_text("¡Él está aquí!") == "el esta aqui"
    assert normalize_text("Theatre and another") == "theatre and another"  # articles only as whole words
    assert normalize_text("A") == ""


def test_exact_match():
    assert exact_match("The Eiffel Tower", "eiffel tower.") == 1.0
    assert exact_match("Eiffel Tower", "Eiffel") == 0.0


# --- numbers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.5"),
        ("She earns 18 dollars", "18"),
        ("The trip is 5 km", "5"),
        ("The discount is 50%", "50"),
        ("The temperature dropped to -3 degrees.", "-3"),
        ("So x = 42.0.", "42"),
        ("We get \\boxed{42}", "42"),
        ("The final answer is \\boxed{1{,}234}", "1234"),
        ("Answer: **-1,000**", "-1000"),
        ("5-3=2 apples, plus 4 gives 6.", "6"),
        ("48/2 = <<48/2=24>>24 in May.\n48+24 = <<48+24=72>>72 total.\n#### 72", "72"),
        ("Step 1: 48/2 = 24. The answer is 72. Check: 72 - 24 = 48", "72"),
        ("First 3 boxes, then \\boxed{17} is it; that took 2 tries", "17"),
        ("#### eighteen\nso 18 eggs", "18"),
        ("She paid \u2212$5 net", "-5"),
        ("COVID-19 cases rose by 12", "12"),
        ("It costs 0.50 each", "0.5"),
        ("5,000,000 people", "5000000"),
        ("answer is:\n 7 apples", "7"),
        # a run-on past the answer (plain prompts): the first marker with a number is the answer
        ("9*2 = 18 dollars.\n#### 18\n\nQuestion: Tom has 3 and buys 4?\nAnswer: 3+4 = 7\n#### 7", "18"),
        ("#### Step 1: Eggs\n16 eggs.\n#### Step 2: Left\n16-3-4 = 9\nThe answer is 18", "18"),  # headings
        ("Answer: 5 + 3 = 8", "8"),
        ("The answer is 2^3 = 8", "8"),
        ("The answer is 10% of 50 = 5", "5"),
        ("The answer is 20% = 0.2", "0.2"),
        ("The answer is not obvious. First 3 + 5 = 8, so we get 16.", "16"),
        ("#### 1/2", "0.5"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),
        ("#### 2/6", "1/3"),
        (".5 of them", "0.5"),
        ("answer: 1e3", "1000"),
        ("answer: 2E+12", "2000000000000"),
        ("1e5000", None),  # more digits than any number is read with (its exponent was read as the number 5000)
        ("the answer is 1e999999999, or 7", "7"),  # no number: the last one in the text
        ("12/25/2020", "12"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None):
    assert extract_number(text) == expected


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("1,234", "1234"),
        ("$1,234.50", "1234.5"),
        ("42.0", "42"),
        ("-3", "-3"),
        ("-0", "0"),
        ("007", "7"),
        ("1000", "1000"),
    ],
)
def test_gold_numbers_are_canonicalised_as_predictions_are(gold: str, expected: str):
    # Scoring extracts the gold answer with the same function as the prediction, so both take one form.
    assert extract_number(gold) == expected
    row = score_generation(AnswerSpec(type="number"), gold, f"So the answer is {expected}.")
    assert row == {"prediction": expected, "parsed": True, "gold_number": expected, "correct": True}


def test_number_scoring_of_a_wrong_or_missing_answer():
    answer = AnswerSpec(type="number")
    assert score_generation(answer, "#### 18", "She sells 16 eggs, so 17.")["correct"] is False
    missing = score_generation(answer, "#### 18", "I cannot tell.")
    assert (missing["prediction"], missing["parsed"], missing["correct"]) == (None, False, False)


def test_a_fraction_never_matches_its_numerator_or_denominator():
    answer = AnswerSpec(type="number")
    assert score_generation(answer, "#### 1/2", "#### 1/3")["correct"] is False
    assert score_generation(answer, "#### 0.5", "So the answer is 1/2.")["correct"] is True
    assert score_generation(answer, "#### 3", "The answer is 3/4.")["correct"] is False


def test_numbers_in_every_written_form_extract_to_their_value_on_random_numbers():
    """Property: a number written plain, with thousands commas, a currency sign, trailing zeros, as a fraction
    or in scientific notation, after any marker and followed by a run-on with another answer, extracts to the
    canonical form of its value."""
    rng = np.random.default_rng(11)
    for _ in range(2000):
        value = Fraction(int(rng.integers(-10**7, 10**7)), int(rng.choice([1, 1, 2, 4, 5, 8, 10, 100])))
        decimal = Decimal(value.numerator) / Decimal(value.denominator)
        plain = format(decimal, "f")
        forms = [plain, plain + "0" if "." in plain else plain + ".00", f"{decimal:,}"]
        if value.denominator != 1:
            forms.append(f"{value.numerator}/{value.denominator}")
        if value >= 0:
            forms += [f"${decimal:,}", f"{decimal:.3e}" if len(plain.replace('.', '').strip('0')) <= 4 else plain]
        expected = "0" if value == 0 else format(decimal.normalize(), "f")
        for form in forms:
            for text in (f"#### {form}", f"So the answer is {form}.", f"Answer: **{form}**",
                         f"Thus \\boxed{{{form}}}", f"It makes {form}",
                         f"Working.\n#### {form}\n\nQuestion: Another?\n#### 999"):
                assert extract_number(text) == expected, (text, expected)


def _reference_canonical(number: str) -> str:
    """Independent canonical form of a plain gold number: commas dropped, Decimal without trailing zeros."""
    value = Decimal(number.strip().replace(",", ""))
    return "0" if value == 0 else format(value.normalize(), "f")


def test_every_shipped_gsm8k_gold_extracts_to_itself():
    rows = _read_jsonl(DATA / "gsm8k" / "test.jsonl")
    assert len(rows) == 1319
    golds = [_reference_canonical(row["answer"].split("####")[-1]) for row in rows]
    assert [extract_number(row["answer"]) for row in rows] == golds
    # The shipped file really exercises negatives and thousands separators.
    assert {"-3", "-10", "1450000", "2125"} <= set(golds)


# --- entities ---------------------------------------------------------------------------------------------------


def test_parse_entities_valid_forms():
    assert parse_entities('[{"type": "Person", "text": " Lady   Gaga"}]') == [("person", "Lady Gaga")]
    fenced = 'Sure! Here they are:\n```json\n{"entities": [{"type": "location", "text": "Paris", "start": 3}]}\n```'
    assert parse_entities(fenced) == [("location", "Paris")]
    assert parse_entities("There are none [see note 1]: []") == []
    # A list nested inside another object is not taken for the answer; the top-level list after it is.
    nested = '{"people": [{"type": "person", "text": "X"}]} [{"type": "group", "text": "Y"}]'
    assert parse_entities(nested) == [("group", "Y")]


def test_an_answer_nested_past_the_decoders_depth_is_invalid_not_a_crash():
    """A generation of 1,500 "[" raised RecursionError, failing the run (and every resume: the answer is cached)."""
    assert parse_entities("[" * 1500) is None
    assert parse_entities("{" * 5000 + ' [{"type": "person", "text": "Ada"}]') == [("person", "Ada")]
    assert parse_entities("[ [" * 3000) is None


@pytest.mark.parametrize(
    "text",
    [
        "[{'type': 'person', 'text': 'Lady Gaga'}]",
        "no entities found",
        '[{"type": "person"}]',
        '[{"type": "person", "text": 7}]',
        '["Lady Gaga"]',
        '[{"type": "person", "text": "Lady Gaga"}',
        "",
    ],
)
def test_parse_entities_invalid_is_none(text: str):
    assert parse_entities(text) is None


GOLD = [
    [("person", "Lady Gaga"), ("location", "Paris")],
    [("group", "Beatles")],
    [("product", "iPhone"), ("product", "iPhone")],
    [],
]
PRED_TEXT = [
    '[{"type": "Person", "text": "Lady  Gaga"}, {"type": "location", "text": "London"}]',  # tp 1, fp 1, fn 1
    "[{'type': 'group', 'text': 'Beatles'}]",  # invalid JSON: fn 1
    '```json\n[{"type": "product", "text": "iPhone"}, {"type": "product", "text": "iPhone"},'
    ' {"type": "product", "text": "iPhone"}]\n```',  # duplicates: tp 2, fp 1
    '{"entities": [{"type": "corporation", "text": "Apple"}]}',  # fp 1
]


def test_entity_scores_hand_computed():
    pred = [parse_entities(t) for t in PRED_TEXT]
    assert pred[1] is None
    scores = entity_scores(GOLD, pred)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (3, 3, 2)
    assert scores["precision"] == pytest.approx(0.5)
    assert scores["recall"] == pytest.approx(0.6)
    assert scores["f1"] == pytest.approx(6 / 11)
    assert scores["n"] == 4 and scores["n_invalid"] == 1
    assert scores["per_example"] == [
        {"tp": 1, "fp": 1, "fn": 1},
        {"tp": 0, "fp": 0, "fn": 1},
        {"tp": 2, "fp": 1, "fn": 0},
        {"tp": 0, "fp": 1, "fn": 0},
    ]


def test_entity_scores_edge_cases():
    assert entity_scores([[]], [None])["f1"] == 0.0  # nothing to find, nothing found: undefined -> 0
    with pytest.raises(ValueError):
        entity_scores(GOLD, [None])


ENTITY_METRICS = ("entity_precision", "entity_recall", "entity_f1")


def _gold_json(entities: list[tuple[str, str]]) -> str:
    return json.dumps([{"type": kind, "text": text} for kind, text in entities])


def _entity_rows(gold: list[list[tuple[str, str]]], texts: list[str]) -> list[dict]:
    """Prediction rows as an entity eval writes them: scored by score_generation, ids in row order."""
    answer = AnswerSpec(type="entities")
    return [{"id": f"x{i:04d}", **score_generation(answer, _gold_json(g), t)}
            for i, (g, t) in enumerate(zip(gold, texts, strict=True))]


def test_entity_rows_hold_the_per_example_counts():
    rows = _entity_rows(GOLD, PRED_TEXT)
    scores = entity_scores(GOLD, [parse_entities(t) for t in PRED_TEXT])
    assert [{k: r[k] for k in ("tp", "fp", "fn")} for r in rows] == scores["per_example"]
    assert [r["valid_json"] for r in rows] == [True, False, True, True]
    intervals = metric_intervals(ENTITY_METRICS, rows, resamples=200)
    assert {name: intervals[f"entity_{name}"]["estimate"] for name in ("precision", "recall", "f1")} == \
        pytest.approx({name: scores[name] for name in ("precision", "recall", "f1")})


def test_entity_intervals_match_a_naive_bootstrap():
    gold, texts = GOLD * 5, PRED_TEXT * 5
    rows = _entity_rows(gold, texts)
    intervals = metric_intervals(ENTITY_METRICS, rows, resamples=300)
    scores = entity_scores(gold, [parse_entities(t) for t in texts])
    counts = np.array([[e["tp"], e["fp"], e["fn"]] for e in scores["per_example"]])
    naive = []
    for row in resample_indices(len(gold), 300, 0):  # metric_intervals resamples with seed 0
        tp, fp, fn = counts[row].sum(axis=0)
        naive.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    low, high = np.quantile(naive, [0.025, 0.975])
    f1 = intervals["entity_f1"]
    assert f1["estimate"] == pytest.approx(scores["f1"])
    assert (f1["low"], f1["high"]) == pytest.approx((low, high))
    assert high - low > 0.1  # 20 examples: a real width
    for name in ENTITY_METRICS:
        interval = intervals[name]
        assert interval["low"] <= interval["estimate"] <= interval["high"]
        assert interval["n"] == 20 and interval["confidence"] == 0.95
    assert metric_intervals(ENTITY_METRICS, rows, resamples=300) == intervals  # seeded: reproducible


def test_entity_perfect_predictions_have_a_degenerate_interval():
    rows = _entity_rows(GOLD, [_gold_json(g) for g in GOLD])
    f1 = metric_intervals(["entity_f1"], rows, resamples=200)["entity_f1"]
    assert (f1["low"], f1["estimate"], f1["high"]) == (1.0, 1.0, 1.0)


def test_entity_paired_test_prefers_the_better_system():
    gold = GOLD * 10
    perfect = _entity_rows(gold, [_gold_json(g) for g in gold])
    noisy = _entity_rows(gold, PRED_TEXT * 10)
    result = paired_test("entity_f1", perfect, noisy, resamples=500)
    assert result.delta == pytest.approx(1 - 6 / 11)
    assert result.p_value < 0.01


# --- ROUGE ------------------------------------------------------------------------------------------------------


def test_rouge_known_pair_and_package_agreement():
    reference, prediction = "the cat sat on the mat", "the cat lay on the mat"
    scores = rouge_scores([reference], [prediction])
    # 5 of 6 unigrams, 3 of 5 bigrams, LCS "the cat on the mat" of length 5.
    assert scores["rouge1"][0] == pytest.approx(5 / 6)
    assert scores["rouge2"][0] == pytest.approx(3 / 5)
    assert scores["rougeL"][0] == pytest.approx(5 / 6)
    direct = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(reference, prediction)
    assert {k: v[0] for k, v in scores.items()} == {k: s.fmeasure for k, s in direct.items()}


def test_rouge_sanity_values():
    scores = rouge_scores(
        ["We propose a new method.", "cats running fast", "alpha beta", ["first summary here", "graph networks"]],
        ["We propose a new method.", "cat runs fast", "", "graph networks"],
    )
    assert [s[0] for s in scores.values()] == [1.0, 1.0, 1.0]  # identical strings
    assert scores["rouge1"][1] == 1.0  # stemming: cats/cat, running/runs
    assert [s[2] for s in scores.values()] == [0.0, 0.0, 0.0]  # empty prediction
    assert [s[3] for s in scores.values()] == [1.0, 1.0, 1.0]  # best of several references
    with pytest.raises(ValueError):
        rouge_scores(["a"], [])


def test_rouge_interval_is_the_mean_with_bounds_around_it():
    scores = {"rouge1": [0.1, 0.5, 0.9, 0.3, 0.7], "rougeL": [0.0, 0.2, 0.4, 0.6, 0.8]}
    rows = [{"id": f"x{i}", "rouge1": r1, "rougeL": rl}
            for i, (r1, rl) in enumerate(zip(scores["rouge1"], scores["rougeL"], strict=True))]
    cis = metric_intervals(["rouge1", "rougeL"], rows, resamples=500)
    assert cis["rouge1"]["estimate"] == pytest.approx(0.5)
    assert cis["rougeL"]["estimate"] == pytest.approx(0.4)
    for name, interval in cis.items():
        assert min(scores[name]) <= interval["low"] < interval["estimate"] < interval["high"] <= max(scores[name])


def test_rouge_rows_from_scoring_give_the_corpus_mean():
    references = ["the cat sat on the mat", "We propose a new method.", "alpha beta", '["first summary", "graphs"]']
    outputs = ["the cat lay on the mat", "We propose a new method.", "", "graphs"]
    answer = AnswerSpec(type="text")
    rows = [{"id": f"x{i}", **score_generation(answer, ref, out)}
            for i, (ref, out) in enumerate(zip(references, outputs, strict=True))]
    per_example = rouge_scores([answer.references(r) for r in references], outputs)
    intervals = metric_intervals(["rouge1", "rouge2", "rougeL"], rows, resamples=300)
    for name, values in per_example.items():
        assert [r[name] for r in rows] == values
        assert intervals[name]["estimate"] == pytest.approx(np.mean(values))
        assert intervals[name]["low"] <= intervals[name]["estimate"] <= intervals[name]["high"]
    assert per_example["rouge1"] == pytest.approx([5 / 6, 1.0, 0.0, 1.0])


# --- WNUT-17 converter and shipped data -------------------------------------------------------------------------

CONLL_SAMPLE = (
    "Empire\tB-location\nState\tI-location\nBuilding\tI-location\n=\tO\nESB\tB-location\n.\tO\n"
    "\t\n"  # a lone tab separates sentences in wnut17train.conll
    "Lady\tB-person\nGaga\tI-person\nmeets\tO\nBob\tB-person\nAlice\tB-person\nat\tO\nMoMA\tI-location\n"
    "\n"
    "nothing\tO\nhere\tO\n"  # last sentence without a trailing blank line
)


def test_converter_extracts_bio_spans(converter: ModuleType):
    records = converter.convert_lines(CONLL_SAMPLE.splitlines(keepends=True), "dev")
    assert records == [
        {
            "id": "dev-0000",
            "text": "Empire State Building = ESB .",
            "entities": [{"type": "location", "text": "Empire State Building"}, {"type": "location", "text": "ESB"}],
        },
        {
            "id": "dev-0001",
            "text": "Lady Gaga meets Bob Alice at MoMA",
            # B-B of one type are two entities; an I- after O opens a new one (conlleval convention).
            "entities": [
                {"type": "person", "text": "Lady Gaga"},
                {"type": "person", "text": "Bob"},
                {"type": "person", "text": "Alice"},
                {"type": "location", "text": "MoMA"},
            ],
        },
        {"id": "dev-0002", "text": "nothing here", "entities": []},
    ]
    with pytest.raises(ValueError, match="expected 'token<TAB>tag'"):
        converter.convert_lines(["no tag here\n"], "dev")
    with pytest.raises(ValueError, match="not a BIO tag"):
        converter.convert_lines(["Paris\tX-location\n"], "dev")


def test_converter_cli_writes_every_split(converter: ModuleType, tmp_path: Path):
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name in converter.SPLITS.values():
        (source / name).write_text(CONLL_SAMPLE, encoding="utf-8")
    converter.main([str(source), str(out)])
    for split in converter.SPLITS:
        rows = _read_jsonl(out / f"{split}.jsonl")
        assert [r["id"] for r in rows] == [f"{split}-0000", f"{split}-0001", f"{split}-0002"]


def test_shipped_wnut17_matches_source_counts(converter: ModuleType):
    folder = DATA / "wnut17"
    source_md = (folder / "SOURCE.md").read_text(encoding="utf-8")
    expected = {"train": (3394, 1975), "dev": (1009, 836), "test": (1287, 1079)}
    for split, name in converter.SPLITS.items():
        # The original table row: | file | sentences | tokens | B- tags (entities) |
        row = re.search(rf"^\| {re.escape(name)} \| ([\d,]+) \| [\d,]+ \| ([\d,]+) \|$", source_md, re.MULTILINE)
        assert row is not None, name
        stated = tuple(int(g.replace(",", "")) for g in row.groups())
        assert stated == expected[split]
        rows = _read_jsonl(folder / f"{split}.jsonl")
        assert (len(rows), sum(len(r["entities"]) for r in rows)) == stated
        assert all(e["text"] in r["text"] for r in rows for e in r["entities"])


def test_shipped_gsm8k_and_scitldr_sizes():
    assert len(_read_jsonl(DATA / "gsm8k" / "train.jsonl")) == 2000
    sizes = {split: len(_read_jsonl(DATA / "scitldr" / f"{split}.jsonl")) for split in ("train", "dev", "test")}
    assert sizes == {"train": 1992, "dev": 619, "test": 618}


def test_a_number_of_thousands_of_digits_is_no_number_not_a_crash():
    """Past Python's limit on converting integers to text it raised ValueError: a crashed grader (every student's
    grade) or evaluation."""
    from llamalab.evaluation.answers import extract_number

    for text in ("1" * 5000 + "/3", "0." + "3" * 5000, "1/" + "7" * 4400, "#### " + "9" * 5000):
        assert extract_number(text) is None
    assert extract_number("so 1" + "0" * 5000 + " and then 42") == "42"  # the last number that is one
    # past the decimal context's 28 digits a number was rounded: two different answers read as one
    assert extract_number("#### 12345678901234567890123456789012") == "12345678901234567890123456789012"
    assert extract_number("#### 12345678901234567890123456789013") == "12345678901234567890123456789013"
    assert extract_number("#### 1234567890123456789012345678901.25") == "1234567890123456789012345678901.25"
    assert extract_number("#### -12345678901234567890123456789/1024") == "-12056327051986882705198688.2705078125"


def _boxed_reference(text: str) -> list[str]:
    """The first implementation: a scan from each box to its matching brace (right, but quadratic)."""
    contents = []
    for start in re.finditer(r"\\boxed\s*\{", text):
        depth, pos = 1, start.end()
        while pos < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            pos += 1
        if depth == 0:
            contents.append(text[start.end() : pos - 1])
    return contents


@pytest.mark.parametrize("seed", range(300))
def test_boxed_contents_in_one_pass_are_those_of_a_scan_from_each_box(seed):
    import random

    from llamalab.evaluation.answers import _boxed_contents

    rng = random.Random(seed)
    text = "".join(rng.choice(["\\boxed{", "\\boxed {", "{", "}", "1", " ", "x", "\\frac{"])
                   for _ in range(rng.randint(0, 40)))
    assert _boxed_contents(text) == _boxed_reference(text), text


def test_entity_answers_built_to_be_slow_are_read_in_a_bounded_number_of_tries():
    from llamalab.evaluation import answers
    from llamalab.evaluation.answers import parse_entities

    ann = '[{"type": "person", "text": "Ann"}]'
    assert parse_entities("[1," * 5000) is None  # each try went 1,000 levels deep, from each of 5,000 places
    assert parse_entities("[1," * 5000 + ann) is None  # 5,000 lists that might: the budget ends the tries
    assert parse_entities('[[{"type": "person", "text": "Ann"}]]') is None  # a list inside a list is no answer
    assert parse_entities("{" * 5000 + ann) == [("person", "Ann")]  # nor an object with a key
    assert parse_entities('[{"' * 7000 + ann) is None  # 7,000 places that might: the budget ends the tries
    assert parse_entities("[x] " * 10 + '[{"type": "person", "text": "Ann"}]') == [("person", "Ann")]
    assert answers._JSON_BUDGET == 1_000_000  # what the README says
