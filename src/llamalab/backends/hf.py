"""Hugging Face transformers backend: batched, length-sorted, KV-cached scoring and greedy generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamalab.backends.base import BatchSize, ChoiceRequest, Generation, GenerationCallback, ScoreCallback
from llamalab.backends.hf_generation import generate_greedy
from llamalab.backends.hf_scoring import forward_tokens, score_choices
from llamalab.config import LlamalabError
from llamalab.models import ModelRef, load_model, load_tokenizer


def load_hf(ref: ModelRef, adapter: Path | None = None):
    """The Hugging Face model (LoRA merged in, so inference costs the same as the base) and its tokenizer."""
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, adapter=adapter)
    if adapter is not None and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


class HFBackend:
    name = "hf"
    supports_loglikelihood = True

    def __init__(self, model, tokenizer, provenance: dict[str, Any]):
        self.model = model
        self.tokenizer = tokenizer
        self._provenance = provenance
        self.rechecked = 0  # examples the last `score_choices` scored again in float32 (close calls in bfloat16)
        self.largest_batch = 0  # rows in the largest batch of the last call (what `batch_size: auto` chose)

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "dtype": str(self.model.dtype).removeprefix("torch."),
                "device": str(self.model.device), **self._provenance}

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: BatchSize, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        self._check_context(max((len(r.prompt_ids) + max(len(c) for c in r.choice_ids) for r in requests),
                                default=0), "the longest prompt with its longest label")
        rechecked: list[int] = []
        self.largest_batch = 0

        def counted(indices: list[int], scores) -> None:
            self.largest_batch = max(self.largest_batch, len(indices))
            on_batch(indices, scores)

        score_choices(self.model, requests, batch_size, on_batch=counted, precision=precision, rechecked=rechecked)
        self.rechecked = len(rechecked)

    def forward_tokens(self, requests: list[ChoiceRequest]) -> int:
        """The tokens `score_choices` computes for `requests` (shared prefix once, no padding)."""
        return forward_tokens(requests)

    def generate(self, inputs: list, max_new_tokens: int, batch_size: BatchSize, on_batch: GenerationCallback) -> None:
        self._check_context(max((len(ids) for ids in inputs), default=0) + max_new_tokens,
                            f"the longest prompt with max_new_tokens {max_new_tokens}")
        self.largest_batch = 0

        def wrap(indices: list[int], texts: list[str], cut: list[bool]) -> None:
            self.largest_batch = max(self.largest_batch, len(indices))
            on_batch(indices, [Generation(text, {"truncated": c}) for text, c in zip(texts, cut, strict=True)])

        generate_greedy(self.model, self.tokenizer, inputs, max_new_tokens, batch_size, on_batch=wrap)

    def _check_context(self, longest: int, what: str) -> None:
        """Refuse positions past the model's context (its max_position_embeddings) before computing anything: a
        rotary model computes on past them without a word, and its scores there mean nothing (llama.cpp refuses)."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(context, int) and longest > context:
            raise LlamalabError(
                f"the model's context is {context} tokens (max_position_embeddings): {what} needs {longest}; shorten "
                "the prompts (fewer shots, a shorter template) or lower --max-new-tokens")

    def close(self) -> None:
        self.model = None
