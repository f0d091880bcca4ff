"""Property tests: answer parsing and scoring do what the recorded methods text says.

`scoring_provenance` writes one sentence per answer type into every generation run's record (`parsing`), plus the
rule by which a plain-format answer that runs on into a made-up next example is cut (`run_on_rule`). Each section
below holds a small reference written from that sentence's words alone (not from the code), random adversarial
answers drawn with `random.Random(seed)`, and a check that the real parser agrees with the reference on every one.
Cases where the two once disagreed (the code, or the sentence, was wrong) are pinned by tests of their own.

Readings the sentences leave open, fixed here (and named where used):
- labels: "punctuation ignored" reads punctuation as a word break ("very-positive" is "very positive"); a
  verbalizer "starts" the first line word by word ("positively" does not start with "positive"); where two start
  it, or two are mentioned at one place, the longer one is meant (the parser's docstring says so); an accent
  written as a combining mark is the same text as the accented letter (NFC);
- numbers: "right after" a marker lets whitespace, bold (`**`) or `\\boxed{` stand between; the number "in" a box
  is its first; the value is compared in one canonical form (no thousands commas, no trailing zeros, an exact
  decimal as a decimal);
- text: accents are the combining diacritical marks (U+0300-U+036F) after canonical decomposition; "extra
  whitespace" is runs of whitespace and the ends; a word (for articles) is a run of letters/digits;
- SQL: the extracted query keeps its first semicolon ("up to" it), which the lenient form then drops;
- entities: types compared lower-cased and stripped, texts with whitespace collapsed (`parse_entities` docstring).
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections import Counter
from fractions import Fraction

import pytest

from llamalab.evaluation.answers import (
    exact_match,
    exact_match_strict,
    extract_number,
    extract_sql,
    normalize_sql,
    normalize_text,
)
from llamalab.evaluation.evaluate import EvalSettings, scoring_provenance
from llamalab.evaluation.metrics import score_generation
from llamalab.evaluation.parsing import parse_label
from llamalab.tasks.data import Example
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import AnswerSpec, Task

SEEDS = range(25)

# The sentences the references below were written from, word for word. If the methods text changes, this test
# fails first: re-read the references against the new words before changing these copies.
SENTENCES = {
    "label": "the label whose verbalizer starts the answer's first line (case and every character but letters, "
    "digits and their accents ignored), else the first one that line mentions, else the first one the whole answer "
    "mentions; the prompt lists the allowed labels",
    "number": "the number right after the first #### that has one, else right after the first 'answer is' or "
    "'answer:' that has one (either followed along an arithmetic chain to its result: '5 + 3 = 8' is 8), else the "
    "first in the last \\boxed{}, else the last number; a fraction without an exact decimal is kept as a fraction",
    "text": "exact_match after removing accents (the combining diacritical marks), reading full-width forms as "
    "ASCII, lower-casing, and removing punctuation (Unicode punctuation categories; symbols such as $ and + are "
    "kept), articles and extra whitespace; exact_match_strict after collapsing whitespace only",
    "entities": "a JSON list of {type, text}; invalid JSON counts as no entities",
    "sql": "the first fenced code block (else the text) up to the first semicolon outside quotes; exact_match after "
    "SQL normalisation (keywords and unquoted or back-quoted identifiers case-folded, the back-quotes dropped; "
    "spacing between tokens and the quote style of literals, in single or double quotes, normalised; a trailing "
    "semicolon dropped; no execution); exact_match_strict after collapsing whitespace only",
}
RUN_ON = {
    "opening": "the answer ends where a blank line is followed by the prompt's opening words",
    "later": "the answer ends at a blank line followed by the template's start up to its first literal line (its "
    "fields as text without a blank line, its line breaks as written)",
    "shaping": "the answer ends at a blank line followed by text without a blank line and then the template's first "
    "literal line",
}
RUN_ON_TAIL = " (the model starting another example): the rest is kept in the generation, not scored"


def _task(template: str = "Review: {{ text }}\nSentiment:", answer: dict | None = None) -> Task:
    return Task.model_validate({
        "name": "t",
        "data": {"files": [{"path": "x.jsonl", "split": "train"}]},
        "prompt": {"template": template},
        "answer": answer or {"labels": ["negative", "positive"]},
    })


def _parsing(task: Task, fmt: str = "plain") -> str:
    settings = EvalSettings(system="s", task="t", protocol="generate", format=fmt)
    return scoring_provenance(task, settings)["parsing"]


@pytest.mark.parametrize("answer_type", list(SENTENCES))
def test_the_recorded_sentences_are_the_ones_the_references_were_written_from(answer_type):
    answer = {"labels": ["a", "b"]} if answer_type == "label" else {"type": answer_type}
    assert _parsing(_task("{{ text }}", answer), fmt="chat") == SENTENCES[answer_type]


# ---------------------------------------------------------------------------------------------------------------
# Labels


def _label_words(text: str) -> list[str]:
    """Words with case and every character but letters and digits ignored: lower-cased, every run of letters/digits
    a word."""
    words, current = [], []
    for ch in unicodedata.normalize("NFC", text).casefold():  # one text, however its accents are encoded
        if ch.isalnum():
            current.append(ch)
        elif current:
            words.append("".join(current))
            current = []
    return [*words, "".join(current)] if current else words


def _first_mention(words: list[str], targets: dict[str, list[str]]) -> str | None:
    """The label mentioned first (at one place, the longer verbalizer)."""
    for start in range(len(words)):
        here = [(len(t), label) for label, t in targets.items() if words[start : start + len(t)] == t]
        if here:
            return max(here)[1]
    return None


def _reference_label(answer: str, verbalized: dict[str, str]) -> str | None:
    targets = {label: _label_words(v) for label, v in verbalized.items()}
    first_line = answer.partition("\n")[0]
    first = _label_words(first_line)
    starting = [(len(t), label) for label, t in targets.items() if t and first[: len(t)] == t]
    if starting:
        return max(starting)[1]
    # "else the first one the whole answer mentions": across the first line break too
    return _first_mention(first, targets) or _first_mention(_label_words(answer), targets)


LABEL_VOCAB = ["positive", "positively", "negative", "very", "not", "entailment", "neutral", "yes", "no", "card",
               "arrival", "négatif", "Straße", "great", "bad", "maybe"]
FILLER = ["Sure", "I think", "it is", "Answer:", "the", "label", "Label:", "is", "The answer is", "hmm", "négatifs",
          "negatif", "strasse", "ok", "1", "2nd", "notpositive"]


def _case(rng: random.Random, text: str) -> str:
    return rng.choice([text, text.lower(), text.upper(), text.title(), text.swapcase()])


def _verbalizers(rng: random.Random) -> dict[str, str]:
    while True:
        spoken: list[str] = []
        for _ in range(rng.randint(2, 5)):
            if spoken and rng.random() < 0.35:  # one label a word-prefix or word-suffix of another
                other = rng.choice(spoken)
                word = rng.choice(LABEL_VOCAB)
                spoken.append(f"{other} {word}" if rng.random() < 0.5 else f"{word} {other}")
            else:
                words = rng.sample(LABEL_VOCAB, rng.randint(1, 2))
                spoken.append(_case(rng, rng.choice([" ", "_", "-", " "]).join(words)))
        keys = [" ".join(_label_words(v)) for v in spoken]
        if len(set(keys)) == len(keys):  # labels that read the same are refused before a run
            return {f"l{i}": v for i, v in enumerate(spoken)}


def _say(rng: random.Random, verbalizer: str) -> str:
    """The verbalizer as a model might write it: any case, its spaces or joiners as other punctuation."""
    words = re.split(r"[\s_-]+", verbalizer)
    text = "".join(w + rng.choice([" ", "-", "_", ", ", "  ", ". ", "/"]) for w in words[:-1]) + words[-1]
    text = _case(rng, text)
    wrap = rng.choice(["", "", "**", '"', "'", "(", "*"])
    closing = {"(": ")"}.get(wrap, wrap)
    return wrap + text + closing + rng.choice(["", "", ".", "!", ":", "?", ","])


def _label_answer(rng: random.Random, verbalized: dict[str, str]) -> str:
    lines = []
    for _ in range(rng.randint(1, 3)):
        parts = []
        for _ in range(rng.choice([0, 1, 2, 3, 4])):
            if rng.random() < 0.45:
                parts.append(_say(rng, rng.choice(list(verbalized.values()))))
            else:
                parts.append(_case(rng, rng.choice(FILLER + LABEL_VOCAB)))
        lines.append(rng.choice(["", " ", "  "]) + " ".join(parts) + rng.choice(["", " ", "\t"]))
    return "\n".join(lines)


@pytest.mark.parametrize("seed", SEEDS)
def test_a_generated_label_is_the_one_the_sentence_names(seed):
    """First line starts with a verbalizer, else the first one it mentions, else the first the answer mentions:
    prefix labels, several labels on the first line, labels on a later line only, case and punctuation."""
    rng = random.Random(seed)
    spec_checked = False
    for _ in range(120):
        verbalized = _verbalizers(rng)
        answer = _label_answer(rng, verbalized)
        expected = _reference_label(answer, verbalized)
        assert parse_label(answer, verbalized) == expected, (answer, verbalized)
        if not spec_checked and expected is not None:  # scoring a row reads the label the same way
            spec = AnswerSpec(type="label", labels=list(verbalized), verbalizers=verbalized)
            row = score_generation(spec, expected, answer)
            assert (row["prediction"], row["parsed"], row["correct"]) == (expected, True, True)
            spec_checked = True


@pytest.mark.parametrize("seed", range(5))
def test_each_label_said_alone_in_any_case_and_punctuation_reads_as_itself(seed):
    rng = random.Random(seed)
    for _ in range(100):
        verbalized = _verbalizers(rng)
        for label, spoken in verbalized.items():
            assert parse_label(_say(rng, spoken), verbalized) == label
            assert parse_label(rng.choice(["Sure!", "Hmm.", ""]) + "\n" + _say(rng, spoken), verbalized) == label


def test_the_prompt_lists_the_allowed_labels():
    """A generated label task's prompt lists every allowed answer (its verbalizer), whatever the template."""
    rng = random.Random(0)
    for _ in range(50):
        verbalized = _verbalizers(rng)
        task = _task(rng.choice(["Review: {{ text }}\nSentiment:", "{{ text }}\nLabel:", "{{ text }}"]),
                     {"labels": list(verbalized), "verbalizers": verbalized})
        text = Prompter(task, None, "plain", list_labels=True).user_text(Example("e", {"text": "x y"}, "l0", "e"))
        listing = text.split("\n\n", 1)[0]
        assert all(v in listing for v in verbalized.values()), listing


