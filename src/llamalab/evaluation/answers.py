"""Answer extraction and per-example scoring for generation tasks.

Numbers (GSM8K-style final answers), JSON entity lists (NER as span extraction) and summaries (ROUGE) are each
reduced to per-example scores; corpus metrics and their confidence intervals are computed from those scores in
:mod:`llamalab.evaluation.metrics`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np

Entity = tuple[str, str]
ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")

# ---------------------------------------------------------------------------------------------------------------
# Exact match


_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}  # ！..～ and 　 -> ASCII


def normalize_text(s: str) -> str:
    """Exact-match normal form (SQuAD-style).

    In order: remove accents (Unicode NFD, then drop the combining diacritical marks U+0300-U+036F, then NFC:
    "café" -> "cafe"; other marks, such as a Devanagari virama, and characters such as "²" stay); read full-width
    forms as their ASCII characters ("２０２０" -> "2020"); lower-case; replace every Unicode punctuation character
    (category P*) with nothing; replace the whole words "a", "an", "the" with a space; collapse runs of whitespace
    to one space and strip the ends.
    """
    decomposed = unicodedata.normalize("NFD", s)
    text = unicodedata.normalize("NFC", "".join(ch for ch in decomposed if not "\u0300" <= ch <= "\u036f"))
    text = text.translate(_FULL_WIDTH).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(gold: str, pred: str) -> float:
    """1.0 if gold and prediction have the same :func:`normalize_text` form, else 0.0."""
    return float(normalize_text(gold) == normalize_text(pred))


def normalize_whitespace(s: str) -> str:
    """The strict exact-match form: runs of whitespace collapsed to one space, ends stripped; nothing else."""
    return " ".join(s.split())


def exact_match_strict(gold: str, pred: str) -> float:
    """1.0 if gold and prediction are equal up to whitespace (case and punctuation count), else 0.0."""
    return float(normalize_whitespace(gold) == normalize_whitespace(pred))


# ---------------------------------------------------------------------------------------------------------------
# SQL (execution-free)

# A token of SQL: a quoted literal or identifier (doubled quotes escape), a number, a word, a two-character
# operator, or any other single non-space character.
_SQL_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\d+(?:\.\d+)?|[^\W\d]\w*|<=|>=|<>|!=|\|\||\S"""
)
# A fenced code block: its info string ("sql", "sqlite3", " sql") is the rest of the opening line; an answer cut
# off before the closing fence runs to the end.
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)|```(?:(?:sql|sqlite\w*|postgres\w*|mysql|t?sql|plsql)\s+)?(.*?)```",
                    re.DOTALL | re.IGNORECASE)


def normalize_sql(sql: str) -> str:
    """The SQL exact-match form, without executing anything.

    Keywords and unquoted identifiers are case-folded (SQL treats them case-insensitively); whitespace between
    tokens is normalised (``COUNT( * )`` = ``count(*)``); string literals in single or double quotes become
    single-quoted with their content kept exactly (so ``'Paris'`` = ``"Paris"`` but not ``'paris'``);
    back-quoted identifiers lose their quotes; a trailing semicolon is dropped. Punctuation is never removed.
    """
    out = []
    for token in _SQL_TOKEN.findall(sql.strip().rstrip(";").strip()):
        if token[0] in "'\"" and len(token) > 1:
            content = token[1:-1].replace(token[0] * 2, token[0])
            out.append("'" + content.replace("'", "''") + "'")
        elif token[0] == "`":
            out.append(token[1:-1].casefold())
        else:
            out.append(token.casefold())
    return " ".join(out)


def extract_sql(text: str) -> str:
    """The SQL query in a model's answer: the first fenced code block if there is one, else the text; cut after
    the first statement's semicolon. Empty when there is no query."""
    fenced = _FENCE.search(text)
    body = (next(g for g in fenced.groups() if g is not None) if fenced else text).strip()
    for token in _SQL_TOKEN.finditer(body):  # a semicolon inside a quoted literal does not end the statement
        if token.group() == ";":
            return body[: token.end()].strip()
    return body


