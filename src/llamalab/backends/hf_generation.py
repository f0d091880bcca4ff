"""Greedy generation with a Hugging Face model: the hf backend's kernel.

The evaluation loop parses the generated answers (evaluation/parsing.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from llamalab.backends.base import BatchSize
from llamalab.backends.hf_batches import batch_rows, length_batches


@torch.inference_mode()
def generate_greedy(
    model,
    tokenizer,
    prompts: list[list[int]],
    max_new_tokens: int = 16,
    batch_size: BatchSize = 16,
    on_batch: Callable[[list[int], list[str], list[bool]], None] | None = None,
) -> list[str]:
    """Greedy continuations of tokenized prompts, batched by length with left padding (`auto`: as many as the
    card's free memory holds), stopping at any of the model's end tokens; `on_batch` also hears which were cut
    off (the budget spent, no end token).

    Greedy means the argmax at every step: the model's own generation_config.json (a repetition penalty, a
    no-repeat n-gram size, forced or suppressed tokens) is set aside, since `generate` would otherwise merge it in.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[str | None] = [None] * len(prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, budget = batch_rows(batch_size, model)
    lengths = [len(p) + max_new_tokens for p in prompts]  # what the KV cache holds by the last step
    with _greedy_config(model, tokenizer, pad) as stop:
        for indices in length_batches(order, lengths, rows, budget):
            width = max(len(prompts[i]) for i in indices)
            ids = torch.tensor([[pad] * (width - len(prompts[i])) + prompts[i] for i in indices],
                               device=model.device)
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in indices],
                                device=model.device)
            output = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens)
            texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for i, text in zip(indices, texts, strict=True):
                results[i] = text
            if on_batch:
                new = output[:, width:]
                ended = torch.isin(new, torch.tensor(stop, device=new.device)).any(dim=1) if stop else None
                cut = [new.shape[1] >= max_new_tokens and (ended is None or not bool(ended[row]))
                       for row in range(len(indices))]
                on_batch(indices, texts, cut)
    return results  # type: ignore[return-value]


@contextlib.contextmanager
def _greedy_config(model, tokenizer, pad: int):
    """The model's generation config, for the block, replaced by plain greedy decoding that stops at the tokenizer's
    end token, `<|im_end|>` and the model's own end tokens."""
    from transformers import GenerationConfig

    own = model.generation_config
    ends = own.eos_token_id if isinstance(own.eos_token_id, list) else [own.eos_token_id]
    stop = sorted({t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"), *ends)
                   if isinstance(t, int) and t >= 0})
    model.generation_config = GenerationConfig(do_sample=False, num_beams=1, pad_token_id=pad,
                                               eos_token_id=stop or None, bos_token_id=own.bos_token_id)
    try:
        yield stop
    finally:
        model.generation_config = own
