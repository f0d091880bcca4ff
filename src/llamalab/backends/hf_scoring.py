"""Log-likelihood scoring of answer choices with a Hugging Face causal LM: the hf backend's kernel.

Each prompt runs through the model once; its KV cache is then shared by every choice, so a
77-label task costs one prompt pass plus one short pass over the choices' remaining tokens, where choices that
start with the same tokens share them (a trie, with tree attention).
Prompts are left-padded so the output layer runs on the last position only. The tokens every prompt starts with
(few-shot examples, a chat template's system turn and header) run once for the whole request list: each batch
starts from that prefix's KV cache and computes only its own tokens.

Precision "bfloat16" runs the passes under bfloat16 autocast (on the embedded model and a 2-core CPU with AMX,
barely faster than float32: 24.7 against 23.4 sentiment examples/s under the bound of that time, which was since
raised) and re-scores in float32 every example whose
best choice is not ahead of every other by more than `label_error` could move them, in the ranking the caller uses
(`ChoiceRequest.ranking`: per token, per character, calibrated), so predictions are those of float32 scoring as far
as that measured bound holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import torch

from llamalab.backends.base import BatchSize, ChoiceRequest, ChoiceScore
from llamalab.backends.hf_batches import batch_rows, length_batches

_MAX_CHOICE_POSITIONS = 2048
# A shared prefix shorter than this is not worth a pass of its own ("Review:" in a zero-shot prompt).
MIN_SHARED_PREFIX = 8


def label_error(n_tokens: int) -> float:
    """How far a bfloat16 label log-likelihood may be from float32's, growing with the label's tokens. Measured on
    the embedded model with bench/bfloat16_error.py, the largest of two CPUs: on a 2-core AMD EPYC (200 sentiment,
    40 intent test examples) 0.17 nats for 1 token, 0.32 for 3, 0.47 for 4, 0.52 for 5, 0.74 for 10; on a 2-core
    Intel Xeon with AMX (all 1,066 sentiment, 40 intent) 0.24 for 1 token (97% of the bound of that time, 0.25),
    0.38 for 3, 0.28 for 4, 0.41 for 5, 0.44 for 10, 0.58 for 11 (the most). This bound is 1.45x or more those.
    Measured, not proven."""
    return 0.2 + 0.15 * n_tokens


Precision = Literal["float32", "bfloat16"]


@torch.inference_mode()
def score_choices(
    model,
    requests: list[ChoiceRequest],
    batch_size: BatchSize = 16,
    on_batch: Callable[[list[int], list[list[ChoiceScore]]], None] | None = None,
    precision: Precision = "float32",
    share_prefix: bool = True,
    rechecked: list[int] | None = None,
) -> list[list[ChoiceScore]]:
    """Score every choice of every request; batches are length-sorted to waste little padding, and `auto` sizes
    them to the card's free memory (hf_batches).

    `on_batch(indices, scores)` is called after each batch (for progress and incremental saving). With
    `share_prefix`, the tokens all prompts start with are computed once (the scores are those of the full
    computation, to float rounding). In bfloat16, close calls are scored again in float32; their request indices
    are appended to `rechecked`.
    """
    for request in requests:
        if not request.prompt_ids or any(not c for c in request.choice_ids):
            raise ValueError("prompts and choices must have at least one token")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids))
    # Many multi-token choices make many trie nodes in the choice pass: cap them so its logits stay ~400 MB.
    most_nodes = max((len(_trie(r.choice_ids)) for r in requests), default=0)
    rows, budget = batch_rows(batch_size, model)
    rows = max(1, min(rows, _MAX_CHOICE_POSITIONS // max(1, most_nodes)))
    results: list[list[ChoiceScore] | None] = [None] * len(requests)
    shared = _shared_prefix(requests) if share_prefix else 0
    prefixes: dict[str, _Prefix] = {}

    def prefix(p: Precision) -> _Prefix | None:  # its KV cache at each precision, computed on first use
        if shared and p not in prefixes:
            prefixes[p] = _prefix_cache(model, requests[0].prompt_ids[:shared], p)
        return prefixes.get(p)

    for indices in length_batches(order, [len(r.prompt_ids) for r in requests], rows, budget):
        scores = _score_batch(model, [requests[i] for i in indices], precision, prefix(precision))
        if precision == "bfloat16":
            close = [k for k, s in enumerate(scores) if _too_close(s, requests[indices[k]].ranking)]
            if close:
                exact = _score_batch(model, [requests[indices[k]] for k in close], "float32", prefix("float32"))
                for k, s in zip(close, exact, strict=True):
                    scores[k] = s
                if rechecked is not None:
                    rechecked.extend(indices[k] for k in close)
        for i, s in zip(indices, scores, strict=True):
            results[i] = s
        if on_batch:
            on_batch(indices, scores)
    return results  # type: ignore[return-value]


def forward_tokens(requests: list[ChoiceRequest], share_prefix: bool = True) -> int:
    """The tokens `score_choices` runs through the model, padding left out: the shared prefix once, each prompt's
    own tokens, and each request's choice-trie nodes (a choice's first token is read off the prompt's last position).
    The compute floor of scoring is this many tokens' forward FLOPs."""
    if not requests:
        return 0
    shared = _shared_prefix(requests) if share_prefix else 0
    return shared + sum(len(r.prompt_ids) - shared + len(_trie(r.choice_ids)) for r in requests)