def test_a_label_split_by_the_first_line_break():
    """The whole answer is searched after its first line, across that line break: "very\\npositive"."""
    verbalized = {"positive": "positive", "very_positive": "very positive"}
    answer = "Hmm, very\npositive"  # the first line names none; the whole answer names "very positive"
    assert parse_label(answer, verbalized) == _reference_label(answer, verbalized) == "very_positive"


def test_a_label_in_decomposed_unicode_reads_as_the_same_label():
    """An accent written as a combining mark is part of its letter, not punctuation splitting the word."""
    verbalized = {"neg": "négatif", "pos": "positif"}
    decomposed = unicodedata.normalize("NFD", "Négatif")
    assert _reference_label(decomposed, verbalized) == "neg"
    assert parse_label(decomposed, verbalized) == "neg"


def test_a_symbol_is_ignored_when_reading_a_label():
    """Every character but letters and digits is ignored, symbols (Unicode S*) as well as punctuation."""
    verbalized = {"A": "A", "B": "B"}
    assert unicodedata.category("+") == "Sm"
    assert parse_label("A+", verbalized) == _reference_label("A+", verbalized) == "A"


# ---------------------------------------------------------------------------------------------------------------
# Numbers


def _canonical(value: Fraction) -> str:
    """A value written once: an exact decimal without trailing zeros, else the reduced fraction."""
    n, d = value.numerator, value.denominator
    places = 0
    while 10**places % d:
        places += 1
        if places > 200:
            return f"{n}/{d}"
    scaled = abs(n) * 10**places // d
    digits = str(scaled).rjust(places + 1, "0")
    # no trailing zero to strip: `places` is the fewest that make the value whole
    whole, decimals = digits[: len(digits) - places], digits[len(digits) - places :]
    return ("-" if n < 0 else "") + whole + ("." + decimals if decimals else "")


