"""Greedy generation with a Hugging Face model: the hf backend's kernel.

The evaluation loop parses the generated answers (evaluation/parsing.py).
"""

from __future__ import annotations

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
