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


def test_a_shared_prefix_is_computed_once_and_changes_nothing(model):
    import random

    rng = random.Random(0)
    prefix = [rng.randint(3, 400) for _ in range(20)]
    requests = [ChoiceRequest(prefix + [rng.randint(3, 400) for _ in range(rng.randint(1, 9))],
                              [[11], [12, 13], [14, 15, 16]]) for _ in range(7)]
    for precision in ("float32", "bfloat16"):
        for batch_size in (1, 3, 16):
            shared = score_choices(model, requests, batch_size=batch_size, precision=precision)
            full = score_choices(model, requests, batch_size=batch_size, precision=precision, share_prefix=False)
            for ours, theirs in zip(shared, full, strict=True):
                assert [s.logprob for s in ours] == pytest.approx([s.logprob for s in theirs], abs=1e-4)
    for request, per_choice in zip(requests, score_choices(model, requests, batch_size=4), strict=True):
        for choice, score in zip(request.choice_ids, per_choice, strict=True):
            assert score.logprob == pytest.approx(brute_force(model, request.prompt_ids, choice), abs=1e-4)


@pytest.mark.parametrize(("prompt_format", "shots"), [("plain", 4), ("chat", 0), ("chat", 2)])
def test_few_shot_and_chat_prompts_score_the_same_with_the_prefix_shared(model, lab, tokenizer, prompt_format, shots):
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task

    task = load_task(lab.task_path("sentiment"), lab.root)
    data = load_task_data(task)
    prompter = Prompter(task, tokenizer, prompt_format, shots=tuple(data.split("train")[:shots]))
    requests = []
    for example in data.split("test")[:12]:
        prompt = prompter.prompt(example)
        encoded = [prompter.encode(prompt, prompter.continuation(label)) for label in task.answer.labels]
        requests.append(ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded]))
    from llamalab.backends.hf_scoring import MIN_SHARED_PREFIX, _shared_prefix

    assert _shared_prefix(requests) >= MIN_SHARED_PREFIX  # the shots, or the chat template's system turn
    shared = score_choices(model, requests, batch_size=5)
    full = score_choices(model, requests, batch_size=5, share_prefix=False)
    for ours, theirs in zip(shared, full, strict=True):
        assert [s.logprob for s in ours] == pytest.approx([s.logprob for s in theirs], abs=1e-4)
        best = max(range(len(ours)), key=lambda k: ours[k].logprob)
        assert best == max(range(len(theirs)), key=lambda k: theirs[k].logprob)


def test_choices_that_start_alike_share_their_trie_nodes_and_score_as_alone(model):
    from llamalab.backends.hf_scoring import _trie

    choices = [[11, 12, 13], [11, 12, 14, 15], [11, 16], [17], [11, 12, 13, 18]]
    assert _trie(choices) == [(11,), (11, 12), (11, 12, 13), (11, 12, 14)]
    requests = [ChoiceRequest([5, 6, 7], choices), ChoiceRequest([8, 9, 10, 30, 31], choices[:3]),
                ChoiceRequest([40], [[17], [18]])]
    for batch_size in (1, 3):
        for request, per_choice in zip(requests, score_choices(model, requests, batch_size=batch_size), strict=True):
            for choice, score in zip(request.choice_ids, per_choice, strict=True):
                assert score.logprob == pytest.approx(brute_force(model, request.prompt_ids, choice), abs=1e-4)


def test_trie_scores_say_whether_each_choice_is_the_greedy_continuation(model):
    import torch

    prompt = [5, 6, 7, 8]
    ids = torch.tensor([prompt])
    greedy = []
    with torch.no_grad():
        for _ in range(3):
            greedy.append(int(model(ids).logits[0, -1].argmax()))
            ids = torch.tensor([prompt + greedy])
    choices = [greedy[:3], greedy[:2] + [(greedy[2] + 1) % 100 + 3], [greedy[0], (greedy[1] + 1) % 100 + 3]]
    [scores] = score_choices(model, [ChoiceRequest(prompt, choices)])
    assert [s.greedy for s in scores] == [True, False, False]


