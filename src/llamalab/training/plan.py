"""`llamalab plan`: a training run's memory and time, predicted before it starts.

Memory is the sum of parts, each from the model's shape and the experiment:

    weights        parameters at the training precision (4-bit NF4 for the linear layers with `method: qlora`)
    trainable      what training adds per trainable parameter: for LoRA's few, the weight in float32, its gradient
                   and AdamW's two moments (16 bytes; 8 for QLoRA, whose adapter TRL keeps in bf16, as the QLoRA
                   paper does); for a full fine-tune, whose weights are counted above (in
                   float32 on every device: bf16 computes through autocast), the gradient and the two moments in
                   float32 (12 bytes)
    activations    what autograd keeps for the backward pass: bytes per token per layer (below) x layers x the
                   tokens of the micro-batch of an epoch that keeps the most (batches are padding-free: the sum of
                   their rows' lengths; attention pads them, below), plus one layer's worth in flight during the
                   backward pass. With activation
                   checkpointing only each layer's input is kept, and one layer is recomputed at a time. QLoRA's
                   residual stream is float32 (PEFT's k-bit preparation makes the embedding and norms float32).
    logits         the output layer at the answer tokens only (the trainer keeps no other position)
    workspace      for a full fine-tune in one process under bf16 autocast, autocast's bf16 copies of the linear
                   layers' and the output layer's float32 weights (cached while the forward pass runs); on a CPU
                   under FSDP, the size of the linear layers' weights (measured in float32: 1,937 MiB against
                   1,776 planned with it for the embedded model, not explained part by part), and under autocast
                   the bf16 copies of every gathered layer and of the output layer too

Under bf16 autocast, LoRA's frozen float32 base (on a CPU) is cast anew in each forward pass and autograd keeps each
linear layer's bf16 copy, and the output layer's, for the backward pass: the activations count those copies (2 bytes
a weight, and the adapter's; with checkpointing, one layer's worth and the output layer's).

On a CPU the activations are counted as resident memory: glibc's allocator keeps the buffers that training frees
and allocates again (`CPU_RETAINED`: as much again as the activations without checkpointing, half of them with it;
measured). Returning them at once (a fixed `MALLOC_MMAP_THRESHOLD_` of 128 KiB) brought the resident peak close to
what autograd keeps but cost about 40% of the tokens/s (1 and 4 MiB thresholds kept most of the peak), so one
process keeps glibc's default; FSDP's workers, which would otherwise keep every layer's gathered weights, do not.

A full fine-tune in N processes is sharded (FSDP): each process keeps 1/N of the weights and of the trainable
state, and holds whole only the embedding's group and two layers at a time (`fsdp_gathered`); a test shards real
Llama models with torch's FSDP and checks the shares.

The bytes per token per layer were measured from autograd's saved tensors (a saved-tensors hook counting each
storage once) on Llama layers of several widths; a test checks them on random shapes:

    LoRA, float32        4 (6h + 2kv + 4i) + 4 r n + 4 heads + 8
    LoRA, bf16 autocast  26.5h + 4kv + 8.75i + 2 r n + 4 heads + 8   (how a GPU trains: bf16 weights, autocast)
    LoRA, float32 weights under bf16 autocast
                         12h + 4kv + 6i + sum over the adapted layers of (2 in + 2r) + 4 heads + 8
                         (+ 8 head_dim with neither q_proj nor k_proj adapted; 24h + 4kv + 8i + 2 r n adapting
                         all seven: how a CPU trains in bf16)
    QLoRA (NF4, bf16)    22h + 4kv + 14i + 2 r n + 4 heads + 8     (its adapter in bf16, as TRL trains it)
    QLoRA, no autocast   28h + 8kv + 14i + 2 r n + 4 heads + 8     (`bf16: no`, or a CPU without native bf16)
    full, float32       4 (8h + 2kv + 4i) + 4 heads + 8
    full, bfloat16      20h + 4kv + 8i + 4 heads + 8              (FSDP's bf16 policy on GPUs)
    full, float32 weights under bf16 autocast
                        30h + 4kv + 8i + 4 heads + 8              (one process on any device, or FSDP on CPUs)

(h hidden size, kv the key/value width, i the MLP width, r the LoRA rank, n the adapted linear layers per layer,
in an adapted layer's input width. The other LoRA formulas were measured adapting all seven; adapting fewer keeps
less than they say.)

These were measured with transformers' SDPA attention; training attends row by row (training/attention.py), which
keeps more (`rows_attention_bytes`: per token, and per pad position of its rows side by side), so the plan takes the
micro-batch that keeps the most, padding included. One CPU process's plan leaves these out: its allocator share
below was fitted with them in place.

On a CPU the measured peak is the process's resident memory during training less what it held before the model
was loaded; on a GPU it is the peak memory torch allocated. Time per epoch is the epoch's model FLOPs (4 P per
token for LoRA, 6 P for a full fine-tune) over the device's matmul rate at the efficiency the lab's past runs on
the same device reached (or a stated default when there are none).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llamalab.config import LlamalabError

MIB = 2**20
# Without checkpointing a run must leave this share of the device free (allocator slack, fragmentation).
HEADROOM = 0.9
# Model-FLOP efficiency assumed when the lab has no past run of its kind on the device (measured: ~0.4 on 2-core
# CPUs, ~0.1-0.2 for small models on an H100/H200 before the speed work; FSDP on a 2-core CPU ~0.11, its processes
# sharing the cores and sending every layer's weights and gradients each step).
DEFAULT_EFFICIENCY = {("cpu", False): 0.35, ("cuda", False): 0.15, ("cpu", True): 0.11, ("cuda", True): 0.15}
# On a CPU, what glibc's allocator keeps of the activations' freed buffers (resident, so counted), as a share of the
# activations without checkpointing; with checkpointing on, the layers recomputed in the backward pass leave theirs.
# Measured on the embedded model (2-core Intel Xeon with AMX, batches of 171 to 1,133 tokens, float32 and bf16
# autocast): resident memory was within -24%..+22% of the plan of that time (which counted bf16 runs' activations as
# float32) with these shares, against -38%..+39% without.
CPU_RETAINED = {False: 1.0, True: 0.5}
# bf16 dense matmul rates (TFLOP/s) measured on the cards we are lent; other cards: measured when present.
KNOWN_GPUS = {"H200": 790.0, "H100": 700.0}


@dataclass(frozen=True)
class Shape:
    """What memory and FLOPs depend on, from the model's config.json."""

    params: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_dim: int
    vocab: int
    tied: bool
    q_dim: int  # heads x head_dim: the hidden size, except where config.json sets another head_dim (Qwen3, ...)

    @classmethod
    def of(cls, config: dict, source: str = "the model's config") -> Shape:
        try:
            h, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
            heads, vocab = config["num_attention_heads"], config["vocab_size"]
        except KeyError as exc:
            raise LlamalabError(f"{source}: no {exc.args[0]!r}: llamalab plans and trains Llama-family models "
                                f"(model_type llama, mistral, qwen2, ...), not {config.get('model_type', 'this')}"
                                ) from None
        head_dim = config.get("head_dim") or h // heads
        kv_dim = config.get("num_key_value_heads", heads) * head_dim
        tied = bool(config.get("tie_word_embeddings", False))
        per_layer = h * heads * head_dim * 2 + h * kv_dim * 2 + 3 * h * i + 2 * h
        params = layers * per_layer + vocab * h * (1 if tied else 2) + h
        return cls(params, h, i, layers, heads, kv_dim, vocab, tied, heads * head_dim)

    @classmethod
    def of_folder(cls, folder: Path) -> Shape:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise LlamalabError(f"{path} does not exist: plan needs the model's config.json")
        return cls.of(json.loads(path.read_text()), str(path))

    def linears(self) -> dict[str, tuple[int, int]]:
        """Each layer's linear layers: name -> (in, out)."""
        h, i, kv, q = self.hidden, self.intermediate, self.kv_dim, self.q_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        """One decoder layer's parameters: its linear layers and two norms."""
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())


