"""Shared pieces of the data-check property tests: a one-token-per-character tokenizer, and the files of a probe
task written to the lab's data/p/ folder."""

from __future__ import annotations

from pathlib import Path

SPLIT_NAMES = ("train", "dev", "test")


class CharTokenizer:
    """One token per character (code point), a BOS with special tokens; its end-of-text marker is one character
    (what `data check` loads, without a model)."""

    eos_token = "\x03"
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        def ids(t: str) -> list[int]:
            return ([1] if add_special_tokens else []) + [ord(c) for c in t]

        return {"input_ids": [ids(t) for t in text] if isinstance(text, list) else ids(text)}


def use_char_tokenizer(monkeypatch) -> None:
    """`data check` (and the CLI) get the CharTokenizer for any model."""
    import llamalab.models

    monkeypatch.setattr(llamalab.models, "resolve_model", lambda name, root=None: name)
    monkeypatch.setattr(llamalab.models, "load_tokenizer", lambda ref: CharTokenizer())


def write_split(root: Path, split: str, text: str) -> str:
    """Write one split's JSONL under data/p/ and return its entry for the task's `data.files`."""
    folder = root / "data" / "p"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.jsonl").write_text(text)
    return f"{{path: data/p/{split}.jsonl, split: {split}}}"
