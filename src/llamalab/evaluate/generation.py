"""Greedy generation with a Hugging Face model, and parsing a generated answer back to a label."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int = 16,
    batch_size: int = 16,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Greedy continuations of tokenized prompts, batched by length with left padding."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[str | None] = [None] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = [t for t in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} if isinstance(t, int)]
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in indices)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in indices], device=model.device)
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in indices],
                            device=model.device)
        output = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad, eos_token_id=stop or None,
        )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for i, text in zip(indices, texts, strict=True):
            results[i] = text
        if on_batch:
            on_batch(indices, texts)
    return results  # type: ignore[return-value]


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
