"""`llamalab plan`: the memory parts against the model and autograd, the checkpointing decision, and training
runs that record the plan next to what they used (activation checkpointing and QLoRA included)."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from llamalab.config import LlamalabError
from llamalab.training.experiment import Experiment
from llamalab.training.plan import (
    MLP,
    MemoryPlan,
    Shape,
    activation_bytes,
    decide_checkpointing,
    largest_batch,
    parse_memory,
)
from tests.conftest import write_experiment


def _config(rng: random.Random) -> dict:
    heads = rng.choice([2, 4, 8])
    head_dim = rng.choice([8, 16, 32])
    return {"hidden_size": heads * head_dim, "intermediate_size": rng.choice([32, 64, 96, 160]),
            "num_hidden_layers": rng.randint(1, 3), "num_attention_heads": heads,
            "num_key_value_heads": rng.choice([k for k in (1, 2, heads) if heads % k == 0]),
            "vocab_size": rng.choice([100, 257]), "tie_word_embeddings": rng.random() < 0.5}


def test_shape_counts_the_parameters_of_real_llama_models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = random.Random(0)
    for trial in range(40):
        config = _config(rng)
        if trial % 2:  # a head_dim of its own (Qwen3, Mistral-NeMo): q_proj and o_proj are not hidden x hidden
            config["head_dim"] = rng.choice([8, 16, 32, 64])
        with torch.device("meta"):
            model = LlamaForCausalLM(LlamaConfig(**config))
        shape = Shape.of(config)
        assert shape.params == sum(p.numel() for p in model.parameters()), config
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
        assert shape.linear_params == sum(m.weight.numel() for m in linears.values()), config
        for name, (fan_in, fan_out) in shape.linears().items():
            module = linears[f"model.layers.0.{'mlp' if name in MLP else 'self_attn'}.{name}"]
            assert (module.in_features, module.out_features) == (fan_in, fan_out), (name, config)


def _kept_bytes(model, vocab: int, tokens: int, bf16: bool, **batch) -> int:
    """Bytes autograd keeps for the backward pass of one forward over `tokens` tokens, counted with a saved-tensors
    hook (each storage once, the weights left out); under bf16 autocast as a GPU trains, with `bf16`. `batch`: more
    of the model's inputs (a padding-free batch's row boundaries)."""
    import torch

    weights = {p.data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.autograd.graph.saved_tensors_hooks(
            pack, lambda t: t):
        model(input_ids=torch.randint(0, vocab, (1, tokens)), logits_to_keep=1, **batch)
    return sum(storages.values())


def _per_token_layer(kept) -> float:
    """One more layer at 24 and at 48 tokens: the slope is per token (a layer also keeps a few fixed-size tensors,
    such as LoRA's weights cast to bf16 under autocast)."""
    return ((kept(2, 48) - kept(1, 48)) - (kept(2, 24) - kept(1, 24))) / 24


def _kept_by_layers(config: dict, method: str, dtype, autocast: bool, r: int = 8, targets="all-linear"):
    """kept(layers, tokens): what autograd keeps over one forward of a model of that many layers, its weights in
    `dtype` (LoRA's in float32, on `targets`), under bf16 autocast with `autocast`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    def kept(layers: int, tokens: int) -> int:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{**config, "num_hidden_layers": layers},
                                             attn_implementation="sdpa")).to(dtype)
        if method == "lora":
            model = get_peft_model(model, LoraConfig(r=r, target_modules=targets, task_type="CAUSAL_LM"))
        return _kept_bytes(model, config["vocab_size"], tokens, autocast)

    return kept


def _saved_bytes_per_token_layer(config: dict, method: str, dtype, r: int = 8, autocast: bool | None = None) -> float:
    """What autograd keeps per token for one more layer (bf16: bf16 weights, LoRA's in float32, under autocast;
    float32 weights under autocast with `autocast`)."""
    import torch

    return _per_token_layer(_kept_by_layers(config, method, dtype, dtype == torch.bfloat16 if autocast is None
                                            else autocast, r))


# (weights, under autocast): float32; bf16 weights as a GPU trains; float32 weights as a CPU with native bf16 trains
_PRECISIONS = [("float32", False), ("bfloat16", True), ("float32", True)]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_activation_bytes_match_what_autograd_keeps(method):
    import torch

    rng = random.Random(1)
    for _ in range(4):
        config = {**_config(rng), "intermediate_size": rng.choice([64, 128])}
        shape = Shape.of(config)
        for weights, autocast in _PRECISIONS:
            dtype = getattr(torch, weights)
            measured = _saved_bytes_per_token_layer(config, method, dtype, autocast=autocast)
            predicted = activation_bytes(shape, method, autocast, 8, 7, float32_weights=weights == "float32")
            assert predicted == pytest.approx(measured, rel=0.1), (config, weights, autocast)
        for _ in range(3 if method == "lora" else 0):  # float32 weights under autocast, on some linear layers
            targets = rng.sample(sorted(shape.linears()), rng.randint(1, 6))
            measured = _per_token_layer(_kept_by_layers(config, "lora", torch.float32, True, 8, targets))
            predicted = activation_bytes(shape, "lora", True, 8, len(targets), float32_weights=True, targets=targets)
            assert predicted == pytest.approx(measured, rel=0.02), (config, targets)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_cpu_plan_under_autocast_counts_the_bf16_copies_of_float32_weights_autograd_keeps(method, monkeypatch):
    """Under bf16 autocast, float32 weights are cast in each forward pass: for LoRA's frozen base autograd keeps
    every layer's copies, and the output layer's, for the backward pass; for a full fine-tune autocast caches
    them all. Measured from autograd's saved tensors on random shapes: what one more layer keeps beyond its
    per-token share, and the output layer's copy (LoRA), or everything a model keeps that does not grow with its
    tokens (a full fine-tune), against a CPU plan with native bf16, in bytes."""
    import torch

    from llamalab.training import plan as planning
    from llamalab.training.plan import CPU_RETAINED, Device, memory_plan

    monkeypatch.setattr(planning, "MIB", 1)  # the plan's parts in bytes, not rounded to 0.1 MiB
    rng = random.Random(3 if method == "lora" else 4)
    for _ in range(3):
        config = {**_config(rng), "intermediate_size": rng.choice([64, 128])}
        kept = _kept_by_layers(config, method, torch.float32, autocast=True)
        experiment = Experiment(task="t", method=method, batch_size=1, **(  # LoRA as the measured model's
            {"lora": {"r": 8, "target_modules": "all-linear"}} if method == "lora" else {}))

        def plan(layers: int, config=config, experiment=experiment):
            return memory_plan(Shape.of({**config, "num_hidden_layers": layers}), experiment,
                               Device("cpu", "a CPU", 1e12, bf16=True), [40], [1])

        if method == "full":  # every byte kept that does not grow with the tokens: the cached copies
            for layers in (1, 2):
                fixed = kept(layers, 48) - 48 * (kept(layers, 48) - kept(layers, 24)) / 24
                assert plan(layers).workspace_mb == pytest.approx(fixed, rel=0.01), config
            continue
        shape = Shape.of(config)
        formula = activation_bytes(shape, method, True, 8, 7, float32_weights=True)

        def copies(layers: int, shape=shape, formula=formula) -> float:  # the plan's activations less per token
            edges = 40 * shape.hidden * 4 * 3
            return plan(layers).activations_mb - (40 * formula * (layers + 1) + edges) * (1 + CPU_RETAINED[False])

        per_layer = (kept(2, 48) - kept(1, 48)) - 48 * _per_token_layer(kept)
        assert copies(5) - copies(4) == pytest.approx(per_layer, rel=0.01), config
        output_layer = _saved_output_layer_copy(config)
        assert output_layer == shape.vocab * shape.hidden * 2
        assert copies(4) - 4 * (copies(5) - copies(4)) == pytest.approx(output_layer, rel=0.01), config


def _saved_output_layer_copy(config: dict) -> int:
    """Bytes of the bf16 tensors of the output layer's size autograd keeps over a LoRA model's forward pass under
    bf16 autocast (float32 weights)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = get_peft_model(LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa")),
                           LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    size, storages = config["vocab_size"] * config["hidden_size"], {}

    def pack(t):
        if t.dtype == torch.bfloat16 and t.numel() == size:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=torch.randint(0, config["vocab_size"], (1, 12)), logits_to_keep=1)
    return sum(storages.values())


def _qlora_saved_bytes_per_token_layer(config: dict, tmp_path, r: int, checkpointing: bool, autocast: bool = True
                                      ) -> float:
    """As `_saved_bytes_per_token_layer`, for QLoRA as the trainer builds it: the base in 4-bit NF4 through
    `_load_for_training` (PEFT's k-bit preparation), the adapter in bf16 as TRL casts it, under bf16 autocast (or
    without, as with `bf16: no` or on a CPU without native bf16)."""
    import torch
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.models import ModelRef
    from llamalab.training.trainer import _load_for_training, _peft_config

    experiment = Experiment(task="t", method="qlora", batch_size=1, lora={"r": r})

    def kept(layers: int, tokens: int) -> int:
        folder = tmp_path / f"layers-{layers}"
        if not folder.is_dir():
            torch.manual_seed(0)
            LlamaForCausalLM(LlamaConfig(**{**config, "num_hidden_layers": layers})).save_pretrained(folder)
        model = _load_for_training(experiment, ModelRef(str(folder), str(folder), "local"), torch.bfloat16,
                                   checkpointing)
        model = get_peft_model(model, _peft_config(experiment))
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(torch.bfloat16)  # what TRL's SFTTrainer does for QLoRA
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return _kept_bytes(model, config["vocab_size"], tokens, bf16=autocast)

    return _per_token_layer(kept)


@pytest.mark.slow
def test_qlora_activation_bytes_match_what_autograd_keeps(tmp_path):
    """QLoRA keeps a float32 residual stream (k-bit preparation) and, with checkpointing, only each layer's input."""
    from llamalab.training.plan import Device, memory_plan, rows_attention_bytes

    rng = random.Random(3)
    for k in range(3):
        config = {**_config(rng), "intermediate_size": rng.choice([64, 128])}
        shape, r = Shape.of(config), rng.choice([2, 8])
        measured = _qlora_saved_bytes_per_token_layer(config, tmp_path / f"{k}", r, checkpointing=False)
        assert activation_bytes(shape, "qlora", True, r, 7) == pytest.approx(measured, rel=0.05), config
        without = _qlora_saved_bytes_per_token_layer(config, tmp_path / f"{k}", r, checkpointing=False, autocast=False)
        assert activation_bytes(shape, "qlora", False, r, 7) == pytest.approx(without, rel=0.05), config
        checkpointed = _qlora_saved_bytes_per_token_layer(config, tmp_path / f"{k}", r, checkpointing=True)
        tokens = 10**6  # the plan's parts are rounded to 0.1 MiB
        plan = memory_plan(shape, Experiment(task="t", method="qlora", batch_size=1, lora={"r": r}),
                           Device("cuda", "a device", 64 * 1024, bf16=True), [tokens], [1])
        # one row: row-by-row attention adds its per-token part and no padding
        per_token = activation_bytes(shape, "qlora", True, r, 7) + rows_attention_bytes(shape, True, False)[0]
        per_layer = per_token * tokens
        edges = tokens * shape.hidden * 4 * 3  # embedding output, final norm, last hidden states: float32
        kept_inputs = plan.checkpointed_mb * 2**20 - per_layer * 2 - edges
        assert kept_inputs / tokens / shape.layers == pytest.approx(checkpointed, rel=0.01), config


def test_fsdp_plan_holds_each_process_share_as_fsdp_shards_it():
    """FSDP2 shards a real Llama over N processes (a fake process group stands in for N-1 of them): a process's
    shards and its whole-held parameters are what the plan says, and training state divides the same way."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.testing._internal.distributed.fake_pg import FakeStore
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.training.plan import Device, fsdp_gathered, memory_plan

    rng = random.Random(5)
    device = Device("cpu", "a CPU", 64 * 1024, bf16=False)
    for _ in range(12):
        config, shards = _config(rng), rng.choice([2, 3, 4, 8])
        shape = Shape.of(config)
        dist.init_process_group("fake", rank=0, world_size=shards, store=FakeStore())
        try:
            model = LlamaForCausalLM(LlamaConfig(**config))
            layer = sum(p.numel() for p in model.model.layers[0].parameters())
            mesh = init_device_mesh("cpu", (shards,))
            for block in model.model.layers:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            local = sum(p.to_local().numel() for p in model.parameters())
        finally:
            dist.destroy_process_group()
        assert shape.layer_params == layer
        assert fsdp_gathered(shape) == shape.params - shape.layers * layer + 2 * layer
        # a shard is 1/N of each parameter, rounded up along its first dimension
        assert local == pytest.approx(shape.params / shards, rel=0.05), (config, shards)
        experiment = Experiment(task="t", method="full", batch_size=2)
        whole = memory_plan(shape, experiment, device, [10, 20, 30], [1, 1, 2])
        sharded = memory_plan(shape, experiment, device, [10, 20, 30], [1, 1, 2], shards=shards)
        assert sharded.trainable_mb == pytest.approx(whole.trainable_mb / shards, abs=0.1)
        assert sharded.weights_mb == pytest.approx(
            whole.weights_mb / shards + fsdp_gathered(shape) * 4 / 2**20, abs=0.1)
        # one CPU process counts glibc's retained buffers too; FSDP's workers return them (a fixed mmap threshold),
        # so they count what autograd keeps, as a GPU at the same precision does
        kept = memory_plan(shape, experiment, Device("cuda", "a GPU", device.memory_mb, bf16=False), [10, 20, 30],
                           [1, 1, 2])
        assert sharded.activations_mb == kept.activations_mb and sharded.activations_mb < whole.activations_mb
        assert sharded.logits_mb == whole.logits_mb


@pytest.mark.parametrize("method", ["lora", "full"])
def test_trainable_state_is_what_a_fused_adamw_step_holds(method):
    """After one step of the trainer's optimizer (fused AdamW) on random Llama shapes, in float32 and on a bf16
    device (LoRA's base in bf16, a full fine-tune's weights in float32, as the trainer loads them): the gradients
    and optimizer state held, and LoRA's own weights, are the plan's `trainable`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.training.plan import MIB, Device, memory_plan

    rng = random.Random(6 if method == "lora" else 8)
    for _ in range(4):
        config = _config(rng)
        shape = Shape.of(config)
        for dtype in (torch.float32, torch.bfloat16):
            # as the trainer loads it: a full fine-tune's weights stay float32 on a bf16 device too
            model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.float32 if method == "full" else dtype)
            experiment = Experiment(task="t", method=method, batch_size=1, **(
                {"lora": {"r": rng.choice([2, 8])}} if method == "lora" else {}))
            if method == "lora":
                model = get_peft_model(model, LoraConfig(r=experiment.lora.r, target_modules="all-linear",
                                                         task_type="CAUSAL_LM"))
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, fused=True)
            model(input_ids=torch.randint(0, config["vocab_size"], (1, 8)), labels=torch.randint(0, 9, (1, 8))
                  ).loss.backward()
            optimizer.step()
            held = sum(p.grad.nbytes for p in trainable) + sum(
                t.nbytes for state in optimizer.state.values() for name, t in state.items() if name != "step")
            if method == "lora":
                held += sum(p.nbytes for p in trainable)  # the adapter's weights (the base's are `weights`)
            device = Device("cuda" if dtype == torch.bfloat16 else "cpu", "a device", 64 * 1024,
                            bf16=dtype == torch.bfloat16)
            plan = memory_plan(shape, experiment, device, [8], [8])
            assert plan.trainable_mb == pytest.approx(held / MIB, abs=0.06), (config, dtype)