def _too_close(scores: list[ChoiceScore], ranking: tuple[tuple[float, float], ...] | None = None) -> bool:
    """Whether float32 could rank another choice above the best: each score may be off by `label_error` nats,
    so by that over its divisor in a ranking that divides (per token, per character). Without `ranking`, under
    both the summed and the per-token score."""
    if len(scores) < 2:
        return False
    rankings = [ranking] if ranking is not None else [
        tuple((0.0, 1.0) for _ in scores), tuple((0.0, float(s.n_tokens)) for s in scores)]
    for ways in rankings:
        values = [(s.logprob - offset) / divisor for s, (offset, divisor) in zip(scores, ways, strict=True)]
        best = max(range(len(values)), key=values.__getitem__)
        error = [label_error(s.n_tokens) / divisor for s, (_, divisor) in zip(scores, ways, strict=True)]
        if any(values[best] - values[j] <= error[best] + error[j] for j in range(len(values)) if j != best):
            return True
    return False


class _Prefix:
    """The KV cache of the tokens every prompt starts with (batch of one; expanded to each batch)."""

    def __init__(self, length: int, cache) -> None:
        self.length = length
        self.cache = cache
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def for_batch(self, size: int):
        for layer, (keys, values) in zip(self.cache.layers, self.layers, strict=True):
            layer.keys, layer.values = keys.expand(size, -1, -1, -1), values.expand(size, -1, -1, -1)
        return self.cache


def _shared_prefix(requests: list[ChoiceRequest]) -> int:
    """How many leading prompt tokens all requests share (each keeps at least one of its own); 0 if too few."""
    first, most = requests[0].prompt_ids, min(len(r.prompt_ids) for r in requests) - 1
    length = 0
    while length < most and all(r.prompt_ids[length] == first[length] for r in requests):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def _prefix_cache(model, ids: list[int], precision: Precision) -> _Prefix:
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    with autocast:
        out = model(input_ids=torch.tensor([ids], device=model.device), use_cache=True, logits_to_keep=1)
    return _Prefix(len(ids), out.cache)