def _written_number(rng: random.Random) -> tuple[str, Fraction]:
    """A number as a model writes it, and its value."""
    kind = rng.choice(["int", "int", "comma", "decimal", "lead", "fraction", "latex", "comma_decimal"])
    if kind == "int":
        value = Fraction(rng.randint(0, 10 ** rng.randint(1, 7)))
        text = str(value)
    elif kind == "comma":
        value = Fraction(rng.randint(1000, 10**10))
        text = f"{value.numerator:,}"
    elif kind in ("decimal", "comma_decimal"):
        places = rng.randint(1, 3)
        n = rng.randint(0, 10**8 if kind == "comma_decimal" else 10**5)
        value = Fraction(n, 10**places)
        whole = n // 10**places
        text = f"{whole:,}" if kind == "comma_decimal" else str(whole)
        text += "." + str(n % 10**places).rjust(places, "0") + "0" * rng.randint(0, 2)
    elif kind == "lead":
        n = rng.randint(1, 999)
        value, text = Fraction(n, 1000), "." + str(n).rjust(3, "0")
    else:
        a, b = rng.randint(0, 60), rng.randint(1, 12)
        value = Fraction(a, b)
        text = f"\\frac{{{a}}}{{{b}}}" if kind == "latex" else f"{a}{rng.choice(['/', ' / '])}{b}"
    plain = kind not in ("fraction", "latex", "lead")
    currency = plain and rng.random() < 0.2
    if currency:
        text = rng.choice("$€£") + text
    if rng.random() < 0.3:
        text, value = rng.choice(["-", "\u2212"]) + text, -value
    if plain and not currency and rng.random() < 0.1:
        text += "%"
    return text, value


def _chain(rng: random.Random) -> tuple[str, list[Fraction]]:
    """An arithmetic chain to its result ("5 + 3 = 8"), and its numbers in order (the result last)."""
    operands = [rng.randint(1, 99) for _ in range(rng.randint(2, 3))]
    ops = [rng.choice(["+", "-", "*", "x", "×"]) for _ in operands[1:]]
    result = operands[0]
    for op, b in zip(ops, operands[1:], strict=True):
        result = result + b if op == "+" else result - b if op == "-" else result * b
    text = str(operands[0]) + "".join(f" {op} {b}" for op, b in zip(ops, operands[1:], strict=True))
    written = ("-" if result < 0 else "") + ("$" if rng.random() < 0.2 else "") + str(abs(result))
    return f"{text} = {written}", [Fraction(v) for v in [*operands, result]]


NUMBER_FILLER = ["eggs", "so", "The", "total", "Step", "we", "get", "apples", "answers", "answered", "Answering",
                 "dollars", "left", "Hence", "(", ")", "!", "?", "is", "The answer isn't", "#", "cost"]
HASH = "####"
PHRASES = ["The answer is", "the answer is:", "Answer:", "answer:", "The final answer is", "ANSWER IS",
           "So the Answer is"]


def _number_text(rng: random.Random) -> tuple[str, list[dict]]:
    """A model's answer built from pieces whose meaning is known: the text, and its pieces."""
    pieces: list[dict] = []
    for _ in range(rng.randint(0, 9)):
        kind = rng.choice(["word", "word", "num", "num", "chain", "hash", "phrase", "box"])
        if kind == "word":
            pieces.append({"kind": "word", "text": rng.choice(NUMBER_FILLER), "numbers": []})
        elif kind == "num":
            text, value = _written_number(rng)
            if rng.random() < 0.15:
                text = f"**{text}**"
            pieces.append({"kind": "num", "text": text + rng.choice(["", "", "", "."]), "numbers": [value]})
        elif kind == "chain":
            text, numbers = _chain(rng)
            pieces.append({"kind": "chain", "text": text, "numbers": numbers})
        elif kind == "hash":
            pieces.append({"kind": "hash", "text": HASH, "numbers": []})
        elif kind == "phrase":
            pieces.append({"kind": "phrase", "text": rng.choice(PHRASES), "numbers": []})
        else:
            inner = rng.choice(["num", "text", "words", "words", "empty"])
            text, value = _written_number(rng)
            content = {"num": text, "text": f"\\text{{{text}}}", "words": rng.choice(["x", "eggs", "none"]),
                       "empty": ""}[inner]
            pieces.append({"kind": "box", "text": f"\\boxed{{{content}}}", "bare": inner == "num",
                           "numbers": [value] if inner in ("num", "text") else []})
    seps = []
    for piece, following in zip(pieces, pieces[1:], strict=False):
        if piece["kind"] == "hash" and following["kind"] == "chain":  # see test_the_number_right_after_hashes_...
            following.update(kind="num", text=following["text"].split(" ")[0], numbers=following["numbers"][:1])
        glue_ok = piece["kind"] == "hash" and following["kind"] != "hash" and not following["text"].startswith("#")
        seps.append(rng.choice([" ", " ", "\n", ". ", ", ", "; ", *([""] if glue_ok else [])]))
    for piece, sep in zip(pieces, seps, strict=False):
        piece["sep"] = sep
    return "".join(p["text"] + p.get("sep", "") for p in pieces), pieces


