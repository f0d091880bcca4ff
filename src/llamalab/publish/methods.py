"""The methods section, written from the run records: model, method, hyperparameters, data, hardware, time."""

from __future__ import annotations

from llamalab.evaluate.compare import reference_name
from llamalab.publish.results import TaskBoard
from llamalab.runs.record import RunRecord

_PROTOCOLS = {
    "loglikelihood": "scored every label by its log-likelihood after the prompt and predicted the most likely one",
    "generate": "generated an answer greedily and parsed it",
}


def methods_paragraphs(board: TaskBoard, trained: dict[str, RunRecord]) -> list[str]:
    """Plain-text paragraphs describing how the numbers of one task's leaderboard were made.

    `trained` maps train run ids to their records (the fine-tuned systems on the board)."""
    task = board.task
    first = board.entries[0].record.data
    files = first["task"]["data_sha256"]
    data = "; ".join(f"{path} (SHA-256 {digest[:12]})" for path, digest in sorted(files.items()))
    n = board.rows[0]["n"]
    paragraphs = [
        f"Task {task.name} ({task.answer.type} answers, scored by {', '.join(task.metric_names)}). "
        f"We report results on the {n:,} examples of its {board.comparison['split']} split; prompt formats, "
        f"few-shot settings and checkpoints were chosen on the dev split only. Data: {data}."
    ]
    for run_id in dict.fromkeys(e.record.data["system"].get("train_run") for e in board.entries):
        if run_id in trained:
            paragraphs.append(_training(trained[run_id]))
    paragraphs.append(_evaluation(board))
    return paragraphs


def _training(record: RunRecord) -> str:
    d, config = record.data, _config(record)
    model = d["model"]
    method = config.get("method", "lora")
    if method == "lora":
        lora = config.get("lora") or {}
        targets = lora.get("target_modules")
        targets = ", ".join(targets) if isinstance(targets, list) else targets
        how = (f"LoRA (rank {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, "
               f"on {targets} layers)")
    else:
        how = "full fine-tuning of every weight"
    used, metrics, timings = d.get("data_used") or {}, d.get("metrics") or {}, d.get("timings") or {}
    hardware = _hardware(d)
    return (
        f"Fine-tuned system {record.id}: base model {model['name']} ({model.get('revision') or 'revision unknown'}), "
        f"{how}, trained with AdamW at learning rate {config.get('learning_rate')} ({config.get('lr_scheduler')} "
        f"schedule, warm-up ratio {config.get('warmup_ratio')}, weight decay {config.get('weight_decay')}), batch size "
        f"{config.get('batch_size')} × {config.get('grad_accum')} accumulation, {metrics.get('epochs')} epoch(s) = "
        f"{metrics.get('steps')} optimizer steps on {used.get('train_examples', '?'):,} training examples "
        f"({used.get('skipped_too_long', 0)} skipped as longer than {config.get('max_length')} tokens), "
        f"seed {config.get('seed')}, {d.get('precision', 'float32')} precision, loss on the answer tokens only, "
        f"{d['prompt']['format']} prompt format. Training loss fell from {metrics.get('first_loss', 0):.3f} to "
        f"{metrics.get('final_loss', 0):.3f}. Training took {timings.get('train_s', 0):,.0f} s "
        f"({(d.get('throughput') or {}).get('tokens_per_s', 0):,.0f} tokens/s) on {hardware}, with a peak memory of "
        f"{d.get('peak_memory_mb', 0):,.0f} MB. {_software(d)}"
    )


def _evaluation(board: TaskBoard) -> str:
    protocols = sorted({row["protocol"] for row in board.rows})
    how = "; for ".join(f"{p} systems we {_PROTOCOLS.get(p, p)}" for p in protocols)
    first = board.entries[0].record.data
    seconds = sum((e.record.data.get("timings") or {}).get("predict_s", 0) for e in board.entries)
    tests = sorted({row["vs_reference"]["test"] for row in board.rows if row["vs_reference"]})
    method = board.rows[0]["metrics"][board.metric].get("method", "percentile bootstrap")
    return (
        f"Evaluation: {len(board.rows)} system(s) on the same examples. For {how}. "
        f"Every prompt, prediction and prompt hash is kept per example in the run folders. "
        f"Confidence intervals are 95% {method}. Each system is compared with {reference_name(board.comparison)} on "
        f"the examples both saw ({', '.join(tests) or 'no comparison: one system'}), with Holm's correction for "
        f"the number of comparisons. The evaluations took {seconds:,.0f} s of prediction time in total on "
        f"{_hardware(first)}."
    )


def _config(record: RunRecord) -> dict:
    import yaml

    path = record.folder / "config.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _hardware(data: dict) -> str:
    hw = (data.get("environment") or {}).get("hardware") or {}
    device = hw.get("gpu") or f"{hw.get('cpu_count', '?')} CPU cores ({hw.get('cpu', 'unknown CPU')})"
    return f"{device}, {hw.get('memory_gb', '?')} GB RAM"


def _software(data: dict) -> str:
    env = data.get("environment") or {}
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v and k != "llamalab")
    commit = (env.get("git") or {}).get("commit")
    where = f" at lab commit {commit[:12]}{' (with uncommitted changes)' if env['git'].get('dirty') else ''}" \
        if commit else ""
    return f"Software: llamalab {(env.get('packages') or {}).get('llamalab')}{where}; {packages}."