@pytest.mark.parametrize("seed", range(6))
def test_forward_tokens_counts_what_the_model_computed(model, seed):
    """The compute floor's token count equals the real (non-pad) tokens the model was given, over random prompts
    with a shared prefix and random multi-token choices that start alike."""
    import random

    from llamalab.backends.hf_scoring import forward_tokens

    rng = random.Random(seed)
    prefix = [rng.randint(1, 400) for _ in range(rng.choice([0, 3, 12]))]
    stems = [[rng.randint(1, 400) for _ in range(rng.randint(1, 3))] for _ in range(2)]
    choices = [rng.choice(stems) + [rng.randint(1, 400) for _ in range(rng.randint(0, 2))] for _ in range(4)]
    requests = [ChoiceRequest(prefix + [rng.randint(1, 400) for _ in range(rng.randint(1, 9))], choices)
                for _ in range(rng.randint(1, 8))]
    seen = []  # pads are token 0, which no request uses
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(int((kwargs["input_ids"] != 0).sum())), with_kwargs=True)
    try:
        for share in (True, False):
            seen.clear()
            score_choices(model, requests, batch_size=rng.randint(1, 5), share_prefix=share)
            assert sum(seen) == forward_tokens(requests, share_prefix=share)
    finally:
        hook.remove()


def test_bfloat16_scoring_reports_the_close_calls_it_scored_again_in_float32(model):
    import copy
    import random

    from llamalab.backends.hf_scoring import _too_close

    model = copy.deepcopy(model)
    with torch.no_grad():  # logits ~30x as spread as the tiny model's (0.1 nats): some calls are close, some not
        model.get_output_embeddings().weight.mul_(30)
    rng = random.Random(1)
    requests = [ChoiceRequest([rng.randint(3, 400) for _ in range(rng.randint(1, 12))],
                              [[rng.randint(3, 400)] for _ in range(rng.randint(2, 4))]) for _ in range(40)]
    exact = score_choices(model, requests, batch_size=8)
    rechecked: list[int] = []
    mixed = score_choices(model, requests, batch_size=8, precision="bfloat16", rechecked=rechecked)
    assert len(set(rechecked)) == len(rechecked) and 0 < len(rechecked) < len(requests)  # the seed gives both kinds
    for i, (ours, theirs) in enumerate(zip(mixed, exact, strict=True)):
        if i in rechecked:  # its float32 scores
            assert [s.logprob for s in ours] == pytest.approx([s.logprob for s in theirs], abs=1e-4)
        else:  # decided in bfloat16 by a clear margin
            assert not _too_close(ours)


def test_a_close_call_is_judged_in_the_ranking_the_task_uses():
    """Per character (lm-eval's acc_norm), -10 over 10 characters and -5.05 over 5 are 0.01 apart: a bfloat16 error
    of 0.1 nats flips them, though the summed and per-token scores are far apart. Calibrated: the offsets count."""
    from llamalab.backends.base import ChoiceScore
    from llamalab.backends.hf_scoring import _too_close, label_error

    scores = [ChoiceScore(-10.0, 4, False, "bfloat16"), ChoiceScore(-5.05, 1, False, "bfloat16")]
    assert not _too_close(scores)  # summed and per token: clear
    assert _too_close(scores, ((0.0, 10.0), (0.0, 5.0)))  # per character: close
    assert _too_close(scores, ((-5.0, 1.0), (0.0, 1.0)))  # calibrated: -5.0 vs -5.05
    assert not _too_close(scores, ((-20.0, 1.0), (0.0, 1.0)))
    gap = 2 * label_error(1)
    assert _too_close([ChoiceScore(-1.0, 1, True), ChoiceScore(-1.0 - gap, 1, False)], ((0, 1), (0, 1)))
    assert not _too_close([ChoiceScore(-1.0, 1, True), ChoiceScore(-1.01 - gap, 1, False)], ((0, 1), (0, 1)))


@pytest.mark.parametrize("seed", range(25))
def test_token_budget_batches_cover_every_row_once_within_the_budget(seed):
    """`batch_size: auto` on a GPU: consecutive rows (longest first), each batch padded to its first row's length
    within the budget, or a single row that alone is over it."""
    import random

    from llamalab.backends.hf_batches import Budget, length_batches

    rng = random.Random(seed)
    lengths = [rng.randint(1, 300) for _ in range(rng.randint(0, 120))]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows = rng.randint(1, 64)
    budget = rng.choice([None, Budget(rng.randint(1, 400_000), rng.randint(1, 200), rng.choice([0, 0.5, 4]))])

    def cost(batch: list[int]) -> float:  # bytes of the batch padded to its widest row
        width = max(lengths[i] for i in batch)
        return len(batch) * width * (budget.per_token + budget.per_position * width)

    batches = list(length_batches(order, lengths, rows, budget))
    assert [i for batch in batches for i in batch] == order
    for batch in batches:
        assert 1 <= len(batch) <= rows
        if budget is not None and len(batch) > 1:
            assert cost(batch) <= budget.bytes
        if budget is not None and batch is not batches[-1]:  # as many rows as fit: one more would not
            assert len(batch) == rows or cost(batch + [batch[0]]) > budget.bytes


