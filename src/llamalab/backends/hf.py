"""Hugging Face transformers backend: batched, length-sorted, KV-cached scoring and greedy generation."""

from __future__ import annotations

from typing import Any

from llamalab.backends.base import Generation, GenerationCallback, ScoreCallback
from llamalab.evaluate.generation import generate_greedy
from llamalab.evaluate.scoring import ChoiceRequest, score_choices


class HFBackend:
    name = "hf"
    supports_loglikelihood = True

    def __init__(self, model, tokenizer, provenance: dict[str, Any]):
        self.model = model
        self.tokenizer = tokenizer
        self._provenance = provenance

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "dtype": str(self.model.dtype).removeprefix("torch."),
                "device": str(self.model.device), **self._provenance}

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: int, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        score_choices(self.model, requests, batch_size, on_batch=on_batch, precision=precision)

    def generate(self, inputs: list, max_new_tokens: int, batch_size: int, on_batch: GenerationCallback) -> None:
        def wrap(indices: list[int], texts: list[str]) -> None:
            on_batch(indices, [Generation(text) for text in texts])

        generate_greedy(self.model, self.tokenizer, inputs, max_new_tokens, batch_size, on_batch=wrap)

    def close(self) -> None:
        self.model = None