def _reference_number(pieces: list[dict]) -> Fraction | None:
    def right_after(i: int) -> Fraction | None:
        if i + 1 == len(pieces) or pieces[i]["sep"].strip():  # the last piece has no "sep"
            return None  # something other than whitespace comes first
        following = pieces[i + 1]
        if following["kind"] == "num":
            return following["numbers"][0]
        if following["kind"] == "chain":
            return following["numbers"][-1]  # an arithmetic chain to its result
        if following["kind"] == "box" and following["bare"]:
            return following["numbers"][0]
        return None

    for kind in ("hash", "phrase"):
        for i, piece in enumerate(pieces):
            if piece["kind"] == kind and (value := right_after(i)) is not None:
                return value
    boxes = [p for p in pieces if p["kind"] == "box"]
    if boxes and boxes[-1]["numbers"]:
        return boxes[-1]["numbers"][0]
    numbers = [n for p in pieces for n in p["numbers"]]
    return numbers[-1] if numbers else None


@pytest.mark.parametrize("seed", SEEDS)
def test_the_number_read_is_the_one_the_sentence_names(seed):
    """#### first, then 'answer is'/'answer:' (a chain to its result), then the last box, then the last number:
    headings without a number, decoys ('answers', "isn't"), commas, decimals, signs, fractions, currency."""
    rng = random.Random(seed)
    for _ in range(150):
        text, pieces = _number_text(rng)
        expected = _reference_number(pieces)
        assert extract_number(text) == (None if expected is None else _canonical(expected)), text


@pytest.mark.parametrize("seed", range(10))
def test_a_number_is_scored_right_exactly_when_its_value_is_the_golds(seed):
    """Gold and prediction compared by value, whatever the written form: a fraction without an exact decimal
    stays one (1/3 is neither 1, 3 nor 0.333), one with an exact decimal equals that decimal."""
    rng = random.Random(seed)
    spec = AnswerSpec(type="number")
    for _ in range(100):
        gold_text, gold = _written_number(rng)
        if rng.random() < 0.3:
            gold = Fraction(rng.randint(-9, 9) or 1, rng.choice([3, 6, 7, 9, 11]))
            gold_text = f"{gold.numerator * 2}/{gold.denominator * 2}"
        n, d = gold.numerator, gold.denominator
        text, predicted = rng.choice([
            (gold_text, gold),
            _written_number(rng),
            (f"{n * 3}/{d * 3}", gold),  # the same value written otherwise
            (f"{n}/{d}" if d > 1 else f"{n}.00", gold),
            (str(n), Fraction(n)),  # a fraction's numerator, or its denominator, is not the fraction
            (str(d), Fraction(d)),
            (f"{n}/{d + 1}", Fraction(n, d + 1)),
            (f"{float(gold):.3f}", Fraction(f"{float(gold):.3f}")),  # nor a rounding of it
        ])
        row = score_generation(spec, f"#### {gold_text}", f"So the answer is {text}.")
        assert row["gold_number"] == _canonical(gold)
        assert row["prediction"] == _canonical(predicted)
        assert row["correct"] is (predicted == gold), (gold_text, text)
        exact_decimal = 10**20 % predicted.denominator == 0
        assert ("/" in row["prediction"]) is not exact_decimal  # kept as a fraction exactly when no decimal is


@pytest.mark.parametrize("seed", range(5))
def test_an_answer_followed_by_its_working_is_that_answer(seed):
    """'The answer is 72 = 48 + 24.' is 72: no arithmetic leads from 72 to the '=' (it once read 48)."""
    rng = random.Random(seed)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    text = f"{rng.choice(PHRASES)} {a + b} = {a} + {b}."
    assert extract_number(text) == str(a + b)


def test_the_number_right_after_hashes_follows_its_chain_too():
    assert extract_number("#### 5 + 3 = 8") == "8"


def test_a_fraction_with_a_long_exact_decimal_is_written_as_that_decimal():
    """Over 30 places (the bound there once was) and still exact: the decimal."""
    assert extract_number("#### 1/2147483648") == _canonical(Fraction(1, 2**31)) == "0.0000000004656612873077392578125"


# ---------------------------------------------------------------------------------------------------------------
# Text


def _reference_text(s: str) -> str:
    """Accents removed (canonical decomposition, the combining diacritical marks U+0300-U+036F dropped),
    lower-cased, Unicode punctuation (P*) removed, the words a/an/the removed, whitespace runs collapsed and the
    ends stripped."""
    s = unicodedata.normalize("NFC", "".join(ch for ch in unicodedata.normalize("NFD", s)
                                             if not "\u0300" <= ch <= "\u036f"))
    # full-width forms as ASCII: U+FF01..U+FF5E are ASCII ! .. ~ shifted, U+3000 the ideographic space
    s = "".join(chr(ord(ch) - 0xFEE0) if "\uff01" <= ch <= "\uff5e" else " " if ch == "\u3000" else ch
                for ch in s).lower()
    s = "".join(ch for ch in s if not unicodedata.category(ch).startswith("P"))
    out, word = [], []
    for ch in s + " ":
        if ch.isalnum():
            word.append(ch)
            continue
        if word:
            out.append(" " if "".join(word) in ("a", "an", "the") else "".join(word))
            word = []
        out.append(ch)
    return " ".join("".join(out).split())


def _collapse(s: str) -> str:
    return " ".join(s.split())


TEXT_WORDS = ["Café", "cafe", "naïve", "Zoë", "the", "The", "THE", "a", "A", "an", "An", "theatre", "another", "ant",
              "New", "York", "Ångström", "Straße", "İstanbul", "piñata", "thé", "x", "1", "42", "3.5", "c++",
              "２０２０", "ＴＨＥ", "Ｃａｆé", "ｃ＋＋", "10²", "ﬁne"]
PUNCTUATION = [".", ",", "!", "?", "'", "’", "‘", "“", "”", "«", "»", "¿", "¡", "—", "–", "-", "_", "(", ")", "[", "]",
               "…", "·", "、", "。", "؟", "§", "¶", "@", "#", "%", "&", "*", "/", "\\", ":", ";", '"']