def _plan(rng: random.Random) -> MemoryPlan:
    parts = [round(rng.uniform(1, 5000), 1) for _ in range(7)]
    return MemoryPlan("a device", round(rng.uniform(500, 20000), 1), *parts, tokens_per_batch=100,
                      checkpointing=False, reason="")


def test_auto_checkpoints_exactly_when_the_run_would_not_fit():
    rng = random.Random(2)
    for _ in range(2000):
        plan = _plan(rng)
        auto = decide_checkpointing(plan, "auto")
        assert auto.checkpointing == (plan.peak(False) > plan.budget_mb and plan.peak(True) < plan.peak(False))
        assert auto.peak_mb == min(plan.peak(False), plan.peak(True)) if auto.checkpointing else plan.peak(False)
        assert decide_checkpointing(plan, "yes").checkpointing and not decide_checkpointing(plan, "no").checkpointing
        assert "auto" in auto.reason


def test_largest_batch_is_an_epochs_largest_micro_batch():
    rng = random.Random(3)
    for _ in range(500):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 60))]
        size = rng.randint(1, 16)
        largest = largest_batch(lengths, size, rng.randint(0, 9))
        assert max(lengths) <= largest <= sum(sorted(lengths)[-size:])
        fewer = largest_batch(lengths, size, 0, batches=rng.randint(1, 5))
        assert min(lengths) <= fewer <= sum(sorted(lengths)[-size:])
        assert largest_batch(lengths, 1, 0, batches=len(lengths)) == max(lengths)