def _score_batch(model, batch: list[ChoiceRequest], precision: Precision, prefix: _Prefix | None = None
                 ) -> list[list[ChoiceScore]]:
    device = model.device
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bfloat16"
                else contextlib.nullcontext())
    shared = prefix.length if prefix else 0
    lengths = [len(r.prompt_ids) for r in batch]
    width = max(lengths) - shared
    pad = 0
    input_ids = torch.tensor([[pad] * (width - n + shared) + r.prompt_ids[shared:] for r, n in zip(batch, lengths,
                                                                                               strict=True)],
                             device=device)
    own = torch.tensor([[0] * (width - n + shared) + [1] * (n - shared) for n in lengths], device=device)
    # The mask covers the shared prefix too; positions continue after it.
    mask = torch.cat([torch.ones(len(batch), shared, dtype=own.dtype, device=device), own], dim=1)
    positions = shared + (own.cumsum(dim=1) - 1).clamp(min=0)
    tokens = [c for r in batch for c in r.choice_ids]
    rest = max(len(t) for t in tokens) - 1
    with autocast:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=rest > 0 or shared > 0,
                    cache=prefix.for_batch(len(batch)) if prefix else None, logits_to_keep=1)
    first_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    # One row per (request, choice): the log-prob of its first token comes from the prompt pass.
    rows = [(b, c) for b, r in enumerate(batch) for c in range(len(r.choice_ids))]
    # Gathered in one indexing and read back once (on a GPU, one wait for the batch, not one per choice)
    where = torch.tensor([[b, tokens[k][0]] for k, (b, _) in enumerate(rows)], device=first_logprobs.device)
    firsts, argmax = first_logprobs[where[:, 0], where[:, 1]].tolist(), first_logprobs.argmax(dim=-1).tolist()
    row_logprob = [[firsts[k]] for k in range(len(rows))]
    row_greedy = [[argmax[b] == tokens[k][0]] for k, (b, _) in enumerate(rows)]

    if rest > 0:
        _score_rest(model, batch, tokens, rows, mask, lengths, out.cache, autocast, row_logprob, row_greedy)

    results: list[list[ChoiceScore]] = [[] for _ in batch]
    for k, (b, _) in enumerate(rows):
        results[b].append(ChoiceScore(sum(row_logprob[k]), len(tokens[k]), all(row_greedy[k]), precision))
    return results


def _trie(choices: list[list[int]]) -> list[tuple[int, ...]]:
    """The distinct proper prefixes of the choices (each choice without its last token), shortest first: the
    nodes of the choices' token trie. Choices that start alike share nodes, so each shared token is computed once."""
    return sorted({tuple(c[:k]) for c in choices for k in range(1, len(c))}, key=lambda node: (len(node), node))


def _score_rest(model, batch, tokens, rows, mask, lengths, cache, autocast, row_logprob, row_greedy) -> None:
    """Score every choice's tokens after the first in one pass over each request's trie of choice prefixes, on top
    of the prompt's KV cache: each node attends to the prompt and to its own ancestors only (tree attention), and its
    logits give the next token of every choice through it."""
    device = model.device
    tries = [_trie(r.choice_ids) for r in batch]
    width = max(len(t) for t in tries)
    where = [{node: i for i, node in enumerate(t)} for t in tries]
    ids = torch.tensor([[node[-1] for node in t] + [0] * (width - len(t)) for t in tries], device=device)
    positions = torch.tensor([[n + len(node) - 1 for node in t] + [n] * (width - len(t))
                              for t, n in zip(tries, lengths, strict=True)], device=device)
    kept = mask.shape[1]  # the cache: shared prefix and padded prompts
    allowed = torch.zeros(len(batch), 1, width, kept + width, dtype=torch.bool)
    allowed[:, 0, :, :kept] = mask[:, None, :].bool().cpu()
    for b, t in enumerate(tries):
        for i, node in enumerate(t):
            for depth in range(1, len(node) + 1):
                allowed[b, 0, i, kept + where[b][node[:depth]]] = True
        for i in range(len(t), width):  # padding: itself only, so no row of the attention is empty
            allowed[b, 0, i, kept + i] = True
    allowed = allowed.to(device)
    if model.config._attn_implementation != "sdpa":  # eager attention adds the mask
        allowed = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with autocast:
        logits = model(input_ids=ids, attention_mask=allowed, position_ids=positions, cache=cache,
                       use_cache=False).logits.float()
    normalizer, top = torch.logsumexp(logits, dim=-1).tolist(), logits.argmax(dim=-1).tolist()
    picks = [(k, b, where[b][tuple(tokens[k][:j])], tokens[k][j]) for k, (b, _) in enumerate(rows)
             for j in range(1, len(tokens[k]))]
    if not picks:
        return
    values = logits[[b for _, b, _, _ in picks], [i for _, _, i, _ in picks], [t for _, _, _, t in picks]].tolist()
    for (k, b, i, target), value in zip(picks, values, strict=True):
        row_logprob[k].append(value - normalizer[b][i])
        row_greedy[k].append(top[b][i] == target)