SYMBOLS = ["$", "+", "€", "©", "°", "=", "<", ">", "^", "`", "|", "~", "¬"]
SPACES = [" ", " ", "  ", "\t", "\n", "\xa0", " \n "]
COMBINING = ["\u0301", "\u0300", "\u0302", "\u0308", "\u0303", "\u0327", "\u030a"]


def _text_answer(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 7)):
        roll = rng.random()
        if roll < 0.55:
            parts.append(rng.choice(TEXT_WORDS))
        elif roll < 0.75:
            parts.append(rng.choice(PUNCTUATION))
        elif roll < 0.85:
            parts.append(rng.choice(SYMBOLS))
        else:
            parts.append(rng.choice("aeiouncAEIO") + rng.choice(COMBINING))  # an accent as a combining mark
        parts.append(rng.choice(SPACES + ["", ""]))
    return "".join(parts)


def _perturb(rng: random.Random, s: str) -> str:
    """s changed in ways the lenient match forgives (case, punctuation, accents, articles, spacing) or not."""
    for _ in range(rng.randint(1, 3)):
        change = rng.choice(["case", "punct", "accents", "article", "space", "symbol", "word", "nfd"])
        pos = rng.randint(0, len(s))
        if change == "case":
            s = s.swapcase() if rng.random() < 0.5 else s.upper()
        elif change == "punct":
            s = s[:pos] + rng.choice(PUNCTUATION) + s[pos:]
        elif change == "accents":
            s = "".join(ch for ch in unicodedata.normalize("NFD", s) if not unicodedata.combining(ch))
        elif change == "nfd":
            s = unicodedata.normalize(rng.choice(["NFD", "NFC"]), s)
        elif change == "article":
            s = s[:pos] + rng.choice([" the ", " A ", " an ", " the", "the "]) + s[pos:]
        elif change == "space":
            s = rng.choice(SPACES) + s.replace(" ", rng.choice(SPACES)) + rng.choice(SPACES)
        elif change == "symbol":
            s = s[:pos] + rng.choice(SYMBOLS) + s[pos:]
        else:
            s = s[:pos] + rng.choice(TEXT_WORDS) + s[pos:]
    return s


@pytest.mark.parametrize("seed", SEEDS)
def test_text_matches_are_the_ones_the_sentence_describes(seed):
    """Accents, case, punctuation (Unicode categories, not symbols), articles and whitespace forgiven by
    exact_match; only whitespace by exact_match_strict."""
    rng = random.Random(seed)
    lenient_hits = strict_hits = 0
    for _ in range(200):
        gold = _text_answer(rng)
        prediction = _perturb(rng, gold) if rng.random() < 0.8 else _text_answer(rng)
        assert normalize_text(prediction) == _reference_text(prediction), prediction
        expected = _reference_text(gold) == _reference_text(prediction)
        assert exact_match(gold, prediction) == float(expected), (gold, prediction)
        strict = _collapse(gold) == _collapse(prediction)
        assert exact_match_strict(gold, prediction) == float(strict), (gold, prediction)
        lenient_hits, strict_hits = lenient_hits + expected, strict_hits + strict
    assert lenient_hits > 20 and strict_hits > 3  # both outcomes were exercised


def test_a_text_answer_is_scored_against_any_of_its_references():
    rng = random.Random(1)
    spec = AnswerSpec(type="text")
    for _ in range(25):
        references = [_text_answer(rng) or "x" for _ in range(rng.randint(1, 3))]
        prediction = _perturb(rng, rng.choice(references))
        gold = json.dumps(references) if len(references) > 1 else references[0]
        row = score_generation(spec, gold, prediction)
        refs = [r.strip() for r in references] if len(references) > 1 else references
        assert row["correct"] is any(_reference_text(r) == _reference_text(prediction) for r in refs)
        assert row["exact_strict"] is any(_collapse(r) == _collapse(prediction) for r in refs)


@pytest.mark.parametrize(("gold", "prediction"), [("10²", "102"), ("ﬁne", "fine"), ("क्ष", "कष")])
def test_removing_accents_changes_nothing_else(gold, prediction):
    """Not compatibility folding ('10²' once matched '102', 'ﬁ' 'fi'), nor every combining mark (a virama)."""
    assert _reference_text(gold) != _reference_text(prediction)
    assert exact_match(gold, prediction) == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Entities


ENTITY_TYPES = ["person", "location", "PERSON", " Location ", "corporation", "product"]
ENTITY_TEXTS = ["Ann", "ann", "Ann  Lee", " Ann Lee ", "New\nYork", "Zoë", "Acme; Inc.", "[x]", "O'Brien"]


def _entities(rng: random.Random) -> list[tuple[str, str]]:
    return [(rng.choice(ENTITY_TYPES), rng.choice(ENTITY_TEXTS)) for _ in range(rng.choice([0, 1, 2, 3, 5]))]


def _as_json(rng: random.Random, entities: list[tuple[str, str]]) -> str:
    items = [{"type": t, "text": x, **({"start": 3} if rng.random() < 0.2 else {})} for t, x in entities]
    return json.dumps(items, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)


def _invalid_json(rng: random.Random, entities: list[tuple[str, str]]) -> str:
    """An answer with no valid JSON entity list in it."""
    valid = _as_json(rng, entities or [("person", "Ann")])
    form = rng.choice(["single", "comma", "cut", "missing", "number", "strings", "prose", "pairs"])
    if form == "single":
        return valid.replace('"', "'")
    if form == "comma":
        return valid[: valid.rindex("]")] + ",]"
    if form == "cut":
        return valid[: rng.randint(1, valid.rindex("]") - 1)] if len(valid) > 2 else "["
    if form == "missing":
        return json.dumps([{"type": t} for t, _ in entities or [("person", "Ann")]])
    if form == "number":
        return json.dumps([{"type": t, "text": 5} for t, _ in entities or [("person", "Ann")]])
    if form == "strings":
        return json.dumps([x for _, x in entities or [("person", "Ann")]])
    if form == "pairs":
        return json.dumps([[t, x] for t, x in entities or [("person", "Ann")]])
    return "I found Ann (a person) in New York."


