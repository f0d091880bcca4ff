"""vLLM backend for GPUs (optional extra: pip install 'llamalab[vllm]').

Prompts go in as token ids from the shared Prompter, so vLLM sees exactly what the other backends
see. Label scores come from prompt log-probs of prompt + choice, the whole prompt computed for each choice: vLLM
does not read its prefix cache for requests that ask for prompt log-probs, and with the cache on, prompt log-probs
have been reported stale (vllm-project/vllm#42019), so it is off. Written for bench/vllm_eval.py on a GPU machine;
not yet run by this project (README).
"""

from __future__ import annotations

from typing import Any

from llamalab.backends.base import BatchSize, ChoiceRequest, ChoiceScore, Generation, GenerationCallback, ScoreCallback
from llamalab.backends.registry import backend_spec
from llamalab.config import LlamalabError


class VLLMBackend:
    name = "vllm"
    supports_loglikelihood = True

    def __init__(self, model_path: str, tokenizer, provenance: dict[str, Any], adapter: str | None = None):
        try:
            from vllm import LLM
        except ImportError:
            raise LlamalabError("the vllm backend needs vLLM on a GPU machine: pip install 'llamalab[vllm]'") from None
        self.tokenizer = tokenizer
        self._provenance = provenance
        self._lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest("adapter", 1, adapter)
        self.llm = LLM(model=model_path, tokenizer=model_path, seed=0, enable_prefix_caching=False,
                       enable_lora=adapter is not None)
        # vLLM picks the dtype (dtype="auto": bfloat16 or float16 for float32 checkpoints): --precision does not apply.
        self.precision = _dtype(self.llm)

    def provenance(self) -> dict[str, Any]:
        import vllm

        return {"backend": self.name, "vllm": vllm.__version__, "precision": self.precision, **self._provenance}

    def score_choices(
        self, requests: list[ChoiceRequest], batch_size: BatchSize, on_batch: ScoreCallback, precision: str = "float32"
    ) -> None:
        backend_spec(self.name).check_precision(precision)
        from vllm import SamplingParams

        # prompt_logprobs=0 returns the log-prob of each actual prompt token (plus none of the others).
        params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
        chunk = (16 if batch_size == "auto" else batch_size) * 8  # progress steps: vLLM schedules its own batches
        for start in range(0, len(requests), chunk):
            indices = list(range(start, min(start + chunk, len(requests))))
            flat = [(i, choice) for i in indices for choice in requests[i].choice_ids]
            prompts = [{"prompt_token_ids": requests[i].prompt_ids + choice} for i, choice in flat]
            outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora)
            scores: dict[int, list[ChoiceScore]] = {i: [] for i in indices}
            for (i, choice), output in zip(flat, outputs, strict=True):
                offset = len(requests[i].prompt_ids)
                logprobs = [output.prompt_logprobs[offset + j][token].logprob for j, token in enumerate(choice)]
                greedy = all(output.prompt_logprobs[offset + j][token].rank == 1 for j, token in enumerate(choice))
                scores[i].append(ChoiceScore(sum(logprobs), len(choice), greedy, self.precision))
            on_batch(indices, [scores[i] for i in indices])

    def generate(self, inputs: list, max_new_tokens: int, batch_size: BatchSize, on_batch: GenerationCallback) -> None:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        chunk = (16 if batch_size == "auto" else batch_size) * 8  # progress steps: vLLM schedules its own batches
        for start in range(0, len(inputs), chunk):
            indices = list(range(start, min(start + chunk, len(inputs))))
            outputs = self.llm.generate([{"prompt_token_ids": inputs[i]} for i in indices], params, use_tqdm=False,
                                        lora_request=self._lora)
            on_batch(indices, [Generation(o.outputs[0].text, {"truncated": o.outputs[0].finish_reason == "length"})
                               for o in outputs])

    def close(self) -> None:
        self.llm = None


def _dtype(llm) -> str:
    """The dtype vLLM chose for the weights and activations ("auto" if this vLLM version hides it)."""
    try:
        return str(llm.llm_engine.model_config.dtype).removeprefix("torch.")
    except AttributeError:
        return "auto"
