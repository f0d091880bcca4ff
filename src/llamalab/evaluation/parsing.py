"""Parsing a generated answer back to a label (pure text: no model, no torch)."""

from __future__ import annotations

import re
import unicodedata


def parse_label(text: str, verbalized: dict[str, str]) -> str | None:
    """The label whose verbalizer the answer's first line starts with, else the first one that line mentions,
    else the first one the whole answer mentions ("Sure!\\nPositive"), or None.

    Matching ignores case, surrounding whitespace and every character but letters, digits and their marks
    (accents, in either Unicode form); the longest verbalizer wins so that "very positive" is not read as
    "positive". A verbalizer with no letters or digits ("+") matches nothing: see `unparseable_verbalizers`.
    """
    targets = sorted(((label, _words(words)) for label, words in verbalized.items() if _words(words)),
                     key=lambda item: -len(item[1]))
    first_line = _words(text.split("\n", 1)[0])
    for label, target in targets:
        if first_line.startswith(target) and (len(first_line) == len(target) or first_line[len(target)] == " "):
            return label
    for answer in (first_line, _words(text)):
        best: tuple[int, str] | None = None
        for label, target in targets:
            match = re.search(rf"(?<!\w){re.escape(target)}(?!\w)", answer)
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), label)
        if best:
            return best[1]
    return None


def unparseable_verbalizers(verbalized: dict[str, str]) -> str | None:
    """Why generated answers could not be read as these labels (a verbalizer without letters or digits, or two
    that read the same once case and punctuation are ignored), or None."""
    seen: dict[str, str] = {}
    for label, words in verbalized.items():
        key = _words(words)
        if not key:
            return f"label {label!r} is written {words!r}, which has no letters or digits to find in an answer"
        if key in seen:
            return f"labels {seen[key]!r} and {label!r} read the same in an answer ({key!r})"
        seen[key] = label
    return None


def _words(text: str) -> str:
    """Case-folded letters and digits (with their marks: "né" as one character or two), one space between words."""
    text = unicodedata.normalize("NFC", text.casefold())
    return " ".join("".join(ch if ch.isalnum() or unicodedata.category(ch).startswith("M") else " "
                            for ch in text).split())
