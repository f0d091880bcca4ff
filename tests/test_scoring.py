from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llamalab.backends.base import ChoiceRequest
from llamalab.backends.hf_scoring import score_choices


def brute_force(model, prompt: list[int], choice: list[int]) -> float:
    """Sum of log p(choice token | everything before it), from one full forward pass without cache."""
    ids = torch.tensor([prompt + choice])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    return sum(logprobs[len(prompt) - 1 + j, token].item() for j, token in enumerate(choice))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_shared_prompt_cache_matches_full_forward(model):
    requests = [
        ChoiceRequest([5, 6, 7, 8, 9], [[11], [12, 13], [14, 15, 16]]),
        ChoiceRequest([21, 22], [[11], [12, 13], [14, 15, 16]]),
        ChoiceRequest([31, 32, 33, 34, 35, 36, 37, 38], [[40, 41], [42], [43, 44, 45, 46]]),
    ]
    for batch_size in (1, 2, 16):
        scores = score_choices(model, requests, batch_size=batch_size)
        for request, per_choice in zip(requests, scores, strict=True):
            for choice, score in zip(request.choice_ids, per_choice, strict=True):
                assert score.n_tokens == len(choice)
                assert score.logprob == pytest.approx(brute_force(model, request.prompt_ids, choice), abs=1e-4)


def test_single_token_choices_and_normalisation(model):
    [scores] = score_choices(model, [ChoiceRequest([1, 2, 3], [[4], [5, 6]])])
    assert scores[0].score("mean") == scores[0].logprob
    assert scores[1].score("mean") == pytest.approx(scores[1].logprob / 2)
    with pytest.raises(ValueError, match="at least one token"):
        score_choices(model, [ChoiceRequest([1], [[]])])
