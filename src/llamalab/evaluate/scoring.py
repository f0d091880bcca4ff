"""Log-likelihood scoring of answer choices with a Hugging Face causal LM.

Each prompt runs through the model once; its KV cache is then shared by every choice, so a
77-label task costs one prompt pass plus one short pass over the choices' remaining tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_MAX_CHOICE_ROWS = 256

@dataclass(frozen=True)
class ChoiceRequest:
    prompt_ids: list[int]
    choice_ids: list[list[int]]  # each non-empty


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # summed over the choice's tokens
    n_tokens: int
    greedy: bool  # every token of the choice is the model's top prediction

    def score(self, normalize: str) -> float:
        return self.logprob / self.n_tokens if normalize == "mean" else self.logprob


@torch.inference_mode()
def score_choices(
    model,
    requests: list[ChoiceRequest],
    batch_size: int = 16,
    on_batch: Callable[[list[int], list[list[ChoiceScore]]], None] | None = None,
) -> list[list[ChoiceScore]]:
    """Score every choice of every request; batches are length-sorted to waste little padding.

    `on_batch(indices, scores)` is called after each batch (for progress and incremental saving).
    """
    for request in requests:
        if not request.prompt_ids or any(not c for c in request.choice_ids):
            raise ValueError("prompts and choices must have at least one token")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids))
    # Many choices multiply the rows of the choice pass: cap rows so logits stay a few hundred MB.
    most_choices = max((len(r.choice_ids) for r in requests), default=1)
    batch_size = max(1, min(batch_size, _MAX_CHOICE_ROWS // most_choices))
    results: list[list[ChoiceScore] | None] = [None] * len(requests)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        scores = _score_batch(model, [requests[i] for i in indices])
        for i, s in zip(indices, scores, strict=True):
            results[i] = s
        if on_batch:
            on_batch(indices, scores)
    return results  # type: ignore[return-value]


def _score_batch(model, batch: list[ChoiceRequest]) -> list[list[ChoiceScore]]:
    device = model.device
    lengths = [len(r.prompt_ids) for r in batch]
    width = max(lengths)
    pad = 0
    input_ids = torch.tensor([r.prompt_ids + [pad] * (width - len(r.prompt_ids)) for r in batch], device=device)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths], device=device)
    out = model(input_ids=input_ids, attention_mask=mask, use_cache=True)
    last = out.logits[torch.arange(len(batch), device=device), torch.tensor(lengths, device=device) - 1]
    first_logprobs = torch.log_softmax(last.float(), dim=-1)

    # One row per (request, choice): the log-prob of its first token comes from the prompt pass.
    rows = [(b, c) for b, r in enumerate(batch) for c in range(len(r.choice_ids))]
    tokens = [batch[b].choice_ids[c] for b, c in rows]
    row_logprob = [[first_logprobs[b, tokens[k][0]].item()] for k, (b, _) in enumerate(rows)]
    row_greedy = [[int(first_logprobs[b].argmax()) == tokens[k][0]] for k, (b, _) in enumerate(rows)]

    rest = max(len(t) for t in tokens) - 1
    if rest > 0:
        # Feed each choice's tokens but the last through the shared cache to score the others.
        cache = out.cache
        cache.batch_select_indices(torch.tensor([b for b, _ in rows], device=device))
        cont = torch.tensor([t[:-1] + [pad] * (rest - len(t) + 1) for t in tokens], device=device)
        cont_mask = torch.tensor([[1] * (len(t) - 1) + [0] * (rest - len(t) + 1) for t in tokens], device=device)
        full_mask = torch.cat([mask[[b for b, _ in rows]], cont_mask], dim=1)
        positions = torch.tensor([[lengths[b] + j for j in range(rest)] for b, _ in rows], device=device)
        logits = model(
            input_ids=cont, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=False
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for k, t in enumerate(tokens):
            for j in range(1, len(t)):
                row_logprob[k].append(logprobs[k, j - 1, t[j]].item())
                row_greedy[k].append(int(logprobs[k, j - 1].argmax()) == t[j])

    results: list[list[ChoiceScore]] = [[] for _ in batch]
    for k, (b, _) in enumerate(rows):
        results[b].append(ChoiceScore(sum(row_logprob[k]), len(tokens[k]), all(row_greedy[k])))
    return results