def _entity_answer(rng: random.Random, gold: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str]] | None]:
    """A model's answer, and the entities the sentence says it predicts (None: invalid, no entities)."""
    entities = rng.choice([
        _entities(rng),
        list(gold),
        gold + gold[:1],  # one gold entity predicted twice: one right, one wrong
        gold[1:] + gold[:1] * 2,
        [(rng.choice([t.upper(), f" {t} "]), x.replace(" ", rng.choice(["  ", "\n", " "]))) for t, x in gold],
        [(t, x.lower()) for t, x in gold],
    ])
    if rng.random() < 0.3:
        text, meant = _invalid_json(rng, entities), None
    else:
        text, meant = _as_json(rng, entities), entities
        if rng.random() < 0.2:
            text = json.dumps({"entities": json.loads(text)})
    wrap = rng.choice(["plain", "prose", "fence", "after_invalid", "cite"])
    if wrap == "prose":
        text = f"Here are the entities: {text}\nHope this helps."
    elif wrap == "fence":
        text = f"```json\n{text}\n```"
    elif wrap == "after_invalid" and meant is not None:  # an invalid list first, then the answer
        text = _invalid_json(rng, [("person", "Bob")]) + "\nCorrected: " + text
    elif wrap == "cite":
        text = "See [1] and {\"note\": [2]}. " + text
    return text, meant


def _key(entity: tuple[str, str]) -> tuple[str, str]:
    return entity[0].strip().lower(), " ".join(entity[1].split())


@pytest.mark.parametrize("seed", SEEDS)
def test_entity_counts_are_those_of_the_json_list_or_of_no_entities(seed):
    rng = random.Random(seed)
    spec = AnswerSpec(type="entities")
    invalid = 0
    for _ in range(60):
        gold = _entities(rng)
        text, meant = _entity_answer(rng, gold)
        row = score_generation(spec, _as_json(rng, gold), text)
        gold_bag, pred_bag = Counter(map(_key, gold)), Counter(map(_key, meant or []))
        tp = sum((gold_bag & pred_bag).values())
        expected = {"tp": tp, "fp": sum(pred_bag.values()) - tp, "fn": sum(gold_bag.values()) - tp}
        assert {k: row[k] for k in expected} == expected, (gold, text)
        assert row["parsed"] is row["valid_json"] is (meant is not None), text
        invalid += meant is None
    assert invalid > 5


# ---------------------------------------------------------------------------------------------------------------
# SQL


def _sql_tokens(sql: str) -> list[str]:
    """SQL tokens, normalised: literals in one quote style (content exact), words case-folded."""
    tokens, i = [], 0
    while i < len(sql):
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif ch in "'\"":
            content, i = [], i + 1
            while i < len(sql):
                if sql[i] == ch and sql[i + 1 : i + 2] == ch:
                    content.append(ch)
                    i += 2
                elif sql[i] == ch:
                    i += 1
                    break
                else:
                    content.append(sql[i])
                    i += 1
            tokens.append("'" + "".join(content).replace("'", "''") + "'")
        elif ch.isalpha() or ch == "_":
            j = i
            while j < len(sql) and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            tokens.append(sql[i:j].casefold())
            i = j
        elif ch.isdigit():
            j = i
            while j < len(sql) and sql[j].isdigit():
                j += 1
            if sql[j : j + 1] == "." and sql[j + 1 : j + 2].isdigit():
                j += 1
                while j < len(sql) and sql[j].isdigit():
                    j += 1
            tokens.append(sql[i:j])
            i = j
        elif sql[i : i + 2] in ("<=", ">=", "<>", "!=", "||"):
            tokens.append(sql[i : i + 2])
            i += 2
        else:
            tokens.append(ch)
            i += 1
    return tokens


def _reference_sql_form(sql: str) -> list[str]:
    tokens = _sql_tokens(sql)
    return tokens[:-1] if tokens and tokens[-1] == ";" else tokens  # a trailing semicolon dropped


def _reference_extract(text: str) -> str:
    """The first fenced code block (else the text), up to its first semicolon outside quotes."""
    body = text
    start = text.find("```")
    if start >= 0:
        after = text[start + 3 :]
        newline, closing = after.find("\n"), after.find("```")
        if newline >= 0 and "`" not in after[:newline]:  # an info-string line, then the block
            block = after[newline + 1 :]
            body = block[: block.find("```")] if "```" in block else block
        elif closing >= 0:
            body = after[:closing]
    body = body.strip()
    quote, i = None, 0
    while i < len(body):
        ch = body[i]
        if quote:
            if ch == quote and body[i + 1 : i + 2] == quote:
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == ";":
            return body[: i + 1].strip()
        i += 1
    return body


LITERALS = ["Paris", "paris", "it's", "a;b", "x;y'z", 'say "hi"; bye', "O'Brien; Jr", "MiXeD Case", "", "--;"]


def _query(rng: random.Random) -> list[tuple[str, str]]:
    """A query as (kind, token) pairs: kw (keyword), id (identifier), lit (string literal), num, op."""
    cols = [("id", rng.choice(["name", "t.age", "Singer_ID", "country"]))]
    if rng.random() < 0.3:
        cols = [("kw", "COUNT"), ("op", "("), ("op", "*"), ("op", ")")]
    elif rng.random() < 0.3:
        cols += [("op", ","), ("id", "song_name")]
    query = [("kw", "SELECT"), *cols, ("kw", "FROM"), ("id", rng.choice(["singer", "Concert", "t"]))]
    for _ in range(rng.randint(0, 2)):
        value = ("lit", rng.choice(LITERALS)) if rng.random() < 0.7 else ("num", rng.choice(["3", "2.5", "10"]))
        query += [("kw", rng.choice(["WHERE", "AND", "OR"])), ("id", rng.choice(["city", "Age", "x1"])),
                  ("op", rng.choice(["=", ">=", "<>", "!=", "<", "LIKE"])), value]
    if rng.random() < 0.3:
        query += [("kw", "ORDER BY"), ("id", "age"), ("kw", rng.choice(["DESC", "asc"]))]
    if rng.random() < 0.2:
        query += [("kw", "LIMIT"), ("num", "1")]
    return query


