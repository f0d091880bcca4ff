"""What every inference backend provides to the evaluation loop.

Local backends (Hugging Face, llama.cpp, vLLM) take token ids, which the shared Prompter produced,
so every backend sees byte-identical prompts. Chat APIs take chat messages and cannot score
log-likelihoods: they answer classification tasks by generation and parsing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class ChoiceRequest:
    prompt_ids: list[int]
    choice_ids: list[list[int]]  # each non-empty
    # How the caller ranks the choices, per choice (offset, divisor): by (logprob - offset) / divisor (per token,
    # per character, calibrated). Lets reduced-precision scoring tell which calls are close; None: sum or mean.
    ranking: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class ChoiceScore:
    logprob: float  # summed over the choice's tokens
    n_tokens: int
    greedy: bool  # every token of the choice is the model's top prediction
    precision: str = "float32"  # the precision this score was computed in

    def score(self, normalize: str) -> float:
        return self.logprob / self.n_tokens if normalize == "mean" else self.logprob


@dataclass(frozen=True)
class Generation:
    text: str
    extra: dict[str, Any] = field(default_factory=dict)  # usage, cost, latency, cache hits (API backends)


ScoreCallback = Callable[[list[int], list[list[ChoiceScore]]], None]
GenerationCallback = Callable[[list[int], list[Generation]], None]
BatchSize = int | Literal["auto"]  # rows per batch, or as many as the device's free memory holds


class Backend(Protocol):
    name: str
    tokenizer: Any  # None for chat APIs: they receive messages, not token ids
    supports_loglikelihood: bool

    def provenance(self) -> dict[str, Any]:
        """Backend name, model file or revision, and settings that can change its outputs."""

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: BatchSize, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        """Log-likelihood of each choice given its prompt."""

    def generate(self, inputs: list, max_new_tokens: int, batch_size: BatchSize, on_batch: GenerationCallback) -> None:
        """Greedy continuations: `inputs` are token-id lists (local) or message lists (chat APIs)."""

    def close(self) -> None:
        """Release servers, connections or memory."""
