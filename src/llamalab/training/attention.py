"""Attention over a padding-free batch, one sequence at a time.

A padding-free batch is the batch's rows laid end to end as one sequence. With SDPA, transformers then attends over
the whole concatenation under a block-diagonal mask: for 8 rows that is 8× the attention work, and the masked
kernel is slow on a CPU (about a sixth of a training step on the embedded model). Here the rows are put back side
by side, right-padded to the longest, and attended with the plain causal kernel: with right padding, causality
alone keeps every real token from seeing a pad. The pads' outputs are dropped. The result equals the masked
computation up to rounding.

On a CPU the attention runs in float32 (under bf16 autocast too), where its kernel is fastest.

The collator gives the row boundaries (`cu_seq_lens_q`, `max_length_q`, for every token of the batch); without them
(or with a batch dimension above 1) this is transformers' SDPA, unchanged.
"""

from __future__ import annotations

import contextlib

NAME = "llamalab_rows"


def rows_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
                   is_causal: bool | None = None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    starts, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if starts is None or longest is None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    # Where each token goes, computed on the tensors' device without reading anything back (no GPU sync per layer)
    device, tokens = query.device, query.shape[2]
    starts = starts.to(device=device, dtype=torch.long)
    rows, longest = starts.numel() - 1, int(longest)
    row = torch.repeat_interleave(torch.arange(rows, device=device), starts.diff(), output_size=tokens)
    slot = row * longest + torch.arange(tokens, device=device) - starts[:-1][row]

    def side_by_side(states):  # [1, heads, tokens, dim] -> [rows, heads, longest, dim]
        tokens = states[0].transpose(0, 1)
        # index_put keeps only the slots for the backward pass; index_copy would keep a copy of q, k and v too
        padded = tokens.new_zeros(rows * longest, *tokens.shape[1:]).index_put((slot,), tokens)
        return padded.view(rows, longest, *tokens.shape[1:]).transpose(1, 2)

    # On a CPU the bfloat16 kernel is 5x slower than the float32 one at these shapes (measured fwd+bwd for 8 rows
    # of 40 tokens, 9 heads of 64: 7.2 ms against 1.5 ms): attend in float32 there, outside autocast.
    # Elsewhere it runs in the inputs' dtype (under an outer autocast, its dtype): no autocast region of its own,
    # which on CUDA would default to float16.
    cpu = query.device.type == "cpu"
    dtype = torch.float32 if cpu else query.dtype
    with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
        out = torch.nn.functional.scaled_dot_product_attention(
            side_by_side(query.to(dtype)), side_by_side(key.to(dtype)), side_by_side(value.to(dtype)),
            dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=key.shape[1] != query.shape[1])
    out = out.to(query.dtype).transpose(1, 2).reshape(rows * longest, query.shape[1], -1).index_select(0, slot)
    return out.unsqueeze(0), None  # [1, tokens, heads, dim], as transformers' attention functions return


def use_rows_attention(model) -> None:
    """Switch a loaded model's attention to `rows_attention` (its masks are still made as for SDPA, for batches that
    are not padding-free)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, rows_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