def adapted(shape: Shape, targets: str | list[str]) -> list[str]:
    """The linear layers (per transformer layer) that LoRA adapts, matched as PEFT matches them against each
    module's dotted name: a list entry is the name or its end (`q_proj`, `self_attn.q_proj`), a string other than
    all-linear a regular expression the whole name must match."""
    if targets == "all-linear":
        return list(shape.linears())
    keys = {name: f"model.layers.0.{'mlp' if name in MLP else 'self_attn'}.{name}" for name in shape.linears()}
    if isinstance(targets, str):
        return [name for name, key in keys.items() if re.fullmatch(targets, key)]
    return [name for name, key in keys.items() if any(key == t or key.endswith(f".{t}") for t in targets)]


MLP = ("gate_proj", "up_proj", "down_proj")


def check_targets(shape: Shape, targets: str | list[str], source: str, model: str) -> None:
    """Refuse LoRA targets that name no linear layer of the model (PEFT would fail after the run started)."""
    if targets == "all-linear" or adapted(shape, targets):
        return
    if re.fullmatch(targets, "lm_head") if isinstance(targets, str) else "lm_head" in targets:
        return  # the output layer alone
    if isinstance(targets, str) and targets in shape.linears():  # PEFT matches a string against the whole name
        raise LlamalabError(
            f"{source}: key 'lora.target_modules': a single string is a regular expression the whole module name "
            f"must match (model.layers.0.self_attn.q_proj), so {targets!r} matches none: write a list, "
            f"[{targets}], or the pattern '.*{targets}'")
    raise LlamalabError(f"{source}: key 'lora.target_modules': {targets!r} names none of {model}'s linear layers; "
                        f"they are {', '.join(shape.linears())} (in each layer) and lm_head, or use all-linear")


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]
    name: str
    memory_mb: float
    bf16: bool  # computes in bfloat16 where an experiment's `bf16: auto` lets it (a CPU: natively, AMX or AVX-512)
    matmul_tflops: float | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.memory_mb / 1024:,.1f} GiB)"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(g|gb|gib|m|mb|mib)\s*$", re.IGNORECASE)