def _write_query(rng: random.Random, query: list[tuple[str, str]], canonical: bool = False) -> str:
    out = ""
    for i, (kind, token) in enumerate(query):
        if kind == "lit":
            quote = "'" if canonical or rng.random() < 0.6 else '"'
            token = quote + token.replace(quote, quote * 2) + quote
        elif kind in ("kw", "id") and not canonical:
            token = _case(rng, token)
        if i:
            before = query[i - 1][1]
            tight = token in "(),*" or before in "(),*"
            out += " " if canonical else rng.choice([" ", "  ", "\n", "\t", *([""] if tight else [])])
        out += token
    return out


def _mutate(rng: random.Random, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A query that means something else: a literal's case, a number, an identifier, or a token dropped."""
    query = list(query)
    i = rng.randrange(len(query))
    kind, token = query[i]
    if kind == "lit":
        query[i] = (kind, token.swapcase() if token.swapcase() != token else token + "x")
    elif kind == "num":
        query[i] = (kind, token + "0")
    elif kind == "id":
        query[i] = (kind, token + "_2")
    else:
        del query[i]
    return query


def _sql_answer(rng: random.Random, query_text: str) -> str:
    if rng.random() < 0.3:
        query_text += ";"
    if rng.random() < 0.3:
        query_text += rng.choice(["; DROP TABLE t;", "\nSELECT 2;", " -- done; ok"])
    wrap = rng.choice(["plain", "fence", "fence", "bare_fence", "unclosed", "inline", "prose_fence", "two_fences"])
    if wrap == "fence":
        return f"```{rng.choice(['sql', 'SQL', 'sqlite', ' sql'])}\n{query_text}\n```"
    if wrap == "bare_fence":
        return f"```\n{query_text}\n```\nThis counts; done."
    if wrap == "unclosed":
        return f"```sql\n{query_text}"
    if wrap == "inline" and "\n" not in query_text:
        return f"Use ```{query_text}``` here."
    if wrap == "prose_fence":
        return f"Note; the query:\n```sql\n{query_text}\n```"
    if wrap == "two_fences":
        return f"```sql\n{query_text}\n```\nor\n```sql\nSELECT 1;\n```"
    return query_text


@pytest.mark.parametrize("seed", SEEDS)
def test_sql_answers_are_extracted_and_matched_as_the_sentence_says(seed):
    rng = random.Random(seed)
    spec = AnswerSpec(type="sql")
    hits = 0
    for _ in range(80):
        query = _query(rng)
        gold = _write_query(rng, query, canonical=True)
        answer_query = query if rng.random() < 0.6 else _mutate(rng, query)
        text = _sql_answer(rng, _write_query(rng, answer_query, canonical=rng.random() < 0.2))
        extracted = _reference_extract(text)
        assert extract_sql(text) == extracted, text
        row = score_generation(spec, gold, text)
        lenient = bool(extracted) and _reference_sql_form(extracted) == _reference_sql_form(gold)
        assert normalize_sql(extracted) == " ".join(_reference_sql_form(extracted)), extracted
        assert row["correct"] is lenient, (gold, text)
        assert row["exact_strict"] is (bool(extracted) and _collapse(extracted) == _collapse(gold)), (gold, text)
        assert row["parsed"] is bool(extracted)
        hits += lenient
    assert hits > 5


def test_a_back_quoted_identifier_is_case_folded_without_its_quotes():
    assert normalize_sql("SELECT `Name` FROM t") == normalize_sql("SELECT `name` FROM t") == "select name from t"


# ---------------------------------------------------------------------------------------------------------------
# Run-on answers (plain format)


def _blank_line_at(text: str, i: int) -> bool:
    """Whether a blank line starts at i: a line break, a line of spaces or tabs only, another line break."""
    return re.match(r"\n[ \t]*\n", text[i:]) is not None


def _blank_line_in(text: str, start: int, end: int) -> bool:
    return any(text[i] == "\n" and _blank_line_at(text, i) for i in range(start, end))


def _blank_line_starts(text: str) -> list[int]:
    return [i for i in range(len(text)) if text[i] == "\n" and _blank_line_at(text, i)]


def _after_blank_line(text: str, i: int) -> int:
    return i + re.match(r"\n[ \t]*\n", text[i:]).end()


def _reference_opening(generation: str, opening: str) -> str:
    for i in _blank_line_starts(generation):
        if generation[_after_blank_line(generation, i) :].lstrip().startswith(opening):
            return generation[:i]
    return generation


def _segments_to_first_line(template: str) -> list[tuple[str, object]]:
    """The template's start up to its first literal line: fields, line breaks (a count), then that line."""
    segments: list[tuple[str, object]] = []
    for part in re.split(r"(\{\{.*?\}\}|\{#.*?#\})", template):
        if part.startswith("{{"):
            segments.append(("field", None))
        elif part.startswith("{#") or not part:
            continue
        elif not part.strip():
            segments.append(("breaks", part.count("\n")))
        else:
            lead = part[: len(part) - len(part.lstrip())]
            segments.append(("breaks", lead.count("\n")))
            segments.append(("line", part.lstrip().split("\n")[0].rstrip()))
            return segments
    return segments


def _starts_with(text: str, pos: int, segments: list[tuple[str, object]]) -> bool:
    if not segments:
        return True
    (kind, value), rest = segments[0], segments[1:]
    if kind == "line":
        return text.startswith(value, pos)
    if kind == "field":  # some text without a blank line
        return any(not _blank_line_in(text, pos, end) and _starts_with(text, end, rest)
                   for end in range(pos + 1, len(text) + 1))
    # line breaks as written; spaces and tabs around them any
    end = pos
    while True:
        if text[pos:end].count("\n") == value and _starts_with(text, end, rest):
            return True
        if end == len(text) or text[end] not in " \t\n" or text[pos:end].count("\n") > value:
            return False
        end += 1


def _reference_later(generation: str, template: str) -> str:
    segments = _segments_to_first_line(template)
    for i in _blank_line_starts(generation):
        if _starts_with(generation, _after_blank_line(generation, i), segments):
            return generation[:i]
    return generation


def _reference_shaping(generation: str, line: str) -> str:
    for i in _blank_line_starts(generation):
        start = _after_blank_line(generation, i)
        found = generation.find(line, start)
        if found >= 0 and not _blank_line_in(generation, start, found):
            return generation[:i]
    return generation


TEMPLATES = [
    "Review: {{ text }}\nSentiment:",
    "Text of the review: {{ text }}\nIs it good?",
    "Passage:\n{{ text }}\n\nQuestion: {{ q }}\nAnswer:",
    "Q: {{ q }}\nA:",
    "{{ text }}\nSentiment:",
    "{{ text }} ->",
    "{{ text }}\n\nQuestion: {{ q }}\nAnswer:",
    "{{ text }}\n{{ q }}\nLabel:",
    "  {{ text }}\n  Summary:",
    "{# note #}{{ text }}\nTL;DR:",
    "{% if text %}{{ text }}\n\n{% endif %}Question: {{ q }}\nAnswer:",
    "{{ text -}}\n\nSentiment:",
    "{{ text }}",
]
RUN_WORDS = ["good", "bad", "film", "the", "Review", "->", "is", ":", "plot", "42", "ok.", "Sentiment:", "Answer:",
             "Question:", "TL;DR:", "Summary:", "Label:", "A:", "Q:"]


def _run_text(rng: random.Random, lines: int) -> str:
    return "\n".join(" ".join(rng.choice(RUN_WORDS) for _ in range(rng.randint(1, 4))) for _ in range(lines))


def _run_on(rng: random.Random, prompter: Prompter, list_labels: bool) -> str:
    answer = " " + _run_text(rng, rng.randint(1, 3))
    if rng.random() < 0.2:
        return answer
    fields = {"text": _run_text(rng, rng.randint(1, 2)), "q": _run_text(rng, 1)}
    made_up = prompter.user_text(Example("m", fields, "negative", "m"))
    change = rng.choice(["none", "none", "none", "no_blank", "case", "breaks", "blank_inside", "spaces"])
    if change == "case":
        made_up = made_up.swapcase()
    elif change == "breaks":
        made_up = made_up.replace("\n", rng.choice([" ", "\n\n", "\n \n"]), 1)
    elif change == "blank_inside":
        made_up = made_up.replace(fields["text"], fields["text"].replace(" ", "\n\n", 1), 1)
    elif change == "spaces":
        made_up = made_up.replace("\n", rng.choice([" \n", "\n\t", "\n  "]))
    separator = "\n" if change == "no_blank" else rng.choice(["\n\n", "\n \n", "\n\t\n", "\n\n\n", "\n\n  "])
    tail = rng.choice(["", " bad", " good\n\nReview: more"])
    return answer + separator + made_up + tail


@pytest.mark.parametrize("seed", SEEDS)
def test_a_plain_answer_is_cut_where_the_recorded_rule_says(seed):
    """The rule in the record (which of the three, from the template) applied to the generation: the answer is
    the text before the blank line that starts the made-up next example; the rest is not scored."""
    rng = random.Random(seed)
    for _ in range(25):
        template = rng.choice(TEMPLATES)
        list_labels = rng.random() < 0.2
        answer = {"labels": ["negative", "positive"], "verbalizers": {"positive": "good"}} if list_labels else {
            "type": rng.choice(["text", "number", "sql", "entities"])}
        task = _task(template, answer)
        parsing = _parsing(task)
        prompter = Prompter(task, None, "plain", list_labels=list_labels)
        rules = [name for name, rule in RUN_ON.items() if parsing.endswith("; " + rule + RUN_ON_TAIL)]
        assert len(rules) == (template != "{{ text }}" or list_labels), parsing
        assert _parsing(task, fmt="chat") == SENTENCES[answer.get("type", "label")]  # chat answers are not cut
        for _ in range(8):
            generation = _run_on(rng, prompter, list_labels)
            if not rules:
                expected = generation
            elif rules[0] == "opening":
                placeholder = "\ue000"
                rendered = prompter.user_text(Example("p", {"text": placeholder, "q": placeholder}, "negative", "p"))
                opening = rendered.lstrip().split("\n")[0].split(placeholder)[0]
                if list_labels:  # the listed labels are this prompt's content, not its opening words
                    opening = opening.split(" good")[0].split(" negative")[0]
                expected = _reference_opening(generation, opening.strip())
            elif rules[0] == "later":
                expected = _reference_later(generation, template)
            else:
                literals = re.split(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", template)
                first_line = next(part for part in literals if part.strip()).strip().split("\n")[0].strip()
                expected = _reference_shaping(generation, first_line)
            assert prompter.answer_text(generation) == expected, (template, generation)
            row = score_generation(AnswerSpec(type="number"), "1", prompter.answer_text(generation))
            assert row["prediction"] == extract_number(expected)  # what is scored is the cut answer


def test_a_blank_line_with_carriage_returns_ends_the_answer():
    """Windows line breaks ('\\r\\n\\r\\n') make a blank line too (once not, and the made-up example was scored)."""
    prompter = Prompter(_task("Review: {{ text }}\nSentiment:", {"type": "text"}), None, "plain")
    generation = " good\r\n\r\nReview: a bad film\r\nSentiment: bad"
    assert _reference_opening(generation.replace("\r", ""), "Review:") == " good"
    assert prompter.answer_text(generation) == " good"
