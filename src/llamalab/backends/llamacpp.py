"""llama.cpp backend for GGUF files on a CPU (optional extra: scripts/install-llama-server.sh).

Token ids come from the shared Prompter (the GGUF's own vocabulary, as converted for Hugging Face -- only the
tokenizer: the weights are never dequantized for this backend), so prompts are identical to the other backends'.
Each prompt is evaluated once; for each choice the context is rewound to the end of the prompt, so the prompt's KV
cache is shared by all labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from llamalab.backends.base import BatchSize, ChoiceRequest, ChoiceScore, Generation, GenerationCallback, ScoreCallback
from llamalab.backends.registry import backend_spec
from llamalab.config import LlamalabError


class LlamaCppBackend:
    name = "llama.cpp"
    supports_loglikelihood = True

    def __init__(self, gguf: Path, tokenizer, provenance: dict[str, Any], n_ctx: int = 2048):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LlamalabError(
                "the llama.cpp backend needs llama-cpp-python: run scripts/install-llama-server.sh"
            ) from None
        self.tokenizer = tokenizer
        self.gguf = gguf
        self._provenance = provenance
        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                         n_threads=os.cpu_count())
        # llama.cpp computes in the file's own types (e.g. Q4_1 weights): --precision does not apply.
        self.precision = f"GGUF {_file_type(self.llm) or 'file type unknown'}"

    def provenance(self) -> dict[str, Any]:
        import llama_cpp

        return {"backend": self.name, "llama_cpp_python": llama_cpp.__version__, "gguf": self.gguf.name,
                "precision": self.precision, **self._provenance}

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: BatchSize, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        backend_spec(self.name).check_precision(precision)
        # past its context llama.cpp fails with "failed to find a memory slot": refuse before scoring anything
        longest = max((len(r.prompt_ids) + max(len(c) for c in r.choice_ids) - 1 for r in requests), default=0)
        if longest > (context := self.llm.n_ctx()):
            raise LlamalabError(
                f"the llama.cpp backend's context holds {context} tokens: the longest prompt with its longest label "
                f"needs {longest}; shorten the prompts (e.g. fewer shots, or a smaller max_length), or use the hf "
                "backend")
        for i, request in enumerate(requests):
            on_batch([i], [self._score(request)])

    def _score(self, request: ChoiceRequest) -> list[ChoiceScore]:
        prompt = request.prompt_ids
        self.llm.reset()
        self.llm.eval(prompt)
        first = _log_softmax(self.llm.scores[len(prompt) - 1])
        scores = []
        for choice in request.choice_ids:
            logprobs, greedy = [float(first[choice[0]])], [int(first.argmax()) == choice[0]]
            if len(choice) > 1:
                self.llm.n_tokens = len(prompt)  # rewind: the prompt's cache stays, the last choice's goes
                self.llm.eval(choice[:-1])
                for j, token in enumerate(choice[1:]):
                    row = _log_softmax(self.llm.scores[len(prompt) + j])
                    logprobs.append(float(row[token]))
                    greedy.append(int(row.argmax()) == token)
            scores.append(ChoiceScore(sum(logprobs), len(choice), all(greedy), self.precision))
        return scores

    def generate(self, inputs: list, max_new_tokens: int, batch_size: BatchSize, on_batch: GenerationCallback) -> None:
        # llama.cpp would quietly cut the budget to what the context has left: refuse before generating anything
        longest, context = max((len(p) for p in inputs), default=0), self.llm.n_ctx()
        if longest + max_new_tokens > context:
            raise LlamalabError(
                f"the llama.cpp backend's context holds {context} tokens: the longest prompt ({longest} tokens) "
                f"leaves {max(context - longest, 0)} of the max_new_tokens {max_new_tokens} asked for; lower "
                "max_new_tokens (or shorten the prompts, e.g. fewer shots)")
        for i, prompt in enumerate(inputs):
            self.llm.reset()
            out = self.llm.create_completion(prompt=prompt, max_tokens=max_new_tokens, temperature=0.0)
            choice = out["choices"][0]  # finish_reason "length": the budget ran out before an end token
            on_batch([i], [Generation(choice["text"], {"truncated": choice.get("finish_reason") == "length"})])

    def close(self) -> None:
        self.llm.close()


def _file_type(llm) -> str | None:
    """The GGUF's general.file_type as llama.cpp names it (Q4_1, F16, BF16, ...), if it says."""
    import llama_cpp

    names = {getattr(llama_cpp, n): n.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
             for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_")}
    try:
        return names.get(int((llm.metadata or {})["general.file_type"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max()
    return logits - top - np.log(np.exp(logits - top).sum())