def test_the_plans_micro_batches_are_the_ones_training_draws(lab, tiny_model_dir):
    """The plan sizes activations from the micro-batches the run will see, in the order training draws them over
    epochs (it shuffled with a generator of its own, so it sized batches the run never saw): the tokens each
    logged step took in are the plan's batches, step for step, across three epochs."""
    from llamalab.models import load_tokenizer, resolve_model
    from llamalab.runs.files import read_jsonl
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task
    from llamalab.training.plan import micro_batches
    from llamalab.training.trainer import build_dataset, train, training_subset

    write_experiment(lab, "order", f"task: sentiment\nbase_model: {tiny_model_dir}\nbatch_size: 4\n"
                                   "train_examples: 10\nmax_steps: 8\nseed: 3\nlora: {r: 4, alpha: 8}\n")
    record = train(lab, "order")
    task = load_task(lab.task_path("sentiment"), lab.root)
    prompter = Prompter(task, load_tokenizer(resolve_model(str(tiny_model_dir))), task.prompt.format)
    dataset, _ = build_dataset(prompter, training_subset(load_task_data(task).split("train"), 10, 3), 1024)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    seen = [row["num_input_tokens_seen"] for row in read_jsonl(record.folder / "train_log.jsonl")
            if "num_input_tokens_seen" in row]
    steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    assert steps == [sum(b) for b in micro_batches(lengths, 4, 3, batches=8)]


@pytest.mark.parametrize("seed", range(8))
def test_the_plan_covers_every_processs_micro_batches_and_every_epoch(seed):
    """With N processes accelerate deals the shuffled batches out (process p draws p, p + N, ...): the plan of one
    process's share must look at all of them, over every epoch (each reshuffled), not the first 1/N of them."""
    from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
    from torch.utils.data import BatchSampler

    from llamalab.training.plan import Device, memory_plan

    rng = random.Random(seed)
    shape = Shape.of(_config(rng))
    lengths = [rng.randint(5, 300) for _ in range(rng.randint(8, 60))]
    processes, share = rng.choice([1, 2, 3]), rng.randint(1, 6)
    steps = rng.choice([None, rng.randint(1, 12)])
    epochs = rng.choice([1, 2, 3])
    experiment = Experiment(task="t", batch_size=share, seed=rng.randint(0, 9), epochs=epochs, max_steps=steps)
    sampler = SeedableRandomSampler(range(len(lengths)), data_seed=experiment.seed)
    drawn, epoch = [], 0
    while (len(drawn) < steps * processes) if steps else epoch < epochs:
        sampler.set_epoch(epoch)
        for p in range(processes):
            shard = BatchSamplerShard(BatchSampler(sampler, share, drop_last=False), processes, p, even_batches=False)
            sampler.set_epoch(epoch)
            drawn += [sum(lengths[i] for i in batch) for batch in shard]
        epoch += 1
    plan = memory_plan(shape, experiment, Device("cuda", "a GPU", 1e9, bf16=True), lengths, [1] * len(lengths),
                       processes=processes)
    assert plan.tokens_per_batch >= max(drawn[:steps * processes] if steps else drawn)