# ---------------------------------------------------------------------------------------------------------------
# Numbers

# A number: optional minus (not after a digit/letter, so "5-3" and "COVID-19" are not negative), an optional
# currency sign, then comma-grouped thousands or plain digits with an optional decimal part, or a bare decimal
# part (".5"); an optional exponent ("1e3"); an optional denominator ("3/4", one number). The look-behind before
# the digits keeps "1.5" from also yielding "5" (and "12/25/2020" from yielding a fraction 25/2020).
_NUMBER = re.compile(
    r"(?:(?<![\w.])(?P<sign>-))?[$€£]?(?<![\d./])"
    r"(?:(?P<digits>\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?P<frac>\.\d+)?|(?P<lead>\.\d+))"
    r"(?P<exp>[eE][+-]?\d+(?!\w|\.\d))?"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d/]|\.\d))?"
)
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(\d+)\s*\}")  # LaTeX \frac{a}{b} -> a/b
# What may stand between an answer marker and its number: a colon or equals sign, bold, \boxed{.
_LEAD_IN = re.compile(r"\s*(?:[:=]\s*)?(?:\*\*\s*)?(?:\\boxed\s*\{\s*)?")
# An arithmetic chain after a number, up to its "=": "5 + 3 = 8", "2^3 = 8" and "10% of 50 = 5" answer 8, 8, 5;
# at least one operation, or a percentage ("20% = 0.2" is 0.2; "72 = 48 + 24" is 72, its working after it).
_CHAIN = re.compile(r"(?:%?(?:\s*(?:[-+*/×÷x^]|of\b)\s*\(?[$€£]?\d[\d,]*(?:\.\d+)?%?\)?)+|%)\s*=\s*")
_MARKER = re.compile(r"####")
_ANSWER_PHRASE = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\s*\{")
_BRACE = re.compile(r"[{}]")


_MAX_DIGITS = 4300  # Python's limit on converting integers to text


def _canonical(match: re.Match[str]) -> str | None:
    """The number in canonical form; None for one of over 4,300 digits (past Python's limit on converting
    integers to text: no answer is one, and it must not crash a grader or an evaluation)."""
    try:
        return _canonical_value(match)
    except ValueError:
        return None


def _canonical_value(match: re.Match[str]) -> str:
    if match["exp"] and abs(int(match["exp"][1:])) > _MAX_DIGITS:  # "1e5000": no answer is one (nor its 5000)
        raise ValueError("an exponent past the digits a number may have")
    value = Fraction(Decimal((match["digits"] or "").replace(",", "") + (match["frac"] or match["lead"] or "")
                             + (match["exp"] or "")))
    if match["den"] and int(match["den"]):
        value /= int(match["den"])
    if match["sign"]:
        value = -value
    if value.denominator == 1:
        return str(value.numerator)
    places = _decimal_places(value.denominator)
    if places is None:  # 1/3 has no exact decimal: kept as a fraction
        return f"{value.numerator}/{value.denominator}"
    # Exact: a denominator 2**a 5**b adds max(a, b) digits to the numerator's (the default context's 28
    # significant digits rounded longer numbers). normalize() drops trailing zeros; format "f" its exponent.
    with localcontext() as context:
        context.prec = len(str(abs(value.numerator))) + places + 1
        return format((Decimal(value.numerator) / Decimal(value.denominator)).normalize(), "f")


def _decimal_places(denominator: int) -> int | None:
    """The decimal places 1/denominator takes to write exactly (2**a 5**b: max(a, b)); None when it has no end."""
    twos = (denominator & -denominator).bit_length() - 1
    rest, fives = denominator >> twos, 0
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    return max(twos, fives) if rest == 1 else None


def _number_after(text: str, pos: int) -> str | None:
    """The number that starts right at `pos` (after a colon, bold or \\boxed{), following an arithmetic chain
    to its result ("5 + 3 = 8" is 8); None when something else comes first."""
    match = _NUMBER.match(text, _LEAD_IN.match(text, pos).end())
    while match is not None and (chain := _CHAIN.match(text, match.end())) and chain.end() > match.end():
        following = _NUMBER.match(text, chain.end())
        if following is None:
            break
        match = following
    return _canonical(match) if match else None


def _first_number(text: str) -> str | None:
    match = _NUMBER.search(text)
    return _canonical(match) if match else None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}``, braces matched so ``\\boxed{\\text{18}}`` yields ``\\text{18}``; in
    one pass over the braces (a scan from each box to its end took time growing with the square of the length)."""
    boxes = {start.end() for start in _BOXED.finditer(text)}  # where each box's contents start
    opened: list[int] = []
    contents: dict[int, str] = {}
    for brace in _BRACE.finditer(text):
        if brace.group() == "{":
            opened.append(brace.end())
        elif opened and (start := opened.pop()) in boxes:
            contents[start] = text[start : brace.start()]
    return [contents[start] for start in sorted(contents)]


def extract_number(text: str) -> str | None:
    """The final numeric answer of a model's free text, in canonical form: no thousands commas or currency sign,
    no trailing zeros after the point ("$1,234.50" -> "1234.5", "42.0" -> "42", "-0" -> "0", "1e3" -> "1000",
    "3/4" -> "0.75"; a fraction without an exact decimal stays one: "2/6" -> "1/3").

    The number right after the first ``####`` marker that has one wins (a model running on past its answer
    writes more; a heading "#### Step 2" has none); else the number right after the first "answer is" /
    "answer:" phrase that has one (an arithmetic chain to its result: "answer: 5 + 3 = 8" is 8); else the first
    number inside the last ``\\boxed{}``; else the last number in the text. Units, currency signs, percent
    signs, thousands separators (also LaTeX ``{,}``), ``\\frac{a}{b}`` and sentence-final periods are handled.
    Returns None when the text holds no number.
    """
    text = _FRAC.sub(r"\1/\2", text.replace("{,}", ",").replace("\u2212", "-"))
    for marker in (*_MARKER.finditer(text), *_ANSWER_PHRASE.finditer(text)):
        if (number := _number_after(text, marker.end())) is not None:
            return number
    boxed = _boxed_contents(text)
    if boxed and (number := _first_number(boxed[-1])) is not None:
        return number
    matches = list(_NUMBER.finditer(text))
    return _canonical(matches[-1]) if matches else None


# ---------------------------------------------------------------------------------------------------------------
# Entities

# Where an answer, or a value around one, can start: any list, or an object with a key (`{` before anything else
# starts no JSON value). Each failed try costs the decoder time growing with its position (its error counts lines).
_JSON_START = re.compile(r'\[|\{\s*"')
_NESTED = re.compile(r"[\[{\s]+")
_JSON_BUDGET = 1_000_000  # what the tries may cost in all, in characters of text decoded or counted (~20 ms)


def _normalize_entity(entity_type: str, text: str) -> Entity:
    return entity_type.strip().lower(), " ".join(text.split())


def _as_entities(value: object) -> list[Entity] | None:
    if isinstance(value, dict):
        value = value.get("entities")
    if not isinstance(value, list):
        return None
    entities = []
    for item in value:
        if not isinstance(item, dict):
            return None
        entity_type, text = item.get("type"), item.get("text")
        if not isinstance(entity_type, str) or not isinstance(text, str):
            return None
        entities.append(_normalize_entity(entity_type, text))
    return entities


def parse_entities(text: str) -> list[Entity] | None:
    """Parse a model's JSON entity answer into normalised (type, text) pairs, or None if it is invalid.

    Accepts a list ``[{"type": ..., "text": ...}, ...]`` or ``{"entities": [...]}``, anywhere in the text: prose
    or a ```` ```json ```` fence around it is skipped, as is any JSON value of another shape before it (tries
    stop once they may have cost a million characters of decoding: a text built to be slow gets no more time;
    each failed try is charged the whole text). Extra keys
    are ignored. Types are lower-cased and stripped; entity text is whitespace-collapsed. Anything else (no JSON,
    single-quoted pseudo-JSON, an item missing "type" or "text") gives None, which scorers treat as predicting no
    entities.
    """
    decoder = json.JSONDecoder()
    pos, cost = 0, 0
    # Each try may read to the text's end, and a failed one counts lines from its start: a budget keeps a text
    # built to be slow from taking time growing with the square of its length.
    while cost < _JSON_BUDGET and (start := _JSON_START.search(text, pos)) is not None:
        try:
            value, end = decoder.raw_decode(text, start.start())
        except json.JSONDecodeError:
            pos, cost = start.start() + 1, cost + len(text)  # read up to the end, at most; its lines counted
            continue
        except RecursionError:  # nested deeper than Python's decoder goes: not an answer, nor is any value inside
            pos, cost = _NESTED.match(text, start.start()).end(), cost + len(text)
            continue
        entities = _as_entities(value)
        if entities is not None:
            return entities
        # Skip past the whole value: a list nested in some other object is not the answer.
        pos, cost = end, cost + end - start.start()
    return None


def _example_counts(gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity] | None]) -> np.ndarray:
    """Per-example (tp, fp, fn) as an (n, 3) int array; matching is by multiset of normalised pairs."""
    if len(gold) != len(pred):
        raise ValueError(f"length mismatch: {len(gold)} gold vs {len(pred)} predicted examples")
    counts = np.zeros((len(gold), 3), dtype=np.int64)
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        gold_bag = Counter(_normalize_entity(*e) for e in g)
        pred_bag = Counter(_normalize_entity(*e) for e in (p or ()))
        tp = sum((gold_bag & pred_bag).values())
        counts[i] = (tp, pred_bag.total() - tp, gold_bag.total() - tp)
    return counts


def _micro_prf(sums: np.ndarray) -> np.ndarray:
    """Micro precision, recall and F1 from summed (tp, fp, fn) along the last axis; 0.0 where undefined."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros(np.shape(num)), where=den > 0)

    return np.stack([ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)], axis=-1)


def entity_scores(gold: Sequence[Sequence[Entity]], pred: Sequence[Sequence[Entity] | None]) -> dict[str, object]:
    """Strict entity-level micro precision / recall / F1 over examples.

    A predicted (type, text) pair is a true positive when an identical gold pair of the same example is still
    unmatched (multiset matching, so a duplicated prediction of a single gold entity is one tp and one fp).
    ``None`` predictions (invalid output) count as predicting no entities. Metrics are 0.0 when undefined.
    Returns precision, recall, f1, total tp/fp/fn, n, n_invalid and ``per_example``: a list of {tp, fp, fn}.
    """
    counts = _example_counts(gold, pred)
    precision, recall, f1 = _micro_prf(counts.sum(axis=0)).tolist()
    tp, fp, fn = (int(c) for c in counts.sum(axis=0))
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n": len(gold),
        "n_invalid": sum(p is None for p in pred),
        "per_example": [{"tp": int(a), "fp": int(b), "fn": int(c)} for a, b, c in counts],
    }


# ---------------------------------------------------------------------------------------------------------------
# ROUGE


def rouge_scores(references: Sequence[str | Sequence[str]], predictions: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/L F-measures from Google's ``rouge-score`` package, with Porter stemming.

    A reference may be a list of strings (several TL;DRs of one paper): each ROUGE type then takes its best
    F-measure over them (``RougeScorer.score_multi``). The package's tokenizer keeps only ASCII letters and
    digits, so an empty or non-Latin prediction scores 0.0.
    """
    # Deferred: rouge_score imports all of nltk, about a second that exact-match and NER scoring should not pay.
    from rouge_score import rouge_scorer

    if len(references) != len(predictions):
        raise ValueError(f"length mismatch: {len(references)} references vs {len(predictions)} predictions")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    out: dict[str, list[float]] = {name: [] for name in ROUGE_TYPES}
    for reference, prediction in zip(references, predictions, strict=True):
        if isinstance(reference, str):
            scores = scorer.score(reference, prediction)
        else:
            scores = scorer.score_multi(list(reference), prediction)
        for name in ROUGE_TYPES:
            out[name].append(float(scores[name].fmeasure))
    return out