def parse_memory(text: str) -> float:
    """'24GB', '24 GiB', '80g', '2048MiB' -> MiB (GB and GiB both mean 2**30 bytes, as card makers round)."""
    match = _SIZE.match(text)
    if not match:
        raise LlamalabError(f"memory {text!r}: give a size such as 24GB or 80GiB")
    value, unit = float(match.group(1)), match.group(2).lower()
    return value * 1024 if unit.startswith("g") else value


def resolve_device(text: str | None = None) -> Device:
    """cpu, cuda, a memory size ('24GB': a CUDA card of that size), or None/auto for what this machine has."""
    import psutil

    text = "auto" if text is None else text.strip()
    if not text:
        raise LlamalabError("--device '': name cpu, cuda or a GPU memory size such as 24GB, or leave --device out "
                            "for this machine")
    if text.lower() in ("auto", "cpu", "cuda"):
        text = text.lower()
    if text == "auto":
        text = "cuda" if _cuda_available() else "cpu"
    if text == "cpu":
        from llamalab.runs.record import cpu_name

        return Device("cpu", cpu_name(), psutil.virtual_memory().total / MIB, cpu_has_bf16())
    if text == "cuda":
        if not _cuda_available():
            raise LlamalabError("--device cuda: this machine has no CUDA device; name its memory instead (e.g. 24GB)")
        import torch

        props = torch.cuda.get_device_properties(0)
        rate = next((v for k, v in KNOWN_GPUS.items() if k in props.name), None)
        return Device("cuda", props.name, props.total_memory / MIB, torch.cuda.is_bf16_supported(), rate)
    try:
        memory = parse_memory(text)
    except LlamalabError:
        raise LlamalabError(f"--device {text!r}: use cpu, cuda or a GPU memory size such as 24GB (a card's name "
                            "does not say its memory: an H100 has 80GB or 94GB)") from None
    if memory <= 0:
        raise LlamalabError(f"--device {text!r}: a GPU's memory must be more than 0, such as 24GB")
    return Device("cuda", f"a {text} GPU", memory, True)


def cpu_has_bf16() -> bool:
    """Whether this machine's CPU computes bfloat16 natively (AMX or AVX-512 BF16): where `bf16: auto` trains on
    the CPU under bf16 autocast."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    budget_mb: float
    weights_mb: float
    trainable_mb: float
    activations_mb: float  # without checkpointing
    checkpointed_mb: float  # the same with activation checkpointing
    logits_mb: float
    workspace_mb: float
    load_mb: float  # the peak while loading (CPU: the file's pages and the converted weights at once)
    tokens_per_batch: int  # of the micro-batch of an epoch that keeps the most activations
    checkpointing: bool
    reason: str
    seconds_per_epoch: float | None = None
    efficiency: float | None = None
    efficiency_source: str = ""
    flops_per_token: float | None = None
    matmul_tflops: float | None = None
    epochs: float | None = None
    steps_per_epoch: int | None = None
    max_steps: int | None = None  # where the run stops at a number of steps, not epochs
    components: dict[str, float] = field(default_factory=dict)

    @property
    def peak_mb(self) -> float:
        return self.peak(self.checkpointing)

    def peak(self, checkpointing: bool) -> float:
        train = self.weights_mb + self.trainable_mb + self.logits_mb + self.workspace_mb + (
            self.checkpointed_mb if checkpointing else self.activations_mb)
        return round(max(train, self.load_mb), 1)

    def to_record(self) -> dict:
        return {"device": self.device, "predicted_mb": self.peak_mb, "activation_checkpointing": self.checkpointing,
                "reason": self.reason,
                "predicted_s_per_epoch": None if self.seconds_per_epoch is None else round(self.seconds_per_epoch, 1),
                "flops_per_token": self.flops_per_token}


def activation_bytes(shape: Shape, method: str, bf16: bool, r: int, n: int, float32_weights: bool = False,
                     targets: list[str] | None = None) -> float:
    """Bytes autograd keeps per token per layer (the measured formulas in the module docstring). `bf16`: computing
    in bfloat16, with bf16 weights or, with `float32_weights`, float32 ones under autocast (whose residual stream
    and norms stay float32). `targets`: the n linear layers LoRA adapts (default: all seven)."""
    h, kv, i, extra = shape.hidden, shape.kv_dim, shape.intermediate, 4 * shape.heads + 8
    if method == "qlora":  # without autocast its float32 layers (norms, attention) keep float32
        return (22 * h + 4 * kv if bf16 else 28 * h + 8 * kv) + 14 * i + 2 * r * n + extra
    if bf16 and float32_weights and method == "lora":  # each adapted layer keeps a bf16 copy of its input
        targets = list(shape.linears()) if targets is None else targets
        inputs = sum(shape.linears()[t][0] for t in targets)
        # with neither q_proj nor k_proj adapted, the rotary embedding's float32 cos and sin are kept
        rotary = 0 if {"q_proj", "k_proj"} & set(targets) else 8 * shape.q_dim // shape.heads
        return 12 * h + 4 * kv + 6 * i + 2 * inputs + 2 * r * n + rotary + extra
    if bf16 and float32_weights:
        return 30 * h + 4 * kv + 8 * i + extra
    if method == "lora":
        return (26.5 * h + 4 * kv + 8.75 * i + 2 * r * n if bf16 else 4 * (6 * h + 2 * kv + 4 * i) + 4 * r * n) + extra
    return (20 * h + 4 * kv + 8 * i if bf16 else 4 * (8 * h + 2 * kv + 4 * i)) + extra


def rows_attention_bytes(shape: Shape, bf16: bool, cpu: bool) -> tuple[float, float]:
    """What attending row by row (training/attention.py) keeps besides what the formulas above count: (per token,
    per pad position). Per token, the attention output gathered back from the padded rows (the output layer's
    input, at the compute precision) and its slot (and on a CPU under bf16 autocast, the float32 attention's
    copies of its queries, keys, values and output); per pad position of the rows side by side (each padded to the
    longest), queries, keys, values and output (float32 on a CPU) and each head's log-sum-exp. Measured from
    autograd's saved tensors on random ragged batches (tests/test_plan.py)."""
    compute, attend = (2 if bf16 else 4), (4 if cpu or not bf16 else 2)
    qkvo = 2 * shape.q_dim + 2 * shape.kv_dim
    # a CPU attends in float32 under bf16 autocast too: the real positions' copies take 2 bytes more a number
    return shape.hidden * compute + 8 + qkvo * (attend - compute), qkvo * attend + 4 * shape.heads