def test_memory_sizes_parse_and_bad_ones_say_how():
    assert parse_memory("24GB") == parse_memory("24 GiB") == 24 * 1024 and parse_memory("512MiB") == 512
    with pytest.raises(LlamalabError, match="such as 24GB"):
        parse_memory("lots")
    with pytest.raises(LlamalabError, match="key 'memory_limit'"):
        Experiment(task="sentiment", memory_limit="huge")
    with pytest.raises(LlamalabError, match="(?s)memory_limit.*more than 0"):  # planned as 0 MiB usable
        Experiment(task="sentiment", memory_limit="0GB")

    from llamalab.training.plan import resolve_device

    assert resolve_device("CPU").kind == resolve_device("cpu").kind == "cpu"  # the keywords in any case
    assert resolve_device("24gb").memory_mb == 24 * 1024
    with pytest.raises(LlamalabError, match="must be more than 0"):
        resolve_device("0GB")
    with pytest.raises(LlamalabError, match="a card's name does not say its memory"):
        resolve_device("H100")
    for empty in ("", "  "):  # not taken for this machine: leaving --device out says that
        with pytest.raises(LlamalabError, match="leave --device out"):
            resolve_device(empty)


def test_a_gpu_plan_for_lora_counts_no_conversion_copy_on_the_card(lab, tmp_path):
    """LoRA and full models load (and convert to bf16) in CPU memory and move to the card converted: only QLoRA
    quantizes on the card, holding the file's weights there for a moment. The plan counted a float32 file's
    conversion copy on the card for LoRA too (the whole 770 MiB "load" term of the demo's plan)."""
    import json

    from llamalab.training.plan import Device, Shape, memory_plan

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}))
    shape = Shape.of_folder(folder)
    card = Device("cuda", "a 24GB GPU", 24 * 1024, True)
    lengths, answers = [40] * 16, [4] * 16
    lora = memory_plan(shape, Experiment(task="sentiment"), card, lengths, answers, file_bytes_per_param=4.0)
    assert lora.load_mb == round(shape.params * 2 / 2**20, 1)  # the bf16 weights only
    qlora = memory_plan(shape, Experiment(task="sentiment", method="qlora"), card, lengths, answers,
                        file_bytes_per_param=4.0)
    assert qlora.load_mb > lora.load_mb  # the float32 file's weights held on the card while quantizing


def test_later_settings_at_their_default_keep_older_config_hashes(lab):
    from llamalab.training.experiment import load_experiment

    _, resolved = load_experiment(lab.experiment_path("sentiment-lora"))
    assert "activation_checkpointing" not in resolved and "memory_limit" not in resolved
    for value in ("yes", True):  # `activation_checkpointing=yes` on the command line arrives as YAML's True
        _, asked = load_experiment(lab.experiment_path("sentiment-lora"), {"activation_checkpointing": value})
        assert asked["activation_checkpointing"] == "yes"


def test_training_records_the_plan_and_checkpoints_when_told_the_device_is_small(lab, tiny_model_dir):
    from rich.console import Console

    from llamalab.training.trainer import train

    write_experiment(lab, "tiny", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 3\ntrain_examples: 16\n"
                                  "lora: {r: 4, alpha: 8}\n")
    console = Console(stderr=True, record=True)
    roomy = train(lab, "tiny", console=console).run.memory
    assert not roomy.activation_checkpointing and roomy.reason.startswith("auto: fits")
    assert roomy.predicted_mb > 0 and roomy.measured_mb is not None and roomy.flops_per_token > 0
    assert "memory plan:" in console.export_text()
    small = train(lab, "tiny", memory_limit="1MiB").run
    assert small.memory.activation_checkpointing and "would not fit" in small.memory.reason
    assert small.finished and small.metrics.steps == 3
    forced = train(lab, "tiny", activation_checkpointing="yes").run.memory
    assert forced.activation_checkpointing and forced.reason.startswith("asked for")


def test_qlora_trains_on_a_4bit_base_and_its_adapter_evaluates(lab, tiny_model_dir, monkeypatch):
    import sys

    import torch
    from safetensors.torch import load_file

    from llamalab.evaluation.evaluate import evaluate
    from llamalab.training.trainer import train

    write_experiment(lab, "tiny-q", f"task: sentiment\nbase_model: {tiny_model_dir}\nmethod: qlora\nmax_steps: 3\n"
                                    "train_examples: 16\nlora: {r: 4, alpha: 8}\n")
    with monkeypatch.context() as patch:  # a machine without bitsandbytes: a clear error, at once
        patch.setitem(sys.modules, "bitsandbytes", None)
        with pytest.raises(LlamalabError, match="needs bitsandbytes"):
            train(lab, "tiny-q")
    record = train(lab, "tiny-q")
    assert record.run.finished and (record.folder / "adapter" / "adapter_config.json").is_file()
    assert record.run.metrics.steps == 3 and record.run.memory.measured_mb is not None
    # TRL trains a QLoRA adapter in bf16 (the plan counts 8 bytes an adapter parameter, not LoRA's 16)
    assert {t.dtype for t in load_file(record.folder / "adapter" / "adapter_model.safetensors").values()} == {
        torch.bfloat16}
    result = evaluate(lab, record.id, task="sentiment", limit=8)
    assert result.run.finished and result.run.system.train_run == record.id


@pytest.mark.slow
def test_the_gpu_bench_runs_end_to_end_on_a_tiny_shape(tmp_path, tokenizer):
    """bench/gpu_train.py is run on a lent GPU with little time to spare: it must work the first time, as it is run
    there (with the tokenizer as a folder, as bench/offline_bundle.py sends it)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "bench" / "gpu_train.py"
    out = tmp_path / "results.json"
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    done = subprocess.run([sys.executable, str(script), "--shapes", "tiny", "--steps", "2", "--batch", "2",
                           "--score-limit", "8", "--work", str(tmp_path), "--out", str(out),
                           "--tokenizer", str(tmp_path / "tokenizer")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["rows_attention_error"] < 1e-5  # float32 on a CPU
    runs = results["shapes"]["tiny"]["runs"]
    assert set(runs) == {"TRL default", "llamalab", "label scoring", "label scoring, bf16 alone"}
    assert not [run["error"] for run in runs.values() if "error" in run]  # a failing run is kept, not raised
    assert runs["llamalab"]["tokens_per_s"] > 0 and runs["llamalab"]["predicted_mib"] > 0
    assert runs["llamalab"]["first_step_s"] > 0 and runs["TRL default"]["first_step_s"] > 0
    for name in ("label scoring", "label scoring, bf16 alone"):  # float32 on a CPU: nothing rescored either way
        assert runs[name]["forward_tokens_per_s"] > 0 and runs[name]["precision"] == "float32"
        assert not runs[name]["rechecked_float32"]
    assert "x TRL default" in done.stdout and "of the card" in done.stdout

    # One deadline for the whole bench: with too little left, each run is recorded as skipped, not started, and
    # the results file is still written
    done = subprocess.run([sys.executable, str(script), "--shapes", "tiny", "--budget-s", "5", "--work",
                           str(tmp_path), "--out", str(out), "--tokenizer", str(tmp_path / "tokenizer")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["shapes"]["tiny"]["error"].startswith("skipped: ") and "--budget-s" in results["shapes"]["tiny"][
        "error"]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_a_recorded_experiment_reads_back_as_itself(method):
    """A run's config.yaml (every setting, defaults included) is what the workers of `--processes` and the Python
    API read back: a full fine-tune's lists the default `lora` block, which must not count as given."""
    from llamalab.training.experiment import resolve_experiment

    experiment, resolved = resolve_experiment({"task": "t", "method": method, "batch_size": 4}, "experiment")
    again, resolved_again = resolve_experiment(resolved, "config.yaml")
    assert again == experiment and resolved_again == resolved
    if method == "full":
        with pytest.raises(LlamalabError, match="method is full"):
            resolve_experiment({**resolved, "lora": {**resolved["lora"], "r": 4}}, "config.yaml")


