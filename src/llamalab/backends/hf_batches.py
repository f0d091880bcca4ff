"""How many rows an hf backend batch takes: a fixed count, or (`batch_size: auto`) as many as the card's free
memory holds.

Rows come longest first, so a batch's first row sets its padded width: with a budget, a batch takes rows while
rows × that width × what a token costs stays within it. A token costs its KV cache in every layer and one layer's
transient activations (the attention and MLP inputs and outputs), and with attention other than SDPA (which
materialises the scores) a float32 score for each head and each position of its row. The budget is half the memory
the card has free (what torch holds cached but unused counts as free), so fragmentation and the logits of the
last positions have room.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from llamalab.backends.base import BatchSize

CPU_ROWS = 16  # `auto` on a CPU: larger batches gain little there, and memory is not what limits them
MAX_ROWS = 1024  # `auto` on a GPU never batches more rows than this, however short they are
FREE_SHARE = 0.5


def batch_rows(batch_size: BatchSize, model) -> tuple[int, Budget | None]:
    """(most rows per batch, the memory budget per batch or None) for `batch_size` on the model's device."""
    if batch_size != "auto":
        return batch_size, None
    if model.device.type != "cuda":
        return CPU_ROWS, None
    free, _ = torch.cuda.mem_get_info(model.device)
    free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)
    scores = 0 if model.config._attn_implementation == "sdpa" else 4 * model.config.num_attention_heads
    return MAX_ROWS, Budget(FREE_SHARE * free, token_bytes(model.config, model.dtype), scores)


@dataclass(frozen=True)
class Budget:
    """Bytes a batch may take, and what a token of a row `width` tokens long costs: `per_token + per_position *
    width` (the attention scores of eager attention)."""

    bytes: float
    per_token: float
    per_position: float = 0.0

    def rows(self, width: int) -> int:
        """How many rows of this padded width fit (at least one)."""
        return max(1, int(self.bytes // (width * (self.per_token + self.per_position * width))))


def token_bytes(config, dtype: torch.dtype) -> int:
    """Bytes one token takes at inference: its keys and values in every layer, and one layer's activations."""
    size = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv = 2 * config.num_hidden_layers * kv_heads * head_dim * size
    # residual stream, normed input, q, attention output, o-projection, MLP output; gate, up and their product
    activations = (6 * config.hidden_size + 3 * config.intermediate_size) * size
    return kv + activations


def length_batches(order: Sequence[int], lengths: Sequence[int], rows: int, budget: Budget | None = None
                   ) -> Iterator[list[int]]:
    """Consecutive runs of `order` (indices, longest first): `rows` at most, and with a `budget`, no more than
    fit in it padded to the first one's length (always at least one)."""
    start = 0
    while start < len(order):
        size = rows if budget is None else min(rows, budget.rows(max(1, lengths[order[start]])))
        yield list(order[start : start + size])
        start += size
