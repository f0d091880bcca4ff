"""Convert the WNUT-17 CoNLL files into the JSONL the example lab ships.

Usage: python scripts/convert_wnut17.py INPUT_DIR OUTPUT_DIR

Each output line is ``{"id", "text", "entities"}``: ``text`` is the sentence's tokens joined by single spaces and
``entities`` lists ``{"type", "text"}`` for every BIO span in order, its text being its tokens joined the same way
(so it is always a substring of ``text``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

# Output split name -> file name in leondz/emerging_entities_17 (the annotated test file, as SOURCE.md explains).
SPLITS: dict[str, str] = {
    "train": "wnut17train.conll",
    "dev": "emerging.dev.conll",
    "test": "emerging.test.annotated",
}


def read_conll(lines: Iterable[str], source: str = "<input>") -> Iterator[list[tuple[str, str]]]:
    """Yield sentences as lists of (token, tag); whitespace-only lines separate sentences."""
    sentence: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        # wnut17train.conll separates most sentences with a lone tab rather than an empty line.
        if not line.strip():
            if sentence:
                yield sentence
                sentence = []
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) != 2 or not parts[0]:
            raise ValueError(f"{source}:{number}: expected 'token<TAB>tag', got {line!r}")
        sentence.append((parts[0], parts[1]))
    if sentence:
        yield sentence


def bio_spans(tokens: list[str], tags: list[str]) -> list[dict[str, str]]:
    """Entities of one sentence from its BIO tags, in order of appearance.

    An I- tag that does not continue an open span of the same type starts a new span (the conlleval convention).
    """
    spans: list[dict[str, str]] = []
    current: list[str] = []
    current_type: str | None = None

    def close() -> None:
        if current_type is not None:
            spans.append({"type": current_type, "text": " ".join(current)})

    for token, tag in zip(tokens, tags, strict=True):
        if tag == "O":
            close()
            current, current_type = [], None
            continue
        prefix, sep, entity_type = tag.partition("-")
        if not sep or prefix not in ("B", "I") or not entity_type:
            raise ValueError(f"not a BIO tag: {tag!r}")
        if prefix == "I" and entity_type == current_type:
            current.append(token)
        else:
            close()
            current, current_type = [token], entity_type
    close()
    return spans


def convert_lines(lines: Iterable[str], split: str, source: str = "<input>") -> list[dict[str, object]]:
    """Records ``{"id", "text", "entities"}`` for each sentence of a CoNLL file's lines."""
    records: list[dict[str, object]] = []
    for index, sentence in enumerate(read_conll(lines, source)):
        tokens = [token for token, _ in sentence]
        tags = [tag for _, tag in sentence]
        records.append({"id": f"{split}-{index:04d}", "text": " ".join(tokens), "entities": bio_spans(tokens, tags)})
    return records


def convert(input_dir: Path, output_dir: Path) -> dict[str, int]:
    """Write ``<split>.jsonl`` for every split into ``output_dir``; returns the sentence count of each."""
    output_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split, name in SPLITS.items():
        source = input_dir / name
        with source.open(encoding="utf-8") as handle:
            records = convert_lines(handle, split, str(source))
        with (output_dir / f"{split}.jsonl").open("w", encoding="utf-8", newline="\n") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[split] = len(records)
    return counts


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input_dir", type=Path, help="folder holding the original WNUT-17 CoNLL files")
    parser.add_argument("output_dir", type=Path, help="folder to write train/dev/test.jsonl into")
    args = parser.parse_args(argv)
    for split, count in convert(args.input_dir, args.output_dir).items():
        print(f"{split}: {count} sentences")


if __name__ == "__main__":
    main()