@pytest.mark.slow
def test_plan_for_several_processes_is_one_process_share(lab, monkeypatch):
    """`llamalab plan --processes N`: each process's micro-batch is its share of the global batch (LoRA keeps the
    whole model in each); a global batch that does not divide is refused, as `train` refuses it."""
    from llamalab.training.plan import plan_run

    one = plan_run(lab, "sentiment-lora", "24GB", 1, max_steps=10)
    two = plan_run(lab, "sentiment-lora", "24GB", 2, max_steps=10)
    assert two.tokens_per_batch < one.tokens_per_batch
    assert two.weights_mb == one.weights_mb and two.trainable_mb == one.trainable_mb  # DDP: not sharded
    full_one = plan_run(lab, "sentiment-lora", "24GB", 1, method="full", max_steps=10)
    full_two = plan_run(lab, "sentiment-lora", "24GB", 2, method="full", max_steps=10)
    assert full_two.trainable_mb == pytest.approx(full_one.trainable_mb / 2, abs=0.1)  # FSDP: sharded
    with pytest.raises(LlamalabError, match="multiple of processes"):
        plan_run(lab, "sentiment-lora", "24GB", 3)
    # On a CPU the processes share the machine's memory (on GPUs each has its card): each plans against its share,
    # so a run that fits one process but not two side by side turns checkpointing on.
    cpu_one = plan_run(lab, "sentiment-lora", "cpu", 2, max_steps=10)
    limit = f"{cpu_one.peak(False) * 1.5 / 1024 / 0.9:.3f}GB"  # one process would fit, two would not
    for processes, checkpointing in ((1, False), (2, True)):
        planned = plan_run(lab, "sentiment-lora", "cpu", processes, max_steps=10, memory_limit=limit)
        assert planned.checkpointing == checkpointing, (processes, planned.reason)
    assert plan_run(lab, "sentiment-lora", "24GB", 2, max_steps=10, memory_limit=limit).budget_mb == pytest.approx(
        plan_run(lab, "sentiment-lora", "24GB", 1, max_steps=10, memory_limit=limit).budget_mb)  # a card each
    # a study's cells run side by side share the machine too (the cell worker says how many run at once)
    monkeypatch.setenv("LLAMALAB_CELLS_AT_ONCE", "2")
    assert plan_run(lab, "sentiment-lora", "cpu", 1, max_steps=10, memory_limit=limit).checkpointing


def test_time_per_epoch_for_several_processes_learns_from_runs_of_its_own_kind(tmp_path):
    """The plan's time: past efficiency comes only from finished runs of the same method in as many processes on
    the same device (on GPUs per card), and on GPUs the epoch's tokens are split between the cards; on random
    records, devices and process counts."""
    import json
    from statistics import median

    from llamalab.runs.record import RunRecord
    from llamalab.training.plan import DEFAULT_EFFICIENCY, Device, flops_per_token, past_efficiency, plan_training
    from tests.records import train_fields

    rng = random.Random(9)
    learned = 0
    config = _config(rng)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for case in range(6):
        kind = rng.choice(["cpu", "cuda"])
        device = Device(kind, f"device {case}", 80 * 1024, bf16=kind == "cuda", matmul_tflops=rng.uniform(0.1, 900))
        runs_dir, expected = tmp_path / f"runs{case}", []
        method, processes = rng.choice(["lora", "full"]), rng.choice([1, 2, 4])
        mine = rng.uniform(1e7, 1e9)  # this model's FLOPs per token: runs of models of about its size count
        for k in range(60):
            their_method, their_processes = rng.choice(["lora", "full"]), rng.choice([1, 2, 4])
            where = rng.choice([device.describe(), "another device (8.0 GiB)",
                                f"{device.name}, planned as 24GB (24.0 GiB)",
                                f"{device.name}, a 1/{their_processes} share for each process (40.0 GiB)"])
            record = RunRecord.create(runs_dir, "train", f"r{k}", {"method": their_method}, **train_fields())
            rate, fpt = rng.uniform(10, 5000), mine * rng.choice([rng.uniform(0.5, 2), rng.uniform(0.01, 0.4),
                                                                  rng.uniform(2.5, 100)])
            record.update(memory={"device": where, "predicted_mb": 1.0, "activation_checkpointing": False,
                                  "reason": "", "flops_per_token": fpt},
                          throughput={"tokens_per_s": rate}, processes=their_processes)
            if rng.random() < 0.8:
                record.update(status="finished")
                if (their_method, their_processes) == (method, processes) and where.startswith(device.name) \
                        and 0.5 <= fpt / mine <= 2:
                    cards = processes if kind == "cuda" else 1
                    expected.append(rate * fpt / (device.matmul_tflops * 1e12 * cards))
        found = past_efficiency(runs_dir, device, method, processes, mine)
        assert sorted(found) == pytest.approx(sorted(expected))
        lengths = [rng.randint(5, 200) for _ in range(rng.randint(8, 40))]
        experiment = Experiment(task="t", method=method, batch_size=4 * processes)
        plan = plan_training(experiment, folder, lengths, [1] * len(lengths), device, found, processes)
        efficiency = median(expected) if expected else DEFAULT_EFFICIENCY[kind, method == "full" and processes > 1]
        learned += bool(expected)
        tokens = sum(lengths) / (processes if kind == "cuda" else 1)
        seconds = tokens * flops_per_token(Shape.of(config), method) / (device.matmul_tflops * 1e12 * efficiency)
        assert plan.seconds_per_epoch == pytest.approx(seconds, abs=0.051)
    assert learned >= 2  # the random records did give some plans past runs to learn from


def _offline_bundle():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("offline_bundle", Path(__file__).parents[1] / "bench" /
                                                  "offline_bundle.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    return bundle


def test_the_offline_bundle_keeps_only_the_named_cuda_library_of_bitsandbytes(tmp_path):
    """bench/offline_bundle.py slims bitsandbytes' wheel (one native library per CUDA version, 125 MB unpacked) to
    the machine's CUDA version and the CPU library, keeping every other file; an unknown version is refused."""
    import zipfile

    bundle = _offline_bundle()
    libraries = ["cpu", "cuda126", "cuda130", "cuda132", "rocm64", "xpu2026"]
    names = ["bitsandbytes/__init__.py", *(f"bitsandbytes/libbitsandbytes_{k}.so" for k in libraries),
             "bitsandbytes-0.50.2.dist-info/RECORD"]
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, name * 10)
    bundle.slim_bitsandbytes(wheel, "130")
    with zipfile.ZipFile(wheel) as z:
        assert sorted(z.namelist()) == sorted(n for n in names if not n.endswith(".so") or
                                              n.endswith(("_cpu.so", "_cuda130.so")))
        assert all(z.read(n) == (n * 10).encode() for n in z.namelist())
    with pytest.raises(SystemExit, match="no library for CUDA 999"):
        bundle.slim_bitsandbytes(wheel, "999")
    assert zipfile.ZipFile(wheel).namelist()  # a refused slimming leaves the wheel as it was


