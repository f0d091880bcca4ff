"""Property tests of the time `llamalab plan` shows for a run that stops at `max_steps`: on random experiments
(model shape, batch size, max_steps, epochs, grad_accum, processes, training rows, device rate) the printed text is
parsed back and checked against an independent computation of the plan's own model (the epoch's model FLOPs over
the device's rate at the efficiency used; an epoch's optimizer steps as transformers' Trainer counts them):

- the shown run time is max_steps x (time per epoch / steps per epoch), to the precision it is printed at;
- it never exceeds the epochs-based time when max_steps stops before the epochs would;
- it scales linearly with max_steps;
- the shown seconds per epoch and steps per epoch are the plan's.

No model is loaded and nothing trains: the plan needs only a config.json (and a tokenizer for the end-to-end case).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from llamalab.training.experiment import Experiment
from llamalab.training.plan import DEFAULT_EFFICIENCY, Device, Shape, plan_training
from tests.conftest import write_experiment

# Shapes of real Llama-family models (their config.json keys): the time spans ~0.01 s to hours per epoch with them.
SHAPES = [
    {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
     "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True},  # SmolLM2-135M
    {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
     "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},  # Qwen2.5-0.5B
    {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
     "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True},  # Llama-3.2-1B
    {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
     "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False},  # Llama-2-7B
]

TIME = re.compile(r"time: ([\d.,]+) s per epoch \((\d+) steps\)(?:; the run stops at max_steps (\d+): ([\d.,]+) s)?, "
                  r"at ")


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _shown_precision(text: str) -> float:
    """Half a unit of the last digit printed: `_seconds` prints one decimal below 10 s, whole seconds above."""
    return 0.05 if "." in text else 0.5


def _trainer_steps_per_epoch(examples: int, batch_size: int, grad_accum: int, processes: int) -> int:
    """Optimizer steps per epoch as transformers' Trainer counts them in each process: its dataloader's batches of
    the process's share of the global batch (accelerate deals them out: ceil over the processes), then
    ceil(batches / grad_accum), at least 1."""
    share = batch_size // processes
    batches = math.ceil(math.ceil(examples / share) / processes)
    return max(batches // grad_accum + int(batches % grad_accum > 0), 1)


def _epoch_seconds(shape: Shape, method: str, kind: str, rate: float, lengths: list[int], processes: int) -> float:
    """The plan's model of an epoch's time, unrounded: 4 P (LoRA) or 6 P (full) FLOPs per token over the rate at
    the default efficiency (no past runs), the tokens split between GPUs (one card each), shared on a CPU."""
    tokens = sum(lengths) / (processes if kind == "cuda" else 1)
    flops = (6 if method == "full" else 4) * shape.params
    efficiency = DEFAULT_EFFICIENCY[kind, method == "full" and processes > 1]
    return tokens * flops / (rate * 1e12 * efficiency)


def _random_experiment(rng: np.random.Generator) -> dict:
    processes = int(rng.choice([1, 2, 4]))
    return {"method": str(rng.choice(["lora", "full"])), "processes": processes,
            "batch_size": processes * int(rng.integers(1, 9)), "grad_accum": int(rng.integers(1, 5)),
            "epochs": int(rng.integers(1, 4)), "max_steps": int(rng.integers(1, 400)),
            "examples": int(rng.integers(1, 120)), "kind": str(rng.choice(["cpu", "cuda"])),
            # log-uniform: CPUs (~0.05-2 TFLOP/s) to GPUs (~100-800)
            "rate": float(np.exp(rng.uniform(np.log(0.05), np.log(800))))}


def _shown(lab, monkeypatch, plan) -> dict:
    """What `llamalab plan` prints for `plan` (plan_run stubbed to return it, no past runs), parsed back."""
    from typer.testing import CliRunner

    import llamalab.training.plan as planning
    from llamalab.cli import app

    monkeypatch.setattr(planning, "plan_run", lambda *args, **kwargs: plan)
    monkeypatch.setattr(planning, "past_runs", lambda lab: [])
    result = CliRunner().invoke(app, ["plan", "x", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    match = TIME.search(said)
    assert match, said
    return {"epoch_text": match[1], "epoch": _number(match[1]), "steps": int(match[2]),
            "max_steps": int(match[3]) if match[3] else None,
            "run_text": match[4], "run": _number(match[4]) if match[4] else None, "said": said}


@pytest.mark.parametrize("seed", range(40))
def test_the_shown_run_time_is_max_steps_times_the_time_per_step(seed, lab, tmp_path, monkeypatch):
    """The run's time as printed is max_steps x (seconds per epoch / steps per epoch) of the plan's model, to the
    precision printed; seconds per epoch too; steps are the plan's; with max_steps at or below the epochs' steps
    the run takes no longer than the epochs would; twice (k times) the max_steps shows twice (k times) the time."""
    rng = np.random.default_rng(seed)
    e = _random_experiment(rng)
    config = SHAPES[int(rng.integers(len(SHAPES)))]
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = Shape.of(config)
    lengths = [int(x) for x in rng.integers(20, 300, size=e["examples"])]
    device = Device(e["kind"], "test device", 1e9, bf16=e["kind"] == "cuda", matmul_tflops=e["rate"])
    experiment = Experiment(task="t", method=e["method"], batch_size=e["batch_size"], grad_accum=e["grad_accum"],
                            epochs=e["epochs"], max_steps=e["max_steps"])
    plan = plan_training(experiment, tmp_path, lengths, [1] * len(lengths), device, [], e["processes"])
    steps = _trainer_steps_per_epoch(len(lengths), e["batch_size"], e["grad_accum"], e["processes"])
    plan = replace(plan, epochs=None, steps_per_epoch=steps, max_steps=e["max_steps"])  # as plan_run finishes it

    epoch = _epoch_seconds(shape, e["method"], e["kind"], e["rate"], lengths, e["processes"])
    run = epoch / steps * e["max_steps"]
    shown = _shown(lab, monkeypatch, plan)
    context = (e, f"epoch {epoch!r} s, {steps} steps, run {run!r} s", shown["said"])
    assert shown["steps"] == steps and shown["max_steps"] == e["max_steps"], context
    assert abs(shown["epoch"] - epoch) <= _shown_precision(shown["epoch_text"]) + 1e-9, context
    assert abs(shown["run"] - run) <= _shown_precision(shown["run_text"]) + 1e-9 * run, context
    # whole seconds from 10 s up, one decimal below
    assert ("." in shown["run_text"]) == (float(shown["run_text"].replace(",", "")) < 10), context

    # max_steps that stop before the epochs end: the run is no longer than the epochs would take
    if e["max_steps"] <= e["epochs"] * steps:
        epochs_time = e["epochs"] * epoch
        assert run <= epochs_time * (1 + 1e-12)
        assert shown["run"] <= e["epochs"] * (shown["epoch"] + _shown_precision(shown["epoch_text"])) + \
            _shown_precision(shown["run_text"]) + 1e-9, context

    # linear in max_steps: k times the steps, k times the time (to the precision each is printed at)
    k = int(rng.integers(2, 6))
    more = _shown(lab, monkeypatch, replace(plan, max_steps=k * e["max_steps"]))
    assert abs(more["run"] - k * run) <= _shown_precision(more["run_text"]) + 1e-9 * k * run, (k, context,
                                                                                               more["said"])
    assert abs(more["run"] - k * shown["run"]) <= _shown_precision(more["run_text"]) + \
        k * _shown_precision(shown["run_text"]) + 1e-9, (k, context, more["said"])


@pytest.fixture(scope="module")
def _tokenizer_files(tmp_path_factory, tiny_model_dir):
    """The tiny model's tokenizer files, without its weights: a folder of them plus a config.json is a model the
    plan can plan (it reads only the config and the tokenizer)."""
    folder = tmp_path_factory.mktemp("tokenizer")
    for path in tiny_model_dir.iterdir():
        if path.is_file() and not path.name.endswith(".safetensors") and path.name != "config.json":
            shutil.copy(path, folder / path.name)
    return folder


@pytest.mark.parametrize("seed", range(10))
def test_plan_run_counts_the_trainers_steps_and_the_command_shows_their_time(seed, lab, tmp_path, monkeypatch,
                                                                             _tokenizer_files):
    """End to end through `plan_run` (the training rows tokenized as training would, the device's rate stubbed):
    the steps per epoch shown are the Trainer's, and the run's time is max_steps x the time per step of the plan's
    model, to the precision printed."""
    from typer.testing import CliRunner

    import llamalab.training.plan as planning
    from llamalab.cli import app
    from llamalab.models import ModelRef, load_tokenizer
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task
    from llamalab.training.trainer import build_dataset, training_subset

    rng = np.random.default_rng(1000 + seed)
    e = _random_experiment(rng)
    config = SHAPES[int(rng.integers(len(SHAPES)))]
    model = tmp_path / "model"
    shutil.copytree(_tokenizer_files, model)
    (model / "config.json").write_text(json.dumps(config))
    train_examples = int(rng.integers(4, 200))
    write_experiment(lab, "random", f"task: sentiment\nbase_model: {model}\nmethod: {e['method']}\n"
                                    f"batch_size: {e['batch_size']}\ngrad_accum: {e['grad_accum']}\n"
                                    f"epochs: {e['epochs']}\nmax_steps: {e['max_steps']}\n"
                                    f"train_examples: {train_examples}\nmax_length: 256\nseed: {seed}\n")
    real = planning.resolve_device
    monkeypatch.setattr(planning, "resolve_device", lambda text=None: Device(
        "cuda", "test GPU", 141 * 1024, True, e["rate"]) if text == "cuda" else real(text))
    monkeypatch.setattr(planning, "measure_matmul_tflops", lambda device: e["rate"])
    monkeypatch.setattr(planning, "past_runs", lambda lab: [])
    monkeypatch.setattr(planning, "past_efficiency", lambda *args, **kwargs: [])
    result = CliRunner().invoke(app, ["plan", "random", "--device", e["kind"], "--processes", str(e["processes"]),
                                      "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    match = TIME.search(said)
    assert match and match[3], said

    # the rows training would see, counted here to time them independently
    task = load_task(lab.task_path("sentiment"), lab.root)
    prompter = Prompter(task, load_tokenizer(ModelRef(str(model), str(model), "not hashed")), task.prompt.format)
    dataset, _ = build_dataset(prompter, training_subset(load_task_data(task).split("train"), train_examples, seed),
                               256)
    lengths = [len(ids) for ids in dataset["input_ids"]]
    steps = _trainer_steps_per_epoch(len(lengths), e["batch_size"], e["grad_accum"], e["processes"])
    epoch = _epoch_seconds(Shape.of(config), e["method"], e["kind"], e["rate"], lengths, e["processes"])
    run = epoch / steps * e["max_steps"]
    context = (e, train_examples, f"epoch {epoch!r} s, {steps} steps, run {run!r} s", said)
    assert int(match[2]) == steps and int(match[3]) == e["max_steps"], context
    assert abs(_number(match[1]) - epoch) <= _shown_precision(match[1]) + 1e-9, context
    assert abs(_number(match[4]) - run) <= _shown_precision(match[4]) + 1e-9 * run, context
