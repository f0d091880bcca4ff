"""Parsing a generated answer back to a label (pure text: no model, no torch)."""

from __future__ import annotations

import re


def parse_label(text: str, verbalized: dict[str, str]) -> str | None:
    """The label whose verbalizer the answer starts with (else the first one it mentions), or None.

    Matching ignores case, surrounding whitespace and punctuation; the longest verbalizer wins
    so that "very positive" is not read as "positive".
    """
    answer = _words(text.split("\n", 1)[0]) or _words(text)
    by_length = sorted(verbalized.items(), key=lambda item: -len(item[1]))
    for label, words in by_length:
        target = _words(words)
        if target and answer.startswith(target) and (len(answer) == len(target) or answer[len(target)] == " "):
            return label
    best: tuple[int, str] | None = None
    for label, words in by_length:
        match = re.search(rf"(?<!\w){re.escape(_words(words))}(?!\w)", answer)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), label)
    return best[1] if best else None


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).replace("_", " ").split())
