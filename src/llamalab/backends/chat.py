"""Industry models behind an OpenAI-compatible chat API, as an evaluation backend.

Chat APIs return no log-likelihoods, so classification runs by generation with a constrained
prompt and parsing; the eval record says so. Requests go through the persistent request cache,
so an interrupted evaluation resumes without paying twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llamalab.backends.api import ApiModel, ChatClient, ChatRequest
from llamalab.backends.base import BatchSize, ChoiceRequest, Generation, GenerationCallback, ScoreCallback
from llamalab.config import LlamalabError


class ChatApiBackend:
    name = "api"
    tokenizer = None
    supports_loglikelihood = False

    def __init__(self, name: str, config: ApiModel, cache_path: Path):
        self.config = config
        # Errors name the model as the system label does (its key in lab.yaml).
        self.client = ChatClient(config.model_copy(update={"name": name}), cache_path)

    def provenance(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.config.base_url, "model": self.config.model,
                "decoding": {"temperature": 0.0}}

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: BatchSize, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        raise LlamalabError("chat APIs return no log-likelihoods: evaluate API models with --protocol generate")

    def generate(self, inputs: list, max_new_tokens: int, batch_size: BatchSize, on_batch: GenerationCallback) -> None:
        requests = [ChatRequest(messages=messages, max_tokens=max_new_tokens, temperature=0.0) for messages in inputs]

        prices = (self.config.input_price_per_mtok / 1e6, self.config.output_price_per_mtok / 1e6)

        def save(index: int, result) -> None:
            # List-price cost of this request, also for cache hits: what the example costs to evaluate.
            # Tokens billed for unusable answers before this one (retried) are part of what the example costs.
            billed_in = result.input_tokens + result.retried_input_tokens
            billed_out = result.output_tokens + result.retried_output_tokens
            extra = {"input_tokens": result.input_tokens, "output_tokens": result.output_tokens,
                     "retried_input_tokens": result.retried_input_tokens,
                     "retried_output_tokens": result.retried_output_tokens,
                     "cost_usd": round(billed_in * prices[0] + billed_out * prices[1], 8),
                     "latency_s": round(result.latency_s, 3), "cached": result.cached, "attempts": result.attempts,
                     "content_filtered": result.content_filtered,
                     **({"unmetered": True} if result.unmetered else {}),
                     **({} if result.truncated is None else {"truncated": result.truncated})}
            on_batch([index], [Generation(result.text, extra)])

        self.client.complete_many(requests, on_result=save)

    def close(self) -> None:
        self.client.close()
