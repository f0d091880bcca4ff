"""The product on the real embedded model: a short fine-tune, then evaluation, through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.runs.record import find_run

pytestmark = pytest.mark.slow


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.stdout.strip().splitlines()[-1]


def test_embedded_model_learns_and_records_are_complete(lab):
    root = str(lab.root)
    run_id = run("train", "sentiment-lora", "max_steps=12", "train_examples=96", "save_steps=6", "--lab", root)
    record = find_run(lab.runs_dir, run_id)
    data = record.run.model_dump(mode="json")
    assert record.run.status == "finished"
    assert set(data["model"]) == {"name", "revision"} and record.run.model.name == "smollm2-135m-instruct"
    assert record.run.model.revision.startswith("gguf-sha256:")
    log = [json.loads(line) for line in (record.folder / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 12
    first, last = sum(r["loss"] for r in log[:3]) / 3, sum(r["loss"] for r in log[-3:]) / 3
    assert last < first / 2, f"loss did not fall: {first:.3f} -> {last:.3f}"
    for key in ("config_hash", "environment", "started", "ended", "timings", "throughput", "peak_memory_mb",
                "task", "prompt", "metrics"):
        assert data[key], key
    assert data["environment"]["git"].keys() == {"commit", "dirty"}
    assert (record.folder / "config.yaml").is_file()
    assert (record.folder / "adapter" / "adapter_config.json").is_file()
    memory = record.run.memory  # the plan made before training against what training used
    assert not memory.activation_checkpointing and memory.measured_mb
    assert abs(memory.predicted_mb - memory.measured_mb) <= 0.25 * memory.measured_mb, memory

    eval_id = run("eval", run_id, "--task", "sentiment", "--limit", "40", "--lab", root)
    evaluation = find_run(lab.runs_dir, eval_id)
    predictions = [json.loads(line) for line in (evaluation.folder / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 40
    row = predictions[0]
    assert set(row) >= {"id", "prompt_sha256", "prompt", "gold", "prediction", "scores", "tokens"}
    assert row["prompt"].startswith("Review: ") and row["prompt"].endswith("\nSentiment:")
    accuracy = evaluation.run.metrics["accuracy"]
    assert accuracy.low <= accuracy.estimate <= accuracy.high
    assert evaluation.run.system.train_run == run_id

    # the demo's compute floors, from these records
    from llamalab.demo import model_flops
    from llamalab.models import EMBEDDED_NAME, resolve_model
    from llamalab.training.plan import Shape

    shape = Shape.of_folder(resolve_model(EMBEDDED_NAME).path)
    params = 134_515_008  # SmolLM2-135M, embeddings (49,152 x 576, tied) included
    assert model_flops(record, shape) == 4 * params * record.run.data_used.tokens_per_epoch * record.run.metrics.epochs
    computed = evaluation.run.throughput["forward_tokens"]
    prompts = sum(len(row["prompt"]) for row in predictions)  # characters: more than the tokens
    assert 0 < computed < prompts and model_flops(evaluation, shape) == 2 * (params - 49_152 * 576) * computed