@pytest.mark.parametrize(("wheel", "any_python"), [
    ("trl-1.16.0-py3-none-any.whl", True),
    ("pylatexenc-2.11-py2.py3-none-any.whl", True),
    ("bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", True),  # one library for every Python 3
    ("multiprocess-0.70.19-py311-none-any.whl", False),  # pure Python, but made for 3.11 alone
    ("pydantic_core-2.50.5-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", False),
    ("xxhash-4.1.0-cp311-cp311-manylinux_2_17_x86_64.whl", False),
    ("foo-1.0-1build-cp39-abi3-manylinux_2_17_x86_64.whl", False),  # a build tag, and a stable-ABI extension
])
def test_the_offline_bundle_fetches_the_gpu_machines_wheel_where_a_wheel_is_made_for_one_python(wheel, any_python):
    """The GPU machine's python3 may be another version than this one: a wheel that is compiled, or made for one
    Python version, is fetched for the machine's (one built here would not install there)."""
    assert _offline_bundle().for_any_python(wheel) is any_python


def test_a_cpu_plan_counts_what_the_allocator_keeps_on_random_shapes():
    """On a CPU one process's activations are what autograd keeps (the formulas, at the largest micro-batch) plus
    the freed buffers glibc keeps (CPU_RETAINED: the same again without checkpointing, half of it with); a GPU
    counts what autograd keeps, with row-by-row attention's copies at its heaviest micro-batch."""
    from llamalab.training.plan import (
        CPU_RETAINED,
        MIB,
        Device,
        adapted,
        memory_plan,
        micro_batches,
        padding,
        rows_attention_bytes,
    )

    rng = random.Random(41)
    for _ in range(30):
        shape = Shape.of(_config(rng))
        experiment = Experiment(task="t", method=rng.choice(["lora", "full"]), batch_size=rng.randint(1, 8))
        lengths = [rng.randint(5, 300) for _ in range(rng.randint(1, 40))]
        answers = [rng.randint(1, 4) for _ in lengths]
        cpu = memory_plan(shape, experiment, Device("cpu", "a CPU", 64 * 1024, bf16=False), lengths, answers)
        gpu = memory_plan(shape, experiment, Device("cuda", "a GPU", 64 * 1024, bf16=False), lengths, answers)
        n = len(adapted(shape, experiment.lora.target_modules)) if experiment.method == "lora" else 0
        batches = micro_batches(lengths, experiment.batch_size, experiment.seed)

        def kept(b: list[int], rows: bool, bf16: bool, shape=shape, method=experiment.method, n=n,
                 r=experiment.lora.r) -> tuple[float, float]:  # (activations, checkpointed) in MiB
            formula = activation_bytes(shape, method, bf16, r if n else 0, n)
            per_token, per_pad = rows_attention_bytes(shape, bf16, cpu=False)
            layer = sum(b) * formula + (sum(b) * per_token + padding(b) * per_pad if rows else 0)
            stream = 2 if bf16 else 4
            edges = sum(b) * shape.hidden * stream * 3
            return ((layer * (shape.layers + 1) + edges) / MIB,
                    (sum(b) * shape.hidden * stream * shape.layers + layer * 2 + edges) / MIB)

        largest = kept(max(batches, key=sum), rows=False, bf16=False)
        assert cpu.tokens_per_batch == max(sum(b) for b in batches)
        assert cpu.components["activations"] == pytest.approx(largest[0] * (1 + CPU_RETAINED[False]), abs=0.2)
        assert cpu.components["checkpointed"] == pytest.approx(largest[1] + largest[0] * CPU_RETAINED[True], abs=0.2)
        # each part at the micro-batch that needs the most of it (padding can make those two differ), in float32
        # on a card without bf16
        on_gpu = [kept(b, True, bf16=False) for b in batches]
        assert gpu.components["activations"] == pytest.approx(max(k[0] for k in on_gpu), abs=0.1)
        assert gpu.components["checkpointed"] == pytest.approx(max(k[1] for k in on_gpu), abs=0.1)
        assert cpu.workspace_mb == 0  # no fixed weight copy outside FSDP


@pytest.mark.parametrize("seed", range(20))
def test_the_gpu_benchs_step_timing_on_random_step_ends(seed):
    """The first step's seconds, the median of the later ones, and the rate over the later half of the steps."""
    import importlib.util
    import statistics
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("gpu_train", Path(__file__).parents[1] / "bench" / "gpu_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = random.Random(seed)
    steps = [rng.uniform(0.01, 5) for _ in range(rng.randint(1, 40))]
    clock = bench.step_clock()
    clock.ends = [100.0]
    for seconds in steps:
        clock.ends.append(clock.ends[-1] + seconds)
    tokens = rng.uniform(1e3, 1e6)
    timing = clock.timing(tokens)
    assert timing["first_step_s"] == round(steps[0], 3)
    if len(steps) < 4:
        assert set(timing) == {"first_step_s"}
        return
    half = len(steps) // 2
    assert timing["median_step_s"] == round(statistics.median(steps[1:]), 4)
    later = tokens * (len(steps) - half) / len(steps)  # the later steps' share of the tokens
    assert timing["steady_tokens_per_s"] == pytest.approx(later / sum(steps[half:]), rel=1e-9)


def _rows_saved_bytes_per_layer(config: dict, lengths: list[int], bf16: bool) -> float:
    """What autograd keeps for one more LoRA layer over a padding-free batch of rows of these lengths, attended row
    by row as the trainer does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.training.attention import use_rows_attention

    starts = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]

    def kept(layers: int) -> int:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**{**config, "num_hidden_layers": layers}, attn_implementation="sdpa"))
        model = get_peft_model(model.to(torch.bfloat16 if bf16 else torch.float32),
                               LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        use_rows_attention(model)
        return _kept_bytes(model, config["vocab_size"], sum(lengths), bf16, position_ids=positions,
                           cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths),
                           max_length_k=max(lengths))

    return kept(2) - kept(1)


@pytest.mark.parametrize("seed", range(4))
def test_rows_attention_keeps_what_the_plan_counts_on_ragged_batches(seed):
    """The plan's bytes per layer for a padding-free batch of ragged rows, attended row by row (pads included),
    against autograd's saved tensors, in float32 and under bf16 autocast."""
    from llamalab.training.plan import padding, rows_attention_bytes

    rng = random.Random(seed)
    config = {**_config(rng), "intermediate_size": rng.choice([64, 128])}
    shape = Shape.of(config)
    lengths = [rng.randint(2, 48) for _ in range(rng.randint(1, 6))]
    for bf16 in (False, True):
        per_token, per_pad = rows_attention_bytes(shape, bf16, cpu=True)
        predicted = (activation_bytes(shape, "lora", bf16, 8, 7) + per_token) * sum(lengths) + per_pad * padding(
            lengths)
        measured = _rows_saved_bytes_per_layer(config, lengths, bf16)
        assert predicted == pytest.approx(measured, rel=0.1), (config, lengths, bf16)


@pytest.mark.parametrize(("targets", "expected"), [
    ("all-linear", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
    (["self_attn.o_proj", "mlp.down_proj"], ["o_proj", "down_proj"]),
    (["proj"], []),  # PEFT matches a list entry as the whole name or its last parts, not any ending
    ("q_proj", []),  # a string is a regular expression over the whole dotted name
    (r".*\.(q_proj|v_proj)", ["q_proj", "v_proj"]),
    (r".*mlp\..*", ["gate_proj", "up_proj", "down_proj"]),
])
def test_lora_targets_are_matched_as_peft_matches_them(targets, expected):
    from llamalab.training.plan import Shape, adapted

    shape = Shape.of({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "vocab_size": 100})
    assert adapted(shape, targets) == expected


def test_targets_naming_no_layer_and_models_llamalab_cannot_plan_are_refused_before_a_run(lab, tiny_model_dir,
                                                                                           tmp_path):
    import json
    import shutil

    from llamalab.runs.record import list_runs
    from llamalab.training.trainer import train
    from tests.conftest import write_experiment

    write_experiment(lab, "typo", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\n"
                                  "lora: {target_modules: [nonexistent_proj]}\n")
    with pytest.raises(LlamalabError, match=r"key 'lora.target_modules': \['nonexistent_proj'\] names none of"):
        train(lab, "typo")
    other = tmp_path / "gpt2ish"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config.pop("hidden_size")
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "n_embd": 32}))
    write_experiment(lab, "other", f"task: sentiment\nbase_model: {other}\nmax_steps: 1\n")
    with pytest.raises(LlamalabError, match=r"config.json: no 'hidden_size': llamalab plans and trains Llama-family"):
        train(lab, "other")
    assert list_runs(lab.runs_dir) == []  # no run folder left behind


