"""The training speed-up changes no number: attention row by row equals transformers' masked attention over the
padding-free batch, in values and gradients."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")


def _random_llama(rng: random.Random):
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = rng.choice([2, 4, 6])
    kv = rng.choice([k for k in (1, 2, 3, 6) if heads % k == 0])
    config = LlamaConfig(vocab_size=97, hidden_size=heads * rng.choice([8, 16]), intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv,
                         tie_word_embeddings=True)
    torch.manual_seed(rng.randrange(2**31))
    return LlamaForCausalLM(config)


def _packed_batch(rng: random.Random):
    """A padding-free batch as TRL's collator makes it (rows end to end, positions restarting at each row)."""
    lengths = [rng.randint(1, 12) for _ in range(rng.randint(1, 6))]
    ids = torch.randint(0, 97, (1, sum(lengths)), generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
            "cu_seq_lens_q": starts, "cu_seq_lens_k": starts, "max_length_q": max(lengths),
            "max_length_k": max(lengths), "use_cache": False}


@pytest.mark.parametrize("seed", range(12))
def test_row_by_row_attention_equals_the_masked_padding_free_attention(seed):
    from llamalab.training.attention import use_rows_attention

    rng = random.Random(seed)
    model = _random_llama(rng)
    batch = _packed_batch(rng)

    def logits_and_grads():
        model.zero_grad()
        logits = model(**batch).logits
        (logits.square().mean()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    masked, masked_grads = logits_and_grads()  # transformers' SDPA with its block-diagonal mask
    use_rows_attention(model)
    rows, rows_grads = logits_and_grads()
    torch.testing.assert_close(rows, masked, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(rows_grads, masked_grads, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    # each row alone, as an ordinary batch of one
    alone = torch.cat([model(input_ids=batch["input_ids"][:, a:b]).logits
                       for a, b in zip(batch["cu_seq_lens_q"][:-1], batch["cu_seq_lens_q"][1:], strict=True)], dim=1)
    torch.testing.assert_close(rows, alone.detach(), atol=1e-5, rtol=1e-5)


def test_row_by_row_attention_leaves_ordinary_batches_to_sdpa():
    from llamalab.training.attention import use_rows_attention

    model = _random_llama(random.Random(0))
    ids = torch.randint(0, 97, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 5:] = 0
    before = model(input_ids=ids, attention_mask=mask).logits
    use_rows_attention(model)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)


@pytest.mark.slow  # trains the tiny model
def test_a_training_step_reads_nothing_back_from_its_tensors_in_llamalabs_own_code(lab, tiny_model_dir):
    """On a GPU every read of a tensor's value on the host (`.item()`, `bool()`, `.nonzero()`, `.tolist()`) waits
    for the card. Counted here on a CPU, per training step: none in llamalab's own step code (the loss, row-by-row
    attention, the callbacks; the collator runs on the CPU by design), and only the few the libraries make (the
    logged loss and gradient norm, the token count, transformers' packed-sequence check)."""
    import collections
    import json
    import traceback
    from pathlib import Path

    from torch.overrides import TorchFunctionMode
    from transformers import TrainerCallback

    import llamalab
    from llamalab.training.trainer import train
    from tests.conftest import write_experiment

    reads = {"item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "all",
             "any"}
    ours = str(Path(llamalab.__file__).parent)
    data = ("dataloader.py", "fetch.py", "data_collator.py", "data_loader.py")
    per_step, own = collections.Counter(), []

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in reads:
                stack = traceback.extract_stack()[:-1]
                if not any(frame.filename.endswith(data) for frame in stack):  # batches are made on the CPU
                    caller = stack[-1]
                    per_step[func.__name__] += 1
                    if caller.filename.startswith(ours):
                        own.append(f"{func.__name__} at {caller.filename}:{caller.lineno}")
            return func(*args, **(kwargs or {}))

    class Count(TrainerCallback):  # steps 2 to 5: the first step sets things up once
        mode, entered = Reads(), False

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.mode.__enter__()
                self.entered = True

        def on_train_end(self, args, state, control, **kwargs):
            if self.entered:
                self.mode.__exit__(None, None, None)

    name = write_experiment(lab, "reads", json.dumps({"task": "sentiment", "base_model": str(tiny_model_dir),
                                                      "batch_size": 4, "max_steps": 5, "save_steps": 100}))
    train(lab, name, callbacks=[Count()])
    assert own == []
    # five a step over four steps (loss, gradient norm, token count; the packed-sequence check: two), and the
    # run's mean loss read once at the end
    assert 0 < sum(per_step.values()) <= 5 * 4 + 1, per_step
