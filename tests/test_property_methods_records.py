"""Property tests of the methods section against the records it is written from: random but valid train and eval
records (older ones lacking fields too), every claim the text makes parsed back and compared with the record.

Covered: a fine-tune's recipe (base model, LoRA/QLoRA/full and its rank, alpha, dropout and targets, AdamW's
learning rate, schedule, warm-up, weight decay, betas, epsilon and clipping, batch size and accumulation, optimizer
steps and epochs), its training data (examples kept, drawn, skipped, the subset and its seed, another task's
split), its seed, precision, prompt format, losses, time, speed, memory, processes and hardware; an evaluation's
scoring (protocol, normalisation, precision, tokenization, decoding budget, parsing), its prompts (format, shots,
shot seed) and which examples it saw (all of a split, a `--limit` subset "K of the N", a split whose size is not
recorded), each attributed to the right system; and the whole `methods_paragraphs` of random labs.

Records are made by hand (no model, no network). Claims the text once made that the records did not support are
pinned at the end, each with the smallest record that showed it.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from llamalab.evaluation.compare import format_seconds
from llamalab.lab import Lab
from llamalab.publish.methods import (
    _Eval,
    _examples_sentence,
    _intervals,
    _prompts,
    _sample,
    _scoring,
    _training,
    methods_paragraphs,
)
from llamalab.publish.results import task_boards, task_evals
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord, now_iso
from llamalab.runs.schema import EvalRun, TrainRun
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import NORMALIZATIONS, load_task
from tests.records import TEMPLATE

BOARD_TASK = "sentiment"
QLORA = ("QLoRA: LoRA on the base model quantized to 4-bit NF4 with double quantization and bfloat16 compute "
         "(bitsandbytes)")
MODELS = [("tiny", "test"), ("HuggingFaceTB/SmolLM2-135M-Instruct", "12fd25f77366fa6b3b4b768ec3050bf629380bac"),
          ("meta-llama/Llama-3.2-1B", "main"), ("org/model-7b", "v2")]
GPUS = ["NVIDIA H100 80GB HBM3", "NVIDIA A10G", "Tesla T4"]
CPUS = ["AMD EPYC 7R13 Processor", "Intel(R) Xeon(R) CPU @ 2.20GHz"]
OPTIMIZERS = ["adamw_torch_fused", "adamw_torch"]
SCHEDULERS = ["linear", "cosine", "constant", "constant_with_warmup"]
STARTED = "2026-11-29T00:00:00+00:00"


# --- random records -----------------------------------------------------------------------------------------------


def _maybe(rng: random.Random, value, p: float = 0.8):
    return value if rng.random() < p else None


def _sig(rng: random.Random, low: float, high: float, log: bool = False) -> float:
    """A random float, sometimes with few digits (as a person writes it), sometimes with full precision."""
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if log else rng.uniform(low, high)
    return float(f"{x:.{rng.choice([1, 2, 3, 17])}g}")


def random_training(rng: random.Random, region: str = "clean") -> tuple[TrainRun, dict, dict]:
    """A finished train run, its config.yaml and the truth behind them (the train split's size). `region` picks
    records the text once misstated (the tests at the end); "clean" keeps out of all of them."""
    split_size = rng.randint(2, 20000)
    scenario = rng.choice(["all", "subset", "more"])
    skipped_recorded = rng.random() < 0.8 and region != "skipped_unrecorded"
    if region == "clean" and not skipped_recorded:  # only then is the count drawn known without it
        scenario = "subset"
    if scenario == "subset":  # train_examples below the split: training_subset draws a seeded subset
        wanted = rng.randint(1, split_size - 1)
        drawn = wanted
    elif scenario == "more":  # more asked for than the split holds: the whole split
        wanted, drawn = split_size + rng.randint(1, 5000), split_size
    else:
        wanted, drawn = None, split_size
    if region != "clean" and drawn >= 2:  # some skipped: unrecorded, or with no max_length in config.yaml
        skipped = rng.randint(1, drawn - 1)
    elif region == "clean" and not skipped_recorded:
        skipped = 0
    else:
        skipped = 0 if rng.random() < 0.4 or drawn == 1 else rng.randint(1, drawn - 1)
    kept = drawn - skipped

    method = rng.choice(["lora", "qlora", "full", None])
    lora = {"r": rng.randint(1, 256), "alpha": rng.randint(1, 512),
            "dropout": rng.choice([0.0, 0.05, 0.1, round(rng.uniform(0, 0.9), 4)]),
            "target_modules": rng.choice(["all-linear", ["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"],
                                          "q_proj|v_proj", ".*attn.*", []])}
    for key in list(lora):
        if rng.random() < 0.15:
            del lora[key]
    scheduler = rng.choice(SCHEDULERS)
    steps = rng.randint(1, 5000)
    max_steps = rng.choice([None, steps, steps + rng.randint(1, 100)])
    warmup_ratio = rng.choice([0.0, 0.05, _sig(rng, 0.001, 0.99)])
    config = {
        "task": BOARD_TASK, "base_model": "m", "method": method, "lora": rng.choice([lora, lora, None]),
        "learning_rate": _sig(rng, 1e-7, 1e-1, log=True), "lr_scheduler": scheduler, "warmup_ratio": warmup_ratio,
        "weight_decay": rng.choice([0.0, 0.01, None, _sig(rng, 1e-4, 1.0)]),
        "epochs": _sig(rng, 0.1, 20), "max_steps": max_steps, "batch_size": rng.randint(1, 256),
        "grad_accum": rng.randint(1, 64), "max_length": rng.randint(8, 4096), "train_examples": wanted,
        "seed": rng.choice([0, 1, 42, rng.randint(0, 2**31), None]),
    }
    for key in list(config):  # older config.yaml files lack settings added since
        if key not in ("task", "base_model", "max_length") and rng.random() < 0.12:
            del config[key]
    if region == "skipped_without_max_length" or (region == "clean" and skipped == 0 and rng.random() < 0.2):
        del config["max_length"]

    processes = rng.choice([None, 1, 2, 4, 8])
    used = {"name": rng.choice(OPTIMIZERS),
            "betas": rng.choice([(0.9, 0.999), (round(rng.uniform(0.5, 0.99), 3), round(rng.uniform(0.9, 0.9999), 4))]),
            "epsilon": rng.choice([1e-8, 1e-6, _sig(rng, 1e-10, 1e-4, log=True)]),
            "max_grad_norm": rng.choice([None, 1.0, _sig(rng, 0.01, 10)]),
            "warmup_steps": 0 if scheduler == "constant" else math.ceil(warmup_ratio * steps)}
    epochs = round(rng.uniform(0.001, 50), 3)
    run = TrainRun.model_validate({
        "id": f"2026-11-29-train-x-{rng.randrange(16**4):04x}", "name": "x", "status": "finished",
        "started": STARTED, "ended": STARTED, "config_hash": "h", "experiment": "x",
        "task": {"name": rng.choice([BOARD_TASK, BOARD_TASK, "intent", "gsm8k"])},
        "model": dict(zip(("name", "revision"), rng.choice(MODELS), strict=True)),
        "prompt": {"format": rng.choice(["plain", "chat"]), "template": TEMPLATE},
        "metrics": _maybe(rng, {"first_loss": round(rng.uniform(0.0005, 12), 6), "final_loss":
                                round(rng.uniform(0.0005, 12), 6), "steps": steps, "epochs": epochs}),
        "data_used": _maybe(rng, {"train_examples": kept, "skipped_too_long": skipped if skipped_recorded else None,
                                  "tokens_per_epoch": rng.randint(kept, kept * 500),
                                  # recorded from schema 11
                                  "split_size": split_size if rng.random() < 0.7 else None},
                            1.0 if region != "clean" else 0.85),
        "optimizer": _maybe(rng, used, 0.7),
        "precision": rng.choice([None, "float32", "bfloat16 autocast", "bfloat16 (FSDP mixed precision)"]),
        "memory": _maybe(rng, {"device": "cpu", "predicted_mb": 100.0, "reason": "r",
                               "activation_checkpointing": rng.random() < 0.5}, 0.5),
        "processes": processes,
        "parallelism": rng.choice(["ddp", "fsdp", None]) if (processes or 1) > 1 else None,
        "throughput": rng.choice([{}, {"tokens_per_s": 0}, {"tokens_per_s": round(rng.uniform(0.5, 1e5), 1)}]),
        "peak_memory_mb": rng.choice([None, round(rng.uniform(0.5, 1e6), 1)]),
        "timings": rng.choice([{}, {"train_s": round(rng.uniform(0.05, 1e6), 2)},
                               {"train_s": round(rng.uniform(0.05, 1e6), 2), "train_epochs": epochs}]),
        "environment": {"hardware": {"gpu": rng.choice([None, *GPUS]), "cpu_count": rng.choice([None, 2, 16, 128]),
                                     "cpu": rng.choice([None, *CPUS]),
                                     "memory_gb": rng.choice([None, round(rng.uniform(1, 2000), 1)])}},
    })
    return run, config, {"split_size": split_size}


def as_record(folder: Path, run, config: dict) -> RunRecord:
    """A record as read from its folder: config.yaml written as YAML and read back."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return RunRecord(folder, run)


# --- the training paragraph, parsed back ----------------------------------------------------------------------------

NUMBER = r"-?[\d,]*\.?\d+(?:e[-+]?\d+)?"
DATA = re.compile(
    r"(?P<kept>[\d,]+) training examples?(?:"
    r" from the train split(?: of (?P<task0>[\w-]+))?"  # how many were drawn: not recorded
    r"|: (?P<all>all )?(?P<random>a random subset of )?(?P<drawn>[\d,]+) (?:of the (?P<size>[\d,]+) )?"
    r"examples of the train split(?: of (?P<task>[\w-]+))?(?: drawn with seed (?P<seed>\d+))?"
    r"(?: \(train_examples (?P<wanted>[\d,]+)(?: drawn with seed (?P<oldseed>\d+))?: a random subset if the split "
    r"held more; its size is not recorded\))?"
    r"(?:, less (?P<skipped>[\d,]+) skipped as (?:longer than (?P<max_length>\d+) tokens|too long)"
    r"|(?P<none>, none skipped)))")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _close(printed: str, value: float) -> bool:
    """`printed` is `value` written with fewer digits (`:g`, 6 significant): never another number."""
    return math.isclose(float(printed), value, rel_tol=1e-5, abs_tol=0.0)


def check_training(text: str, record: RunRecord, board_task: str, truth: dict) -> None:
    run, config = record.run, record.config
    assert isinstance(run, TrainRun)
    head = f"Fine-tuned system {record.id}: base model {run.model.name} (revision {run.model.revision}), "
    assert text.startswith(head), text
    body = text[len(head):]

    # method: the segment before AdamW
    method_part, rest = body.split("AdamW", 1)
    method_part = method_part.removesuffix(", ")
    method, lora = config.get("method"), config.get("lora") or {}
    if method == "full":
        assert method_part == "full fine-tuning of every weight", text
    elif method in ("lora", "qlora"):
        name = "LoRA" if method == "lora" else QLORA
        assert method_part.startswith(name), text
        inner = method_part[len(name):]
        parts = {}
        if inner:
            assert inner.startswith(" (") and inner.endswith(")"), text
            inner = inner[2:-1]
            for key, pattern in (("r", r"rank (\d+)"), ("alpha", r"alpha (\d+)"), ("dropout", rf"dropout ({NUMBER})"),
                                 ("target_modules", r"on (.+) layers$")):
                if found := re.search(pattern, inner):
                    parts[key] = found[1]
        targets = lora.get("target_modules")
        expected = {k: lora[k] for k in ("r", "alpha", "dropout") if k in lora}
        if targets:
            expected["target_modules"] = ", ".join(targets) if isinstance(targets, list) else targets
        assert set(parts) == set(expected), (text, lora)
        for key, value in expected.items():
            if key == "dropout":
                assert _close(parts[key], value), (text, lora)
            else:
                assert parts[key] == str(value), (text, lora)
    else:
        assert method_part == "", text
    assert "LoRA" not in rest and "full fine-tuning" not in rest

    # the optimizer's settings, in AdamW's parentheses
    items: dict[str, str] = {}
    if found := re.match(r" \(((?:[^()]|\(s\))*)\)", rest):  # "step(s)" is the only bracket inside
        inside, rest = found[1], rest[found.end():]
        for item in inside.split(", "):
            for kind, pattern in (("constant", r"constant learning rate"), ("lr", rf"learning rate ({NUMBER})"),
                                  ("schedule", r"(\w+) schedule"), ("warmup_steps", r"(\d+) warm-up step\(s\)"),
                                  ("warmup_ratio", rf"warm-up ratio ({NUMBER})"), ("wd", rf"weight decay ({NUMBER})"),
                                  ("betas", rf"betas ({NUMBER}) and ({NUMBER})"), ("eps", rf"epsilon ({NUMBER})"),
                                  ("clip", rf"gradients clipped to a global norm of ({NUMBER})"),
                                  ("noclip", "no gradient clipping")):
                if found := re.fullmatch(pattern, item):
                    assert kind not in items, text
                    items[kind] = found.groups()
                    break
            else:
                raise AssertionError(f"unknown optimizer clause {item!r} in {text}")
    used, scheduler = run.optimizer, config.get("lr_scheduler")
    expected_kinds = set()
    if "learning_rate" in config:
        expected_kinds.add("lr")
        assert _close(items["lr"][0], config["learning_rate"]), text
    if scheduler == "constant":  # the Trainer's constant schedule has no warm-up, whatever the record's ratio
        expected_kinds.add("constant")
    else:
        if scheduler is not None:
            expected_kinds.add("schedule")
            assert items["schedule"][0] == scheduler, text
        if used is not None:
            expected_kinds.add("warmup_steps")
            assert int(items["warmup_steps"][0]) == used.warmup_steps, text
        elif "warmup_ratio" in config:
            expected_kinds.add("warmup_ratio")
            assert _close(items["warmup_ratio"][0], config["warmup_ratio"]), text
    if config.get("weight_decay") is not None:
        expected_kinds.add("wd")
        assert _close(items["wd"][0], config["weight_decay"]), text
    if used is not None:
        expected_kinds |= {"betas", "eps", "clip" if used.max_grad_norm else "noclip"}
        assert all(_close(p, b) for p, b in zip(items["betas"], used.betas, strict=True)), text
        assert _close(items["eps"][0], used.epsilon), text
        if used.max_grad_norm:
            assert _close(items["clip"][0], used.max_grad_norm), text
    assert set(items) == expected_kinds, (text, config, used)

    # batch, accumulation, steps and epochs
    batch = re.search(r", batch size (\d+)(?:, gradient accumulation (\d+))?", rest)
    assert (batch is not None) == ("batch_size" in config), text
    if batch:
        assert int(batch[1]) == config["batch_size"], text
        assert (batch[2] is not None) == ("grad_accum" in config), text
        assert batch[2] is None or int(batch[2]) == config["grad_accum"], text
    assert "gradient accumulation" not in rest or batch, text
    steps = re.search(rf", ([\d,]+) optimizer steps?(?: \(max_steps (\d+)\))?, ({NUMBER}) epoch\(s\)", rest)
    assert (steps is not None) == (run.metrics is not None), text
    if steps:
        assert steps[0].split(" optimizer ")[1].startswith("steps") == (run.metrics.steps != 1), text
        assert _int(steps[1]) == run.metrics.steps and _close(steps[3], run.metrics.epochs), text
        assert (steps[2] is not None) == bool(config.get("max_steps")), text
        assert steps[2] is None or int(steps[2]) == config["max_steps"], text
    assert "max_steps" not in rest or steps, text

    # the training data
    data = DATA.search(rest)
    used_data = run.data_used
    assert (data is not None) == (used_data is not None), text
    assert len(re.findall(r"training examples?\b", rest)) == (used_data is not None), text
    if data:
        assert _int(data["kept"]) == used_data.train_examples, text
        other = run.task.name if run.task.name != board_task else None
        if used_data.skipped_too_long is None:  # nothing is said of the examples drawn, the split or a subset
            assert data["drawn"] is None and data["task0"] == other, text
        else:
            check_data(data, config, used_data, truth, other, text)
    seed = re.search(r", training seed (\d+)", rest)
    assert (seed[1] if seed else None) == (str(config["seed"]) if config.get("seed") is not None else None), text

    # how it computed, its loss and the prompt format
    assert (f", {run.precision} precision" in rest) == bool(run.precision), text
    assert " precision" not in rest.replace(f", {run.precision} precision", ""), text
    checkpointing = run.memory is not None and run.memory.activation_checkpointing
    assert ("activation checkpointing" in rest) == checkpointing, text
    assert f", loss on the answer tokens only, {run.prompt.format} prompt format." in rest, text
    loss = re.search(rf"The training loss was ({NUMBER}) at the first logged step and ({NUMBER}) at the end", rest)
    assert (loss is not None) == (run.metrics is not None), text
    if loss:
        for printed, value in zip(loss.groups(), (run.metrics.first_loss, run.metrics.final_loss), strict=True):
            assert abs(float(printed) - value) <= 0.0005 + 1e-12, text
            assert float(printed) != 0 or value == 0, text  # a loss is never stated as 0 that was not

    # time, speed, memory, processes and hardware
    check_cost(rest, run)
    check_numbers(text, [run.model_dump(mode="json"), config,
                         used_data.train_examples + (used_data.skipped_too_long or 0) if used_data else 0])


def check_data(data: re.Match, config: dict, used_data, truth: dict, other: str | None, text: str) -> None:
    """The training data sentence of a record whose skipped count is known."""
    kept, skipped, size = used_data.train_examples, used_data.skipped_too_long, used_data.split_size
    wanted = config.get("train_examples")
    # every count stated is the record's: the examples drawn are the kept and the skipped ones
    assert _int(data["drawn"]) == kept + skipped and data["task"] == other, text
    if skipped:
        assert data["skipped"] and _int(data["skipped"]) == skipped, text
        assert data["max_length"] == (str(config["max_length"]) if "max_length" in config else None), text
    else:
        assert data["none"], text
    # "all" when training_subset took the whole split, "a random subset" only when the record shows it drew one
    # (fewer asked for than the recorded split size), else the setting, with the split's size said to be unknown
    whole = wanted is None or (size is not None and wanted >= size)
    assert bool(data["all"]) == whole, (text, wanted, size)
    subset = wanted is not None and size is not None and wanted < size
    assert bool(data["random"]) == subset and (data["size"] and _int(data["size"])) == (size if subset else None)
    assert subset <= (wanted is not None and wanted < truth["split_size"]), (text, truth)  # true of the data
    assert data["seed"] == (str(config["seed"]) if subset and config.get("seed") is not None else None), text
    unknown = wanted is not None and size is None
    assert (data["wanted"] and _int(data["wanted"])) == (wanted if unknown else None), text
    assert data["oldseed"] == (str(config["seed"]) if unknown and config.get("seed") is not None else None), text


def check_cost(text: str, run: TrainRun) -> None:
    tokens = run.throughput.get("tokens_per_s")
    speed = re.search(r"([\d,]+) tokens/s", text)
    assert (speed is not None) == bool(tokens), text
    if speed:
        assert _int(speed[1]) == round(tokens) and _int(speed[1]) > 0, text
    memory = re.search(r"peak memory ([\d,]+) MiB(?: in the first of its (\d+) processes)?", text)
    assert (memory is not None) == (run.peak_memory_mb is not None), text
    if memory:
        assert _int(memory[1]) == round(run.peak_memory_mb) and _int(memory[1]) > 0, text
        assert memory[2] == (str(run.processes) if (run.processes or 1) > 1 else None), text
    assert "processes" not in text or memory, text
    train_s = run.timings.get("train_s")
    took = re.search(r"Training took (.+? s)(?: \((.*?)\))? on (.+)\.$", text)
    if train_s is None:
        assert "Training took" not in text and "interrupted" not in text, text
        place = re.search(r" Training: .+, on (.+)\.$", text)
        assert (place is not None) == bool(tokens or run.peak_memory_mb is not None), text
        hardware = place[1] if place else None
    else:
        assert took and took[1] == format_seconds(train_s), text
        assert float(took[1].removesuffix(" s").replace(",", "")) > 0, text
        hardware = took[3]
    if hardware is not None:
        hw = run.environment.hardware
        parts = hardware.split(", ")
        expected = []
        if hw.gpu:
            expected.append(hw.gpu)
        elif hw.cpu_count is not None:
            expected.append(f"{hw.cpu_count} CPU cores" + (f" ({hw.cpu})" if hw.cpu else ""))
        elif hw.cpu:
            expected.append(hw.cpu)
        if hw.memory_gb is not None:
            expected.append(f"{hw.memory_gb} GB RAM")
        assert parts == (expected or ["hardware not recorded"]), text


def _leaves(value, numbers: list[float], strings: list[str]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _leaves(v, numbers, strings)
    elif isinstance(value, list | tuple):
        for v in value:
            _leaves(v, numbers, strings)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        numbers.append(value)
    elif isinstance(value, str):
        strings.append(value)


def check_numbers(text: str, sources: list) -> None:
    """Every number the text states rounds from a number in the records (never a made-up or contradicting one)."""
    numbers: list[float] = []
    strings: list[str] = []
    _leaves(sources, numbers, strings)
    text = text.replace(QLORA, " ")
    for s in sorted(strings, key=len, reverse=True):
        if any(c.isdigit() for c in s):
            text = text.replace(s, " ")  # ids, model names, revisions, devices: quoted, not computed
    for token in re.findall(r"(?<![\w.@-])\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", text):
        plain = token.replace(",", "")
        value = float(plain)
        decimals = len(plain.split(".")[1].split("e")[0]) if "." in plain else 0
        assert any((float(f"{x:g}") == value) if "e" in plain else abs(round(x, decimals) - value) < 1e-9
                   for x in numbers), f"{token} is in no record: {text}"


@pytest.mark.parametrize("seed", range(10))
def test_the_training_paragraph_states_each_recorded_setting_and_nothing_else(seed, tmp_path):
    rng = random.Random(seed)
    for k in range(150):
        run, config, truth = random_training(rng)
        record = as_record(tmp_path / f"r{k}", run, config)
        check_training(_training(record, BOARD_TASK), record, BOARD_TASK, truth)


def test_the_checks_catch_a_wrong_claim(tmp_path):
    """Each check fails on a text that contradicts its record: a changed number, a dropped clause, a claim added."""
    rng = random.Random(99)
    run, config, truth = random_training(rng)
    while not (run.metrics and run.data_used and run.optimizer and "batch_size" in config
               and config.get("lr_scheduler") not in (None, "constant") and config.get("seed") is not None):
        run, config, truth = random_training(rng)
    record = as_record(tmp_path / "r", run, config)
    text = _training(record, BOARD_TASK)
    check_training(text, record, BOARD_TASK, truth)
    steps, kept = run.metrics.steps, run.data_used.train_examples
    wrong = [text.replace(f"{steps:,} optimizer step", f"{steps + 1:,} optimizer step"),
             text.replace(f"{kept:,} training example", f"{kept + 1:,} training example"),
             text.replace(f"batch size {config['batch_size']}", f"batch size {config['batch_size'] + 1}"),
             text.replace(f"{run.optimizer.warmup_steps} warm-up", f"{run.optimizer.warmup_steps + 1} warm-up"),
             text.replace(f"training seed {config['seed']}", f"training seed {config['seed'] + 1}"),
             text.replace(f"{config['lr_scheduler']} schedule", "cosine_with_restarts schedule"),
             text.replace(", loss on the answer tokens only", ", activation checkpointing, loss on the answer tokens "
                          "only") if not (run.memory and run.memory.activation_checkpointing) else text + "x"]
    for bad in wrong:
        assert bad != text
        with pytest.raises(AssertionError):
            check_training(bad, record, BOARD_TASK, truth)


# --- scoring, prompts and examples of evaluations -------------------------------------------------------------------


def random_eval(rng: random.Random, label: str, split: str = "test", region: str = "clean") -> tuple[dict, dict, dict]:
    """The fields of a finished eval run (for `RunRecord.create`), its config.yaml and its truth: the split's size
    and the examples the run saw."""
    if rng.random() < 0.5:
        normalize = rng.choice([None, *NORMALIZATIONS])
        scoring = {"protocol": "loglikelihood", "normalize": normalize,
                   "normalization": rng.choice([None, NORMALIZATIONS[normalize]]) if normalize else None,
                   "tokenization": rng.choice([None, "prompt and answer tokenized together, split at the prompt's "
                                                     "tokens (as lm-eval)"]),
                   "precision": rng.choice([None, "float32", "bfloat16"]),
                   "calibration": rng.choice([None, {"prompt": "Review: N/A", "logprobs": {"positive": -1.5}}])}
    else:
        budget = rng.randint(1, 1024)
        scoring = {"protocol": "generate",
                   "decoding": rng.choice([None, {}, {"greedy": True, "max_new_tokens": budget}, {"greedy": True},
                                           {"greedy": False, "temperature": 0.7, "max_new_tokens": budget},
                                           {"greedy": True, "max_new_tokens": None}]),
                   "parsing": rng.choice([None, "the first label the answer's first line names"]),
                   "unparsed_answer": rng.choice([None, "counted as wrong"])}
    fmt, shots = rng.choice(["plain", "chat"]), rng.choice([0, 0, 1, 2, 5, 25])
    size = rng.randint(1, 5000)
    limit = rng.choice([None, rng.randint(1, size), size + rng.randint(0, 100), rng.randint(1, 3)])
    n = size if limit is None else min(limit, size)
    prompt = _maybe(rng, {"format": fmt, "template": TEMPLATE, "shots": [f"train:{k}" for k in range(shots)]}, 0.8)
    config = {"system": label, "task": BOARD_TASK, "split": split, "format": fmt, "shots": shots,
              "shot_seed": rng.choice([0, 7, rng.randint(0, 10**6)]), "limit": limit,
              "protocol": scoring["protocol"], "precision": "float32", "backend": "hf", "batch_size": 16}
    for key in ("format", "shots", "shot_seed", "limit"):  # an older config.yaml lacks a setting added since
        if rng.random() < 0.12:
            del config[key]
    if "limit" not in config:  # (which then evaluated the whole split)
        n = size
    if rng.random() < 0.1:
        config.pop("limit", None)
        n = rng.randint(1, size)  # fewer examples than the split without a limit: said as "n of the N" only
    split_size = size if rng.random() < 0.7 else None  # older records: not recorded
    if region == "clean" and split_size is None and config.get("limit") is not None and config["limit"] > n:
        split_size = size  # see test_defect_a_limit_above_the_split_is_called_a_subset
    start = rng.choice([0, 0, 3])
    fields = {"system": {"label": label, "kind": "base", "model": {"name": label, "revision": "test"}},
              "backend": {"backend": "hf", "model": label},
              "task": {"name": BOARD_TASK, "split": split, "n": n, "split_size": split_size,
                       "data_sha256": {"data/x.jsonl": f"{label}-{rng.randrange(10**9)}"}},
              "scoring": scoring, "prompt": prompt}
    return fields, config, {"size": size, "ids": [f"x:{i}" for i in range(start, start + n)]}


def eval_run(fields: dict, label: str) -> EvalRun:
    return EvalRun.model_validate({"id": f"e-{label}", "name": label, "status": "finished", "started": STARTED,
                                   "ended": STARTED, "config_hash": "h", **fields})


def check_scoring_way(way: str, run: EvalRun) -> None:
    scoring = run.scoring
    parts = way.split("; ")
    if scoring.protocol == "loglikelihood":
        rule = scoring.normalization or NORMALIZATIONS.get(scoring.normalize or "") or "its log-likelihood"
        first = f"every label scored by {rule} after the prompt"
        if scoring.normalize:
            first += f" (normalize: {scoring.normalize})"
        expected = [first, "the highest-scoring label predicted",
                    *([f"{scoring.precision} precision"] if scoring.precision else []),
                    *([scoring.tokenization] if scoring.tokenization else [])]
        assert parts == expected, (way, scoring)
        assert "tokens" not in way.replace(scoring.tokenization or "\0", "")  # no decoding budget
    else:
        decoding = scoring.decoding or {}
        found = re.fullmatch(r"(greedy decoding|generation)(?: of at most (\d+) new tokens)?", parts[0])
        assert found, way
        assert (found[1] == "greedy decoding") == bool(decoding.get("greedy")), (way, decoding)
        budget = decoding.get("max_new_tokens")
        assert found[2] == (str(budget) if budget is not None else None), (way, decoding)
        rest = [*([f"parsing: {scoring.parsing}"] if scoring.parsing else []),
                *([f"an answer that does not parse is {scoring.unparsed_answer}"] if scoring.unparsed_answer else [])]
        assert parts[1:] == rest, way
        assert "label scored" not in way and "precision" not in way and "normalize" not in way


def check_prompt_way(way: str, run: EvalRun, config: dict) -> None:
    fmt = run.prompt.format if run.prompt else config.get("format")
    shots = len(run.prompt.shots) if run.prompt else config.get("shots")
    found = re.fullmatch(r"(?:(\w+) format|format not recorded), (?:(zero-shot)|number of shots not recorded|"
                         r"(\d+) examples? in the prompt(?:, drawn at random from the train split with shot seed "
                         r"(\d+))?)", way)
    assert found, way
    assert found[1] == fmt, (way, fmt)
    assert bool(found[2]) == (shots == 0), (way, shots)
    assert found[3] == (str(shots) if shots else None), (way, shots)
    seed = config.get("shot_seed")
    assert found[4] == (str(seed) if shots and seed is not None else None), (way, config)


def check_sample(phrase: str, run: EvalRun, config: dict, split: str, truth: dict, sizes_known: bool,
                 show_limit: bool = True) -> None:
    """The examples a run saw: all of the split only when the records show it, else K of the N (N when known),
    the subset seeded only when a limit drew one, and the limit as recorded."""
    n, limit = run.task.n, config.get("limit")
    total = run.task.split_size if run.task.split_size is not None else (truth["size"] if sizes_known else None)
    found = re.fullmatch(rf"(all )?(a seeded random subset of )?([\d,]+) (?:of the ([\d,]+) )?examples? of the "
                         rf"{split} split(, whose size is not recorded)?(?: \(limit ([\d,]+)\))?", phrase)
    assert found, phrase
    everything, subset, stated, of, unknown, shown = found.groups()
    assert _int(stated) == n, phrase
    # all: the split's size shows it, or the limit was above the examples seen (select_examples then takes all)
    assert bool(everything) == ((total is not None and n >= total) or (limit is not None and n < limit)), phrase
    if everything:
        assert not (subset or of or unknown or shown), phrase
        return
    assert (of and _int(of)) == (total if total is not None else None), (phrase, total)
    assert bool(unknown) == (total is None), phrase
    assert bool(subset) == (limit is not None), (phrase, limit)
    assert (shown and _int(shown)) == (limit if limit is not None and show_limit else None), (phrase, limit)
    if subset:  # a seeded subset is only drawn when the limit is below the split's size
        assert n == limit and (total is None or limit < total), (phrase, total, truth)


def _names(names: str, known: list[str]) -> list[str]:
    """The system names `_join` wrote ("a", "a and b", "a, b and c"), checked to be the known ones."""
    listed = [name for name in known if name in names]
    joined = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + f" and {listed[-1]}"
    assert sorted(listed, key=names.index) == listed and names == joined, (names, known)
    return listed


def attributed(text: str, known: list[str], style: str) -> dict[str, str]:
    """Each system's claim in a sentence that groups systems by what is said of them."""
    alternation = "|".join(re.escape(n) for n in sorted(known, key=len, reverse=True))
    names = rf"(?:{alternation})(?:(?:, | and )(?:{alternation}))*"
    pairs = []
    if style == "for":  # "claim for a and b; claim for c"
        for group in text.split("; "):
            found = re.fullmatch(rf"(.+) for ({names})", group)
            assert found, (group, text)
            pairs.append((found[2], found[1]))
    else:  # "a and b: claim. c: claim."
        found = list(re.finditer(rf"(?:^| )({names}): (.+?)\.(?= (?:{names}): |$)", text))
        assert "".join(m[0] for m in found) == text, text
        pairs = [(m[1], m[2]) for m in found]
    said: dict[str, str] = {}
    for group, claim in pairs:
        for name in _names(group, known):
            assert name not in said, (name, text)
            said[name] = claim
    assert sorted(said) == sorted(known), text
    return said


def _evals(rng: random.Random, split: str = "test") -> tuple[list[_Eval], dict]:
    evals, truths = [], {}
    for i in range(rng.randint(1, 5)):
        name = f"s{i} [{rng.choice(['plain', 'chat'])}]"
        fields, config, truth = random_eval(rng, f"s{i}", split)
        if evals and rng.random() < 0.4:  # systems evaluated alike (grouped together)
            fields = {**fields, "scoring": evals[-1].run.scoring.model_dump(), "task": evals[-1].run.task.model_dump()}
            truth, config = truths[evals[-1].name], {**config, "limit": evals[-1].config.get("limit")}
            if rng.random() < 0.3:  # as many examples, other ones (other ids): not "the same examples"
                truth = {**truth, "ids": [f"y:{i}" for i in range(len(truth["ids"]))]}
        run = eval_run(fields, f"s{i}")
        evals.append(_Eval(name, SimpleNamespace(run=run, id=run.id), config, None,
                           {i: {"id": i} for i in truth["ids"]}))
        truths[name] = truth
    return evals, truths


@pytest.mark.parametrize("seed", range(6))
def test_scoring_and_prompts_are_said_of_the_systems_that_ran_them(seed):
    rng = random.Random(seed)
    for _ in range(150):
        evals, _ = _evals(rng)
        by_name = {e.name: e for e in evals}
        sentences = _scoring(evals)
        if len(sentences) == 1 and sentences[0].startswith(("All systems: ", "Scoring: ")):
            assert sentences[0].startswith("All systems: " if len(evals) > 1 else "Scoring: ")
            way = sentences[0].split(": ", 1)[1].removesuffix(".")
            for e in evals:
                check_scoring_way(way, e.run)
        else:
            assert len(sentences) > 1
            for name, way in attributed(" ".join(sentences), list(by_name), "colon").items():
                check_scoring_way(way, by_name[name].run)
        prompts = _prompts(evals).removeprefix("Prompts: ").removesuffix(".")
        ways = {"single": prompts} if " for s" not in prompts else attributed(prompts, list(by_name), "for")
        for name, e in by_name.items():
            check_prompt_way(ways.get(name, ways.get("single")), e.run, e.config)


@pytest.mark.parametrize("seed", range(6))
def test_which_examples_each_system_saw(seed):
    rng = random.Random(seed)
    for _ in range(150):
        split = rng.choice(["test", "dev"])
        evals, truths = _evals(rng, split)
        known = rng.random() < 0.5  # older records: the split's size read from data that still hashes the same
        by_hashes = {repr(e.run.task.data_sha256): truths[e.name]["size"] for e in evals}
        sizes = SimpleNamespace(get=lambda split, hashes, by_hashes=by_hashes, known=known:
                                by_hashes[repr(hashes)] if known else None)
        board = SimpleNamespace(comparison=SimpleNamespace(split=split))
        text = _examples_sentence(board, evals, sizes)
        for e in evals:
            check_sample(_sample(e.run, e.config, split, sizes, show_limit=False), e.run, e.config, split,
                         truths[e.name], known, show_limit=False)
        if text.startswith("The systems were not all evaluated on the same examples: "):
            said = attributed(text.split(": ", 1)[1].removesuffix("."), [e.name for e in evals], "for")
            assert len(set(said.values())) > 1
        else:
            found = re.fullmatch(r"(Every system was|The system was) evaluated on (.+?)(, the same examples for "
                                 r"all)?\.", text)
            assert found, text
            assert (found[1] == "Every system was") == (len(evals) > 1)
            same = len({tuple(e.predictions) for e in evals}) == 1
            assert bool(found[3]) == (same and len(evals) > 1), text
            said = {e.name: found[2] for e in evals}
        for e in evals:
            check_sample(said[e.name], e.run, e.config, split, truths[e.name], known)


def test_the_evaluation_checks_catch_a_wrong_claim():
    rng = random.Random(5)
    fields, config, truth = random_eval(rng, "s0")
    fields["scoring"] = {"protocol": "generate", "decoding": {"greedy": True, "max_new_tokens": 16}}
    fields["prompt"] = {"format": "plain", "template": TEMPLATE, "shots": ["train:0", "train:1"]}
    fields["task"].update(n=20, split_size=500)
    config.update(shots=2, shot_seed=3, limit=20, format="plain")
    run = eval_run(fields, "s0")
    check_scoring_way("greedy decoding of at most 16 new tokens", run)
    check_prompt_way("plain format, 2 examples in the prompt, drawn at random from the train split with shot seed 3",
                     run, config)
    check_sample("a seeded random subset of 20 of the 500 examples of the test split (limit 20)", run, config, "test",
                 {"size": 500}, False)
    for bad in (lambda: check_scoring_way("greedy decoding of at most 15 new tokens", run),
                lambda: check_scoring_way("generation of at most 16 new tokens", run),
                lambda: check_prompt_way("plain format, 3 examples in the prompt, drawn at random from the train "
                                         "split with shot seed 3", run, config),
                lambda: check_prompt_way("chat format, 2 examples in the prompt", run, config),
                lambda: check_sample("all 20 examples of the test split", run, config, "test", {"size": 500}, False),
                lambda: check_sample("a seeded random subset of 20 of the 501 examples of the test split (limit 20)",
                                     run, config, "test", {"size": 500}, False),
                lambda: attributed("plain format, zero-shot for s0; chat format, zero-shot for s1", ["s0"], "for")):
        with pytest.raises(AssertionError):
            bad()


# --- the whole section, from a lab's records --------------------------------------------------------------------------


def _train_record(lab: Lab, rng: random.Random) -> tuple[RunRecord, dict]:
    run, config, truth = random_training(rng)
    fields = run.model_dump(mode="json", exclude={"id", "name", "status", "started", "ended", "config_hash",
                                                  "environment", "kind", "schema_version", "pid", "host",
                                                  "slurm_job"})
    record = RunRecord.create(lab.runs_dir, "train", "x", config, **{k: fields.pop(k) for k in
                                                                       ("experiment", "task", "model", "prompt")})
    record.update(status="finished", ended=now_iso(), environment=run.environment.model_dump(mode="json"), **fields)
    return record, truth


@pytest.mark.parametrize("seed", range(5))
def test_methods_paragraphs_of_a_random_lab(seed, lab: Lab):
    """Random fine-tunes (some trained on another task, one not among `trained`) and evaluations of them and of base
    models: one paragraph per fine-tune evaluated, each true of its own record; each evaluation's examples,
    scoring and prompts said of the system that ran them."""
    rng = random.Random(seed)
    tuned = [_train_record(lab, rng) for _ in range(rng.randint(1, 3))]
    trained = {r.id: r for r, _ in tuned[:-1] or tuned}
    truths, evaluated = {}, []
    for i in range(rng.randint(1, 4)):
        label = f"m{i}"
        fields, config, truth = random_eval(rng, label)
        # the lab's data is not these records': no hashes (as older records), the split's size recorded
        fields["task"].update(split_size=truth["size"], data_sha256={})
        if rng.random() < 0.6:
            record, _ = rng.choice(tuned)
            fields["system"] = {"label": label, "kind": "finetuned", "train_run": record.id}
            evaluated.append(record.id)
        run = RunRecord.create(lab.runs_dir, "eval", label, config, **fields)
        append_jsonl(run.folder / "predictions.jsonl", [
            {"id": i, "prompt": "p", "gold": "positive", "prediction": "positive", "correct": True, "scores": {}}
            for i in truth["ids"]])
        run.update(status="finished", ended=now_iso(),
                   metrics={"accuracy": {"estimate": 1.0, "low": 0.9, "high": 1.0, "n": len(truth["ids"]),
                                         "method": "exact binomial (Clopper-Pearson)"}})
        truths[run.id] = truth
    board = next(b for b in task_boards(lab, tasks=[BOARD_TASK]))
    paragraphs = methods_paragraphs(board, trained, task_evals(lab, BOARD_TASK))

    training = [p for p in paragraphs if p.startswith("Fine-tuned system ")]
    expected = [r for r in dict.fromkeys(evaluated) if r in trained]
    assert [p.split(":")[0].removeprefix("Fine-tuned system ") for p in training] == expected
    by_id = {r.id: (r, truth) for r, truth in tuned}
    for paragraph, run_id in zip(training, expected, strict=True):
        record, truth = by_id[run_id]
        check_training(paragraph, record, BOARD_TASK, truth)

    names = {row.system: e.record for row, e in zip(board.rows, board.entries, strict=True)}
    evaluation = next(p for p in paragraphs if p.startswith("Evaluation of "))
    assert evaluation.startswith(f"Evaluation of {len(names)} system(s). ")
    scoring, rest = evaluation.split(" system(s). ", 1)[1].split(" Prompts: ", 1)
    if scoring.startswith(("All systems: ", "Scoring: ")):
        said = dict.fromkeys(names, scoring.split(": ", 1)[1].removesuffix("."))
    else:
        said = attributed(scoring, list(names), "colon")
    for name, way in said.items():
        check_scoring_way(way, names[name].run)
    prompts = rest.split(". ", 1)[0]
    said = attributed(prompts, list(names), "for") if len(names) > 1 and " for m" in prompts else \
        dict.fromkeys(names, prompts)
    for name, way in said.items():
        check_prompt_way(way, names[name].run, names[name].config)
    if "not all evaluated on the same examples: " in paragraphs[0]:
        said = attributed(paragraphs[0].split("same examples: ", 1)[1].split(". ")[0], list(names), "for")
    else:
        examples = paragraphs[0].split(" evaluated on ", 1)[1].split(". ")[0]
        same = len({tuple(e.predictions) for e in board.entries}) == 1 and len(names) > 1
        assert examples.endswith(", the same examples for all") == same, paragraphs[0]
        said = dict.fromkeys(names, examples.removesuffix(", the same examples for all"))
    for name, phrase in said.items():
        record = names[name]
        check_sample(phrase, record.run, record.config, "test", truths[record.id], True)


# --- claims the text once made that the records did not support (each fixed) ---------------------------------


@pytest.mark.parametrize("seed", range(2))
def test_fixed_skipped_examples_are_called_none_skipped(seed, tmp_path):
    rng = random.Random(seed)
    for k in range(30):
        run, config, truth = random_training(rng, "skipped_without_max_length")
        record = as_record(tmp_path / f"r{k}", run, config)
        check_training(_training(record, BOARD_TASK), record, BOARD_TASK, truth)


@pytest.mark.parametrize("seed", range(2))
def test_fixed_examples_drawn_made_up_when_skipped_is_unrecorded(seed, tmp_path):
    rng = random.Random(seed)
    for k in range(30):
        run, config, truth = random_training(rng, "skipped_unrecorded")
        text = _training(as_record(tmp_path / f"r{k}", run, config), BOARD_TASK)
        kept = run.data_used.train_examples
        # more were drawn than kept (some skipped, uncounted): no count of the examples drawn is known
        assert f"from {kept:,} examples of the train split" not in text, text


def test_fixed_the_whole_train_split_is_called_a_random_subset(lab: Lab, tmp_path):
    """train_examples equal to the split's size trains on the whole split (training_subset): "all", not a subset;
    a record from before the split's size was recorded claims no subset, only the condition for one."""
    size = len(load_task_data(load_task(lab.task_path(BOARD_TASK), lab.root)).split("train"))
    run = _minimal_train_run(data_used={"train_examples": size, "skipped_too_long": 0, "split_size": size})
    text = _training(as_record(tmp_path / "r", run, {"train_examples": size, "seed": 0}), BOARD_TASK)
    assert "random subset" not in text and f"all {size:,} examples of the train split" in text, text
    old = _minimal_train_run(data_used={"train_examples": size, "skipped_too_long": 0})
    text = _training(as_record(tmp_path / "old", old, {"train_examples": size, "seed": 0}), BOARD_TASK)
    assert "a random subset if the split held more; its size is not recorded" in text, text
    assert "random subset" not in text.replace("a random subset if the split held more", ""), text


def test_fixed_a_limit_above_the_split_is_called_a_subset():
    fields = {"system": {"label": "m", "kind": "base"}, "backend": {"backend": "hf"},
              "task": {"name": BOARD_TASK, "split": "test", "n": 300}, "scoring": {"protocol": "loglikelihood"}}
    phrase = _sample(eval_run(fields, "m"), {"limit": 1000}, "test", SimpleNamespace(get=lambda *a: None))
    # select_examples takes every example when the limit is not below the split: 300 < 1000 is the whole split
    assert "subset" not in phrase, phrase


@pytest.mark.parametrize("field", ["tokens_per_s", "peak_memory_mb", "train_s", "final_loss"])
def test_fixed_a_value_above_zero_is_written_as_zero(field, tmp_path):
    values = {"tokens_per_s": {"throughput": {"tokens_per_s": 0.4}},
              "peak_memory_mb": {"peak_memory_mb": 0.3},
              "train_s": {"timings": {"train_s": 0.04}},
              "final_loss": {"metrics": {"first_loss": 2.0, "final_loss": 0.0004, "steps": 40, "epochs": 5.0}}}
    run = _minimal_train_run(**values[field])
    text = _training(as_record(tmp_path / "r", run, {}), BOARD_TASK)
    assert not re.search(r"(?<![\d.,])0(?:\.0+)? (?:tokens/s|MiB|s\b)|and 0\.000 at the end", text), text


def test_fixed_the_optimizer_name_is_not_the_records(tmp_path):
    run = _minimal_train_run(optimizer={"name": "adafactor", "betas": (0.9, 0.999), "epsilon": 1e-8,
                                        "max_grad_norm": 1.0, "warmup_steps": 0})
    text = _training(as_record(tmp_path / "r", run, {}), BOARD_TASK)
    assert "AdamW" not in text or "adamw" in run.optimizer.name, text


def test_fixed_training_time_attributed_to_one_machine(tmp_path):
    run = _minimal_train_run(
        metrics={"first_loss": 2.0, "final_loss": 1.0, "steps": 100, "epochs": 1.0},
        sessions=[{"from_step": 0, "precision": "float32", "activation_checkpointing": False,
                   "device": "AMD EPYC 7R13 Processor"},
                  {"from_step": 50, "precision": "float32", "activation_checkpointing": False,
                   "device": "NVIDIA H100 80GB HBM3"}],
        throughput={"tokens_per_s": 25000.0}, timings={"train_s": 3600.0, "train_epochs": 1.0},
        environment={"hardware": {"cpu": "AMD EPYC 7R13 Processor", "cpu_count": 16, "gpu": None}})
    text = _training(as_record(tmp_path / "r", run, {}), BOARD_TASK)
    assert "H100" in text, text  # half its steps ran there; the text names only the CPU machine


def test_fixed_a_confidence_below_one_is_written_100_percent():
    row = SimpleNamespace(metrics={"accuracy": SimpleNamespace(method="percentile bootstrap", confidence=0.999)})
    board = SimpleNamespace(comparison=SimpleNamespace(metrics=["accuracy"]))
    text = _intervals(board, [SimpleNamespace(name="s0", row=row)])
    assert "100%" not in text, text


def _minimal_train_run(**fields) -> TrainRun:
    return TrainRun.model_validate({
        "id": "r", "name": "x", "status": "finished", "started": STARTED, "config_hash": "h", "experiment": "x",
        "task": {"name": BOARD_TASK}, "model": {"name": "tiny", "revision": "test"},
        "prompt": {"format": "plain", "template": TEMPLATE}, **fields})