def test_plan_and_train_refuse_alike_before_a_run(lab, tiny_model_dir, monkeypatch):
    """Targets train refuses are refused by plan too (it planned 0 trainable MiB); a bare layer name says how PEFT
    reads a string; a pattern that does not compile names the key (it was re.error's traceback); QLoRA without
    bitsandbytes is refused before a run folder exists (a failed run was left behind)."""
    import sys

    from llamalab.runs.record import list_runs
    from llamalab.training.plan import plan_run
    from llamalab.training.trainer import train
    from tests.conftest import write_experiment

    write_experiment(lab, "bare", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\n"
                                  "lora: {target_modules: q_proj}\n")
    for attempt in (lambda: plan_run(lab, "bare", "cpu"), lambda: train(lab, "bare")):
        with pytest.raises(LlamalabError, match=r"a single string is a regular expression .* write a list, \[q_proj\]"):
            attempt()
    write_experiment(lab, "broken", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\n"
                                    "lora: {target_modules: '.*q_proj('}\n")
    for attempt in (lambda: plan_run(lab, "broken", "cpu"), lambda: train(lab, "broken")):
        with pytest.raises(LlamalabError, match=r"broken.yaml:4: key 'lora.target_modules': '.\*q_proj\(' is not a "
                                                r"valid regular expression"):
            attempt()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as where it is not installed
    write_experiment(lab, "quantized", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\n"
                                       "method: qlora\n")
    with pytest.raises(LlamalabError, match="method: qlora needs bitsandbytes"):
        train(lab, "quantized")
    assert list_runs(lab.runs_dir) == []


def test_a_gpu_full_fine_tune_without_bf16_is_planned_in_float32_and_device_names_ignore_case(lab, tiny_model_dir):
    from llamalab.training.plan import plan_run
    from tests.conftest import write_experiment

    write_experiment(lab, "full", f"task: sentiment\nbase_model: {tiny_model_dir}\nmethod: full\nmax_steps: 1\n")
    auto, off = (plan_run(lab, "full", "24GB", bf16=value) for value in ("yes", "no"))
    assert off.activations_mb > auto.activations_mb and off.logits_mb > auto.logits_mb and off.workspace_mb == 0
    timed = [plan_run(lab, "full", name) for name in ("cpu", "CPU", " Cpu ")]
    assert all(p.seconds_per_epoch is not None for p in timed)  # "CPU" was "a device named by its memory alone"
    # LoRA with `bf16: no` trains on a float32 base on a GPU too (it was planned in bf16 and loaded in bf16)
    lora_bf16, lora_float32 = (plan_run(lab, "full", "24GB", method="lora", bf16=value) for value in ("auto", "no"))
    assert lora_float32.weights_mb == pytest.approx(2 * lora_bf16.weights_mb, abs=0.15)  # each rounded to 0.1
    assert lora_float32.activations_mb > lora_bf16.activations_mb


@pytest.mark.parametrize("seed", range(20))
def test_seconds_per_epoch_of_past_runs_are_over_the_epochs_their_timed_sessions_trained(tmp_path, seed):
    """A resumed run's train_s covers only the sessions that recorded their time: divided by the epochs those
    sessions trained (train_epochs), never by the run's epochs; an older resumed record that does not say has none."""
    from llamalab.runs.record import RunRecord
    from llamalab.training.plan import past_runs
    from tests.records import train_fields

    rng = random.Random(seed)
    lab = type("Lab", (), {"runs_dir": tmp_path / "runs"})()
    expected = {}
    for k in range(rng.randint(1, 8)):
        record = RunRecord.create(lab.runs_dir, "train", f"r{k}", {"k": k}, **train_fields())
        epochs, train_s = rng.choice([1.0, 2.0, 3.0]), round(rng.uniform(1, 1000), 2)
        resumed = rng.random() < 0.5
        timed = round(rng.uniform(0.1, epochs), 4) if resumed else epochs
        timings = {"train_s": train_s} | ({"train_epochs": timed} if rng.random() < 0.7 else {})
        record.update(status="finished", timings=timings, resumed=["2026-01-01T00:00:00+00:00"] if resumed else [],
                      metrics={"first_loss": 1.0, "final_loss": 0.5, "steps": 10, "epochs": epochs},
                      memory={"device": "cpu (8.0 GiB)", "predicted_mb": 100.0, "measured_mb": 90.0,
                              "activation_checkpointing": False, "reason": ""})
        over = timings.get("train_epochs") or (None if resumed else epochs)
        expected[record.id] = round(train_s / over, 1) if over else None
    assert {row.id: row.measured_s_per_epoch for row in past_runs(lab)} == expected