def padding(rows: list[int]) -> int:
    """Pad positions when rows of these lengths are put side by side, each padded to the longest."""
    return len(rows) * max(rows, default=0) - sum(rows)


def micro_batches(lengths: list[int], batch_size: int, seed: int, batches: int | None = None) -> list[list[int]]:
    """The lengths of each micro-batch of shuffled epochs, over `batches` micro-batches (default: one epoch's), in
    the order one training process draws them: accelerate's seeded sampler, reseeded each epoch (a shuffle of its
    own sized the activations from batches the run never saw)."""
    from accelerate.data_loader import SeedableRandomSampler

    if not lengths:
        return []
    sampler, found, epoch = SeedableRandomSampler(range(len(lengths)), data_seed=seed), [], 0
    per_epoch = -(-len(lengths) // batch_size)
    while len(found) < (batches or per_epoch):
        sampler.set_epoch(epoch)
        order, epoch = list(sampler), epoch + 1
        for k in range(0, len(order), batch_size):
            if len(found) == (batches or per_epoch):
                break
            found.append([lengths[j] for j in order[k:k + batch_size]])
    return found


def largest_batch(lengths: list[int], batch_size: int, seed: int, batches: int | None = None) -> int:
    """Tokens in the largest micro-batch of shuffled epochs (padding-free batches: the sum of the lengths), over
    `batches` micro-batches (default: one epoch's)."""
    return max((sum(b) for b in micro_batches(lengths, batch_size, seed, batches)), default=0)


def memory_plan(shape: Shape, experiment, device: Device, lengths: list[int], answers: list[int],
                file_bytes_per_param: float = 2.0, shards: int = 1, processes: int = 1) -> MemoryPlan:
    """The memory parts of training `experiment` (its `batch_size` one process's share) on `device`, and whether to
    checkpoint activations.

    `lengths` are the training rows' token counts, `answers` their answer (loss) token counts. `shards` > 1: a
    full fine-tune under FSDP in that many processes, each keeping its share of the weights, gradients and AdamW
    state, and gathering whole only the embedding's group and two layers at a time (`fsdp_gathered`). With
    `processes` N the run's micro-batches are dealt out among N processes: any one may draw the largest."""
    method, setting = experiment.method, getattr(experiment, "bf16", "auto")
    # as the trainer decides: `yes`, or `auto` where the device computes bf16 (QLoRA's 4-bit layers compute in
    # bf16 either way; the rest of its model under autocast or in float32)
    bf16 = setting == "yes" or (setting == "auto" and device.bf16)
    # A full fine-tune keeps float32 weights (bf16 computes through autocast): AdamW's small updates would round
    # away in bf16 weights. LoRA's frozen base is float32 on a CPU (autocast casts it), and on a GPU bf16 where the
    # run computes in bf16.
    float32_weights = method == "full" or (method == "lora" and device.kind == "cpu")
    weight_bytes = 2 if method == "qlora" else 4 if float32_weights or not bf16 else 2  # QLoRA loads in bf16
    # FSDP gathers at the compute precision on GPUs (its bf16 policy); on CPUs it leaves bf16 to autocast
    gather_bytes = 2 if bf16 and device.kind == "cuda" else 4
    other = shape.params - shape.linear_params
    weights = shape.params * weight_bytes
    if method == "qlora":  # NF4: half a byte a weight plus double-quantized block scales (~0.127 bit a weight);
        # PEFT's k-bit preparation keeps the rest (embeddings, norms, output layer) in float32
        weights = shape.linear_params * (0.5 + 0.127 / 8) + other * 4
    if method == "full":
        trainable = shape.params * 12  # float32 gradient and AdamW's two moments, like the weights
        r = n = lora_params = 0
        targets = []
    else:
        r, targets = experiment.lora.r, adapted(shape, experiment.lora.target_modules)
        n = len(targets)
        lora_params = shape.layers * sum(r * sum(shape.linears()[t]) for t in targets)
        trainable = lora_params * (8 if method == "qlora" else 16)  # TRL trains a QLoRA adapter in bf16
    load_weights = weights  # each process loads the whole model before FSDP shards it
    if shards > 1:  # gathered at the compute precision (FSDP's bf16 policy on GPUs)
        weights, trainable = weights / shards + fsdp_gathered(shape) * gather_bytes, trainable / shards
    # every micro-batch the run draws, in all its processes and epochs (each epoch shuffled anew)
    per_epoch = -(-len(lengths) // experiment.batch_size)
    batches = (experiment.max_steps * experiment.grad_accum * processes if experiment.max_steps
               else math.ceil(experiment.epochs * per_epoch))
    # float32 weights computing in bf16 through autocast (FSDP on GPUs gathers them in bf16: its policy)
    autocast = bf16 and float32_weights and not (shards > 1 and device.kind == "cuda")
    formula = activation_bytes(shape, method, bf16, r, n, float32_weights=autocast, targets=targets)
    per_token, per_pad = rows_attention_bytes(shape, bf16, device.kind == "cpu")
    resident = device.kind == "cpu" and shards == 1  # what the allocator keeps: fitted, row-by-row copies included
    act_bytes = 2 if bf16 else 4
    # k-bit preparation keeps QLoRA's embedding and norms float32; autocast keeps float32 weights' stream float32
    stream_bytes = 4 if method == "qlora" or autocast else act_bytes
    # autocast's bf16 copies of LoRA's frozen float32 base, made anew in each layer and kept for its backward pass
    # (and of the adapter's weights, cached while the forward pass runs: a few MiB); the output layer's (the
    # embedding, where tied) is kept too, outside the layers checkpointing recomputes
    copies = (shape.linear_params + lora_params) * 2 if autocast and method == "lora" else 0
    output_copy = shape.vocab * shape.hidden * 2 if autocast and method == "lora" else 0

    def kept(rows: list[int]) -> tuple[float, float]:
        """(activations, with checkpointing) for one micro-batch of rows of these lengths."""
        tokens = sum(rows)
        edges = tokens * shape.hidden * stream_bytes * 3  # embedding output, final norm, the last hidden states
        activations = tokens * formula * (shape.layers + 1) + edges
        checkpointed = tokens * shape.hidden * stream_bytes * shape.layers + tokens * formula * 2 + edges
        if resident:  # with the buffers glibc keeps (module docstring); its shares were fitted with row-by-row
            # attention in place, and counting that attention's copies on top overshot (batch 32: +41%)
            activations, checkpointed = (activations * (1 + CPU_RETAINED[False]),
                                         checkpointed + activations * CPU_RETAINED[True])
        else:
            side_by_side = tokens * per_token + padding(rows) * per_pad  # attending row by row, per layer
            activations, checkpointed = (activations + side_by_side * (shape.layers + 1),
                                         checkpointed + side_by_side * 2)
        # every layer's copies, or the one layer recomputed at a time
        return activations + copies + output_copy, checkpointed + copies / shape.layers + output_copy

    # The micro-batches that keep the most, with and without checkpointing (padding makes them differ)
    each = [(kept(b), sum(b)) for b in micro_batches(lengths, experiment.batch_size, experiment.seed, batches)]
    (activations, _), tokens = max(each, key=lambda e: e[0][0], default=((0.0, 0.0), 0))
    checkpointed = max((k[1] for k, _ in each), default=0.0)
    answer_tokens = largest_batch(answers, experiment.batch_size, experiment.seed, batches)
    logits = answer_tokens * shape.vocab * (4 * 3 + act_bytes)  # float32 logits, log-softmax, their gradient
    workspace = 0.0
    if autocast and method == "full":  # autocast's bf16 copies of the float32 weights and the output layer's
        workspace = (shape.linear_params + shape.vocab * shape.hidden) * 2
    if device.kind == "cpu" and shards > 1:  # fitted on float32 runs; and the gathered layers' autocast copies
        workspace = shape.linear_params * 4 + workspace
    # Loading maps the file; a file at another precision is converted, holding both for a moment: on a GPU only for
    # QLoRA, which loads onto the card (device_map) and quantizes there; LoRA and full models load (and convert)
    # in CPU memory, and move to the card converted.
    converted = abs(file_bytes_per_param - weight_bytes) > 0.5  # headers and metadata do not make a conversion
    converted = converted and (device.kind == "cpu" or method == "qlora")
    load = load_weights + (shape.params * file_bytes_per_param if converted else 0)
    budget = device.memory_mb * HEADROOM
    parts = {"weights": weights / MIB, "trainable": trainable / MIB, "activations": activations / MIB,
             "checkpointed": checkpointed / MIB, "logits": logits / MIB, "workspace": workspace / MIB,
             "load": load / MIB}
    plan = MemoryPlan(device.describe(), round(budget, 1), *(round(parts[k], 1) for k in
                      ("weights", "trainable", "activations", "checkpointed", "logits", "workspace", "load")),
                      tokens, False, "", components={k: round(v, 1) for k, v in parts.items()})
    return plan


def fsdp_gathered(shape: Shape) -> int:
    """Parameters an FSDP process holds whole at once besides its shards: the embedding's group (embedding, final
    norm, an untied output layer) and two layers' worth (the layer at work and its gradients before they are
    reduced, or the next layer fetched ahead)."""
    return shape.params - shape.layers * shape.layer_params + 2 * shape.layer_params


def decide_checkpointing(plan: MemoryPlan, setting: str) -> MemoryPlan:
    """`activation_checkpointing` yes/no as asked; auto: on only when the run would not fit without it."""
    from dataclasses import replace

    if setting == "yes":
        return replace(plan, checkpointing=True, reason="asked for (activation_checkpointing: yes)")
    if setting == "no":
        return replace(plan, checkpointing=False, reason="turned off (activation_checkpointing: no)")
    without = plan.peak(False)
    if without <= plan.budget_mb:
        return replace(plan, checkpointing=False,
                       reason=f"auto: fits without it ({without:,.0f} of {plan.budget_mb:,.0f} MiB usable)")
    with_it = plan.peak(True)
    if with_it >= without:
        return replace(plan, checkpointing=False,
                       reason=f"auto: {without:,.0f} MiB would not fit in {plan.budget_mb:,.0f} MiB usable, and "
                              "checkpointing would not lower it: lower batch_size or max_length")
    still = "" if with_it <= plan.budget_mb else " (still too much: lower batch_size or max_length)"
    return replace(plan, checkpointing=True,
                   reason=f"auto: {without:,.0f} MiB would not fit in {plan.budget_mb:,.0f} MiB usable; "
                          f"{with_it:,.0f} MiB with it{still}")


def flops_per_token(shape: Shape, method: str) -> float:
    """Model FLOPs per trained token: forward 2 P, backward 2 P for the activations (+ 2 P for full weights)."""
    return (6 if method == "full" else 4) * shape.params


def scoring_flops_per_token(shape: Shape) -> float:
    """Forward FLOPs per token the model computes when scoring: 2 x the parameters less the embedding table (looked
    up, not multiplied) and the output layer (it runs at a few positions only, and is left out)."""
    return 2 * (shape.params - shape.vocab * shape.hidden * (1 if shape.tied else 2))


def with_time(plan: MemoryPlan, shape: Shape, method: str, device: Device, tokens_per_epoch: int,
              past_efficiency: list[float], sharded: bool = False) -> MemoryPlan:
    """Add the model FLOPs per token and, where the device's matmul rate is known, the seconds per epoch (at the
    past runs' efficiency, or the default for the device and whether the model is sharded)."""
    from dataclasses import replace
    from statistics import median

    flops = flops_per_token(shape, method)
    plan = replace(plan, flops_per_token=flops)
    if not device.matmul_tflops:
        return plan
    if past_efficiency:
        efficiency, source = median(past_efficiency), (f"median of {len(past_efficiency)} past run(s) of the method "
                                                        "in as many processes on this device")
    else:
        efficiency = DEFAULT_EFFICIENCY[device.kind, sharded]
        source = f"default{' for FSDP' if sharded else ''} (no past run of its kind on this device)"
    seconds = tokens_per_epoch * flops / (device.matmul_tflops * 1e12 * efficiency)
    return replace(plan, seconds_per_epoch=seconds, efficiency=round(efficiency, 3),  # rounded where shown
                   efficiency_source=source, matmul_tflops=device.matmul_tflops)


def measure_matmul_tflops(device: Device) -> float:
    """The device's dense matmul rate, measured now: float32 2048 x 2048 on a CPU (all its threads), bfloat16
    8192 x 8192 on a GPU (warmed up first); the best of several repetitions."""
    import time

    import torch

    cuda = device.kind == "cuda"
    n = 8192 if cuda else 2048
    a = torch.randn(n, n, dtype=torch.bfloat16 if cuda else torch.float32, device="cuda" if cuda else "cpu")
    # A GPU idles at low clocks and one product takes ~1 ms there: warm it up, and time ten products at a time.
    repeats = 10 if cuda else 1
    for _ in range(repeats):
        a @ a
    best = float("inf")
    for _ in range(6):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ a
        if cuda:
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeats)
    return round(2 * n**3 / best / 1e12, 4)


SHARED_BY = "LLAMALAB_CELLS_AT_ONCE"  # set by a study running cells side by side in one machine's memory


def plan_training(experiment, model_folder: Path, lengths: list[int], answers: list[int],
                  device: Device | None = None, past_efficiency: list[float] | None = None,
                  processes: int = 1) -> MemoryPlan:
    """The plan for training `experiment` on `device` (default: this machine, with the experiment's
    `memory_limit` if it names one), checkpointing decided. With `processes` N > 1 it is one process's plan (a
    share of each batch, and under FSDP of the model), against 1/N of a CPU machine's memory (they share it, as
    do a study's cells run side by side: `SHARED_BY`); on GPUs, one card each, the epoch takes 1/N of the time."""
    from dataclasses import replace

    device = device or resolve_device()
    if experiment.memory_limit:
        device = replace(device, memory_mb=parse_memory(experiment.memory_limit),
                         name=f"{device.name}, planned as {experiment.memory_limit}")
    # On a CPU the run's processes (and a study's cells running at once) share the machine's memory; on GPUs each
    # process has a card of its own
    sharing = processes * int(os.environ.get(SHARED_BY, "1")) if device.kind == "cpu" else 1
    if sharing > 1:
        device = replace(device, memory_mb=device.memory_mb / sharing,
                         name=f"{device.name}, a 1/{sharing} share for each process")
    shape = Shape.of_folder(model_folder)
    share = experiment.model_copy(update={"batch_size": max(1, experiment.batch_size // processes)})
    shards = processes if fsdp_shards(experiment, processes) else 1
    plan = memory_plan(shape, share, device, lengths, answers, _file_bytes_per_param(model_folder, shape), shards,
                       processes)
    plan = decide_checkpointing(plan, experiment.activation_checkpointing)
    tokens = sum(lengths) / (processes if device.kind == "cuda" else 1)
    return with_time(plan, shape, experiment.method, device, tokens, past_efficiency or [], shards > 1)


def check_processes(experiment, processes: int) -> None:
    """`batch_size` is the global batch: each of the processes takes an equal share of it."""
    if processes < 1:
        raise LlamalabError("processes must be at least 1")
    if experiment.batch_size % processes:
        raise LlamalabError(f"batch_size {experiment.batch_size} is the global batch: make it a multiple of "
                            f"processes ({processes})")


def fsdp_shards(experiment, processes: int) -> bool:
    """Whether training in `processes` shards the model (FSDP: a full fine-tune; LoRA's few trainable weights
    train data-parallel, each process holding the whole model)."""
    return experiment.method == "full" and processes > 1


def _file_bytes_per_param(folder: Path, shape: Shape) -> float:
    size = sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
    return size / shape.params if size else 2.0


@dataclass(frozen=True)
class PastRun:
    """A finished training run's plan against what it used."""

    id: str
    device: str
    predicted_mb: float
    measured_mb: float
    predicted_s_per_epoch: float | None
    measured_s_per_epoch: float | None

    @property
    def memory_error(self) -> float:
        return (self.predicted_mb - self.measured_mb) / self.measured_mb


def past_runs(lab) -> list[PastRun]:
    """The lab's finished training runs that recorded a plan and a measured peak, oldest first."""
    from llamalab.runs.record import list_runs

    rows = []
    for record in list_runs(lab.runs_dir, "train"):
        run, memory = record.run, record.run.memory
        if not run.finished or memory is None or not memory.measured_mb:
            continue
        train_s = run.timings.get("train_s")
        # the epochs those seconds trained: recorded since resumed runs' killed sessions were told apart; before,
        # the run's epochs only when no session was lost
        epochs = run.timings.get("train_epochs") or (run.metrics.epochs if run.metrics and not run.resumed else None)
        measured_s = round(train_s / epochs, 1) if train_s and epochs else None
        rows.append(PastRun(record.id, memory.device, memory.predicted_mb, memory.measured_mb,
                            memory.predicted_s_per_epoch, measured_s))
    return rows


def past_efficiency(runs_dir: Path, device: Device, method: str = "lora", processes: int = 1,
                    flops: float | None = None) -> list[float]:
    """Model-FLOP efficiency (achieved over the matmul rate measured now; on GPUs, per card) of past runs on this
    very device (however its memory was planned) with the same method in as many processes (FSDP on CPUs, say,
    spends most of a step sending weights: its efficiency is its own), and with `flops` (per token) of a model
    within a factor of two in size: a small model's step is mostly fixed costs, a large one's mostly matmuls."""
    from llamalab.runs.record import list_runs

    found = []
    cards = processes if device.kind == "cuda" else 1
    here = _bare_device(device.describe())
    for record in list_runs(runs_dir, "train"):
        memory, rate = record.run.memory, record.run.throughput.get("tokens_per_s")
        if not (record.run.finished and memory and memory.flops_per_token and rate):
            continue
        same = (record.run.processes or 1) == processes and record.config.get("method", "lora") == method
        alike = flops is None or 0.5 <= memory.flops_per_token / flops <= 2
        if same and alike and _bare_device(memory.device) == here:
            found.append(rate * memory.flops_per_token / (device.matmul_tflops * 1e12 * cards))
    return found


def _bare_device(described: str) -> str:
    """A device as `Device.describe` wrote it, without its memory, the limit it was planned as, or the share of a
    CPU machine's memory each of several processes planned with."""
    return re.sub(r"(, planned as .*|, a 1/\d+ share for each process)? \([\d.,]+ GiB\)$", "", described)


def plan_run(lab, experiment, device_text: str | None = None, processes: int = 1, **overrides) -> MemoryPlan:
    """`llamalab plan`: the plan for an experiment (a file's name or an Experiment) on the named device (one
    process's, with `processes`), with the training rows tokenized as training would (nothing is loaded but the
    tokenizer)."""
    from dataclasses import replace

    from llamalab.config import apply_overrides
    from llamalab.models import ModelRef, load_tokenizer, local_path, resolve_model
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task
    from llamalab.training.experiment import Experiment, load_experiment, resolve_experiment
    from llamalab.training.trainer import _check_targets, build_dataset, training_subset

    if isinstance(experiment, Experiment):
        source = "experiment"
        experiment, _ = resolve_experiment(apply_overrides(experiment.model_dump(mode="json"), overrides), source)
    else:
        source = str(lab.experiment_path(experiment))
        experiment, _ = load_experiment(lab.experiment_path(experiment), overrides)
    try:
        task_path = lab.task_path(experiment.task)
    except LlamalabError as exc:  # as train says it: the experiment's file and key
        raise LlamalabError(f"{source}: key 'task': {exc}") from None
    task = load_task(task_path, lab.root)
    local = local_path(experiment.base_model, lab.root)
    # A local folder needs only its config.json and tokenizer here (no weights: a 7B shape can be planned anywhere)
    model_ref = (ModelRef(experiment.base_model, str(local), "not hashed") if (local / "config.json").is_file()
                 else resolve_model(experiment.base_model, lab.root))
    tokenizer = load_tokenizer(model_ref)
    _check_targets(experiment, model_ref, source)  # a run train would refuse is no run to plan
    prompter = Prompter(task, tokenizer, experiment.format or task.prompt.format)
    examples = training_subset(load_task_data(task).split("train"), experiment.train_examples, experiment.seed)
    dataset, _ = build_dataset(prompter, examples, experiment.max_length)
    if len(dataset) == 0:
        raise LlamalabError("no training examples left: raise max_length or check the task's train split")
    lengths = [len(ids) for ids in dataset["input_ids"]]
    answers = [sum(1 for t in labels if t != -100) for labels in dataset["labels"]]
    device = resolve_device(device_text)
    if (device_text or "auto").strip().lower() in ("auto", "cpu", "cuda"):  # this machine's: its rate is measurable
        device = replace(device, matmul_tflops=device.matmul_tflops or measure_matmul_tflops(device))
    epochs = experiment.epochs if not experiment.max_steps else None
    check_processes(experiment, processes)
    plan = plan_training(experiment, model_ref.path, lengths, answers, device,
                         past_efficiency(lab.runs_dir, device, experiment.method, processes,
                                         flops_per_token(Shape.of_folder(model_ref.path), experiment.method))
                         if device.matmul_tflops else [], processes)
    batches = -(-len(lengths) // experiment.batch_size)
    return replace(plan, epochs=epochs, steps_per_epoch=-(-batches // experiment.grad_accum),  # optimizer steps
                   max_steps=experiment.max_steps or None)


class PeakMemory:
    """The peak memory of the code inside `with PeakMemory() as peak:`, in MiB (`peak.mb` after the block).

    On a GPU, what torch allocated at most less what it held at the start; on a CPU, the process's peak resident
    memory less what it held at the start (Linux's VmHWM, reset at the start through /proc/self/clear_refs; None
    where that is not possible). Unreachable objects left by earlier work are collected first."""

    def __init__(self) -> None:
        self.mb: float | None = None

    def __enter__(self) -> PeakMemory:
        import gc

        gc.collect()  # what earlier work left unreachable (a model in a reference cycle) is not this block's
        self.cuda = _cuda_available()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / MIB
        else:
            _trim_heap()  # the freed buffers of earlier work in this process were resident, and reused unmeasured
            self.start = _status_mb("VmRSS")
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            self.mb = round(torch.cuda.max_memory_allocated() / MIB - self.start, 1)
        elif self.start is not None and (peak := _status_mb("VmHWM")) is not None:
            self.mb = round(peak - self.start, 1)


def _trim_heap() -> None:
    """Give the memory glibc keeps of freed buffers back to the system: a study's second training in one process
    measured 596 MiB against 1,304 for the same run in a fresh one (its activations reused the first's freed
    buffers, resident before it began); with this, 1,313 (embedded model, batch 8, 2-core AMD EPYC)."""
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):  # not glibc: nothing to give back this way
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