def test_auto_batches_score_as_fixed_ones(model, monkeypatch):
    """The scores do not depend on how batches are cut; `auto` on a CPU is 16 rows."""
    import random

    from llamalab.backends import hf_scoring
    from llamalab.backends.hf_batches import CPU_ROWS, Budget, batch_rows

    assert batch_rows("auto", model) == (CPU_ROWS, None) and batch_rows(5, model) == (5, None)
    rng = random.Random(1)
    requests = [ChoiceRequest([rng.randint(3, 400) for _ in range(rng.randint(1, 30))], [[11], [12, 13]])
                for _ in range(20)]
    fixed = score_choices(model, requests, batch_size=4)
    seen: list[list[int]] = []
    monkeypatch.setattr(hf_scoring, "batch_rows", lambda batch_size, model: (1024, Budget(120, 1)))  # 120 tokens
    budgeted = score_choices(model, requests, batch_size="auto", on_batch=lambda i, s: seen.append(i))
    assert max(len(b) for b in seen) > 4 and all(len(b) * len(requests[b[0]].prompt_ids) <= 120 or len(b) == 1
                                                 for b in seen)
    for ours, theirs in zip(budgeted, fixed, strict=True):
        assert [s.logprob for s in ours] == pytest.approx([s.logprob for s in theirs], abs=1e-4)


def test_token_bytes_counts_the_kv_cache_the_model_keeps(model):
    """The KV part of the per-token inference cost is what the model's cache really holds per token."""
    from llamalab.backends.hf_batches import token_bytes

    with torch.no_grad():
        cache = model(torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), use_cache=True).past_key_values
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers) / 7
    c = model.config
    activations = (6 * c.hidden_size + 3 * c.intermediate_size) * 4
    assert token_bytes(c, model.dtype) == held + activations


def test_an_auto_eval_records_the_largest_batch_it_made(lab, tiny_model_dir):
    """`batch_size: auto` chooses the batches: the record says how many rows the largest had (16 on a CPU)."""
    from llamalab.evaluation.evaluate import evaluate

    auto = evaluate(lab, str(tiny_model_dir), task="sentiment", limit=20, batch_size="auto")
    fixed = evaluate(lab, str(tiny_model_dir), task="sentiment", limit=20, batch_size=4)
    assert auto.run.throughput["largest_batch_rows"] == 16 and "largest_batch_rows" not in fixed.run.throughput
    assert auto.run.metrics["accuracy"].estimate == fixed.run.metrics["accuracy"].estimate


def test_a_call_not_judged_close_keeps_its_best_label_under_any_error_within_the_bound():
    """Property: where `_too_close` says a bfloat16 call is clear, moving every label's log-likelihood by up to
    its `label_error`, in any direction, never changes which label ranks first in the task's ranking."""
    import random

    from llamalab.backends.base import ChoiceScore
    from llamalab.backends.hf_scoring import _too_close, label_error

    rng = random.Random(7)
    clear = 0
    for _ in range(3000):
        k = rng.randint(2, 6)
        scores = [ChoiceScore(-rng.uniform(0, 12), rng.randint(1, 8), False, "bfloat16") for _ in range(k)]
        way = rng.choice(["sum", "mean", "chars", "calibrate"])
        ranking = tuple((rng.uniform(-6, 0) if way == "calibrate" else 0.0,
                         float(s.n_tokens if way == "mean" else rng.randint(1, 30) if way == "chars" else 1))
                        for s in scores)
        if _too_close(scores, ranking):
            continue
        clear += 1

        def best(logprobs, ranking=ranking):
            values = [(lp - off) / div for lp, (off, div) in zip(logprobs, ranking, strict=True)]
            return max(range(len(values)), key=values.__getitem__)

        first = best([s.logprob for s in scores])
        for _ in range(20):
            moved = [s.logprob + rng.uniform(-1, 1) * label_error(s.n_tokens) * 0.999 for s in scores]
            assert best(moved) == first
    assert clear > 500  # the property was tried on many clear calls