def test_the_readmes_7b_plan_figures_are_what_the_plan_says(tmp_path):
    """The README's plan for the GPU bench's 7B shape (batch 16 of gsm8k rows in plain format, LoRA r16): without
    checkpointing on an 80 GB card, told 24 GB (checkpointing on), and QLoRA told 24 GB; recomputed here, so a
    change to the plan that moves them fails until the README says the new figures."""
    import importlib.util
    import re
    from pathlib import Path

    from llamalab.lab import init_lab
    from llamalab.training.experiment import Experiment
    from llamalab.training.plan import plan_run

    root = Path(__file__).parents[1]
    spec = importlib.util.spec_from_file_location("gpu_train", root / "bench" / "gpu_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lab = init_lab(tmp_path / "lab")
    bench.make_model("7b", tmp_path / "llama-7b", weights=False)
    experiment = Experiment(task="gsm8k", base_model=str(tmp_path / "llama-7b"), batch_size=16, max_steps=30,
                            train_examples=480, save_steps=10**6, max_length=1024, format="plain")
    roomy, small = plan_run(lab, experiment, "80GB"), plan_run(lab, experiment, "24GB")
    qlora = plan_run(lab, experiment, "24GB", method="qlora")
    assert not roomy.checkpointing and small.checkpointing and qlora.checkpointing
    readme = " ".join((root / "README.md").read_text().split())  # one line: a figure may wrap
    section = readme[readme.index("For the 7B bench shape"):][:1200]

    def mib(plan) -> str:
        return f"{plan.peak_mb:,.0f} MiB ({plan.peak_mb / 1024:.1f} GiB)"

    for shown in (f"{mib(roomy)} without checkpointing", f"({roomy.tokens_per_batch:,} tokens,",
                  f"{mib(small)} predicted", f"at 24 GB: {mib(qlora)}"):
        assert shown in section, (shown, re.sub(r"\s+", " ", section))


def test_the_readmes_cpu_plan_tables_predict_what_the_plan_says(lab, monkeypatch):
    """Each row of the README's two CPU tables (LoRA on the demo's experiment, and full fine-tunes) names its
    overrides; its predicted column is recomputed here (the full table's had gone stale by 50 MiB when the plan
    changed and only the LoRA table was measured again), on a CPU like the table's: the LoRA table's computes
    bf16 natively (AMX), the full table's does not."""
    import re
    from pathlib import Path

    from llamalab.training import plan as planning
    from llamalab.training.plan import plan_run

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = re.findall(r"^\| (batch \d+.*?|`method: qlora`.*?|\d process.*?) \| ([\d,]+) MiB \|", readme, re.M)
    assert len(rows) == 11, rows
    for name, predicted in rows:
        full = "process" in name
        overrides = {"batch_size": 8 if full else int(re.search(r"batch (\d+)", name).group(1)),
                     "max_steps": 8 if full else int((re.search(r"(\d+) steps", name) or [0, 6])[1])}
        if "qlora" in name:
            overrides["method"] = "qlora"
        if full:
            overrides["method"] = "full"
        if "float32" in name:
            overrides["bf16"] = "no"
        if "checkpointing on" in name:
            overrides["activation_checkpointing"] = "yes"
        processes = 2 if name.startswith("2 processes") else 1
        monkeypatch.setattr(planning, "cpu_has_bf16", lambda full=full: not full)
        plan = plan_run(lab, "sentiment-lora", "cpu", processes, **overrides)
        assert f"{plan.peak_mb:,.0f}" == predicted, (name, overrides, plan.peak_mb)


def test_plan_times_a_run_that_stops_at_max_steps(lab, tiny_model_dir):
    """`plan` said "N s per epoch" for a run that stops after 4 steps of an epoch's 150 (and printed 0 s for
    0.4 s): it says what the run itself takes too."""
    from typer.testing import CliRunner

    from llamalab.cli import app

    write_experiment(lab, "short", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 3\n")
    result = CliRunner().invoke(app, ["plan", "short", "--device", "cpu", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    match = re.search(r"time: ([\d.,]+) s per epoch \((\d+) steps\); the run stops at max_steps 3: ([\d.,]+) s", said)
    assert match, said
    epoch, steps, run = float(match[1].replace(",", "")), int(match[2]), float(match[3].replace(",", ""))
    assert run == pytest.approx(epoch * 3 / steps, rel=0.06, abs=0.06)


def test_a_second_peak_in_one_process_counts_what_reuses_freed_memory():
    """A study trains its cells one after another in one process: the second measured less than half its peak
    (596 against 1,304 MiB), its buffers taken from the first's, which glibc kept resident. The measurement gives
    freed memory back first; 200 MiB of 64 KiB buffers allocated after 400 MiB were freed measure 200 MiB (0
    without)."""
    import torch

    from llamalab.training.plan import PeakMemory

    blocks = [torch.ones(16384) for _ in range(6400)]  # 400 MiB in 64 KiB pieces: glibc's heap, not mmap
    del blocks
    with PeakMemory() as peak:
        again = [torch.ones(16384) for _ in range(3200)]
    assert peak.mb == pytest.approx(200, abs=25)
    del again


def test_plan_names_the_experiment_file_of_a_mistyped_task(lab, tiny_model_dir):
    from llamalab.training.plan import plan_run

    write_experiment(lab, "typo", f"task: sentimnt\nbase_model: {tiny_model_dir}\n")
    with pytest.raises(LlamalabError, match=r"typo.yaml: key 'task': no task named 'sentimnt'.*did you mean"):
        plan_run(lab, "typo", "cpu")


def test_the_readmes_bf16_cpu_plan_sentences_predict_what_the_plan_says(lab, monkeypatch):
    """The README's sentences on bf16 autocast on a CPU (AMX) give predicted and measured figures outside the
    tables: each predicted one is recomputed here, and each error is the one its two figures give."""
    import re
    from pathlib import Path

    from llamalab.training import plan as planning
    from llamalab.training.plan import plan_run

    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    monkeypatch.setattr(planning, "cpu_has_bf16", lambda: True)
    full = {"method": "full", "batch_size": 8, "max_steps": 8}
    cases = [(r"Run again that day on the same CPU model: ([\d,]+) MiB predicted, ([\d,]+) measured \(([+-]\d+)%\)",
              1, {"batch_size": 32, "max_steps": 6}),
             (r"in one process ([\d,]+) MiB predicted, ([\d,]+) MiB measured \(([+-]\d+)%", 1, full),
             (r"in 2 processes \(FSDP\) ([\d,]+) MiB predicted, ([\d,]+) MiB measured \(([+-]\d+)%\)", 2, full),
             (r"activation checkpointing on ([\d,]+) MiB predicted, ([\d,]+) MiB measured \(([+-]\d+)%\)", 2,
              {**full, "activation_checkpointing": "yes"})]
    for pattern, processes, overrides in cases:
        shown = re.search(pattern, readme)
        assert shown, pattern
        predicted, measured = (float(shown[k].replace(",", "")) for k in (1, 2))
        assert f"{plan_run(lab, 'sentiment-lora', 'cpu', processes, **overrides).peak_mb:,.0f}" == shown[1], pattern
        assert f"{predicted / measured - 1:+.0%}" == f"{int(shown[3]):+d}%", pattern
