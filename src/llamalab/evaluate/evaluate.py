"""The evaluation loop: score a system on a task split, keep every prediction, report metrics with CIs."""

from __future__ import annotations

import hashlib
import random
import time
from typing import Literal

from pydantic import Field
from rich.console import Console

from llamalab.config import LlamalabError, StrictModel
from llamalab.evaluate import stats
from llamalab.evaluate.generation import generate_greedy, parse_label
from llamalab.evaluate.scoring import ChoiceRequest, score_choices
from llamalab.evaluate.systems import resolve_system
from llamalab.lab import Lab
from llamalab.progress import progress_bar
from llamalab.runs.files import append_jsonl, write_json_atomic, write_text_atomic
from llamalab.runs.record import RunRecord
from llamalab.tasks.data import Example, load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import Task, load_task

PREDICTIONS = "predictions.jsonl"
NO_ANSWER = "<no answer>"


class EvalSettings(StrictModel):
    """Everything that decides an evaluation's numbers (recorded, and hashed, with the run)."""

    system: str
    task: str
    split: Literal["train", "dev", "test"] = "test"
    format: Literal["plain", "chat"] | None = Field(
        None, description="default: the task's format (a fine-tuned run: the format it was trained in)"
    )
    shots: int = Field(0, ge=0, description="k-shot examples drawn from the train split")
    shot_seed: int = 0
    limit: int | None = Field(None, ge=1, description="evaluate a seeded random subset of this size")
    protocol: Literal["loglikelihood", "generate"] = Field(
        "loglikelihood", description="score every label, or generate greedily and parse the answer"
    )
    max_new_tokens: int = Field(16, ge=1, description="generation budget (protocol: generate)")
    batch_size: int = Field(16, ge=1)
    bootstrap_resamples: int = Field(5000, ge=100)


def evaluate(lab: Lab, settings: EvalSettings, console: Console | None = None) -> RunRecord:
    """Evaluate `settings.system` on a task split and write a complete run record."""
    console = console or Console(stderr=True)
    task = load_task(lab.task_path(settings.task), lab.root)
    if task.answer.type != "label":
        raise LlamalabError(f"task {task.name!r}: only label tasks can be evaluated yet (answer.type: label)")
    system = resolve_system(lab, settings.system)
    data = load_task_data(task)
    examples = select_examples(data.split(settings.split), settings.limit)
    prompt_format = settings.format or system.trained_format or task.prompt.format
    shots = tuple(random.Random(settings.shot_seed).sample(data.split("train"), settings.shots))
    started = time.perf_counter()
    model, tokenizer = system.load()  # before the run folder exists: a model that cannot load leaves nothing
    load_s = time.perf_counter() - started

    record = RunRecord.create(
        lab.runs_dir,
        "eval",
        f"{task.name}-{system.label.replace('/', '_')}",
        settings.model_dump(),
        system=system.to_dict(),
        task={"name": task.name, "split": settings.split, "n": len(examples), "data_sha256": data.file_hashes},
        prompt=None,
        scoring=scoring_provenance(task, settings),
        model_revision=system.model.revision,
    )
    with record.tracking():
        prompter = Prompter(task, tokenizer, prompt_format, shots)
        record.update(prompt=prompt_provenance(prompter, record))
        metrics, n_tokens, score_s = _predict(task, prompter, model, examples, record, settings, console)
        record.update(
            metrics=metrics,
            timings={"load_model_s": round(load_s, 2), "score_s": round(score_s, 2)},
            throughput={"examples_per_s": round(len(examples) / score_s, 2), "tokens_per_s": round(n_tokens / score_s)},
        )
        write_json_atomic(record.folder / "metrics.json", metrics)
    return record


def scoring_provenance(task: Task, settings: EvalSettings) -> dict:
    if settings.protocol == "generate":
        return {
            "protocol": "generate",
            "decoding": {"greedy": True, "max_new_tokens": settings.max_new_tokens},
            "parsing": "first label whose verbalizer starts the first line (case, punctuation ignored), "
            "else the first one mentioned; none counts as wrong",
        }
    return {
        "protocol": "loglikelihood",
        "normalize": task.answer.normalize,
        "length_normalised": task.answer.normalize == "mean",
        "tokenization": "prompt and answer tokenized together, split at the prompt's tokens (as lm-eval)",
    }


def select_examples(examples: list[Example], limit: int | None) -> list[Example]:
    """All examples, or a seeded subset: every system evaluated with the same limit sees the same ones."""
    if limit is None or limit >= len(examples):
        return examples
    chosen = set(random.Random(0).sample(range(len(examples)), limit))
    return [ex for i, ex in enumerate(examples) if i in chosen]


def prompt_provenance(prompter: Prompter, record: RunRecord) -> dict:
    """What shaped the prompt; the chat template itself is stored with the run."""
    info = {
        "format": prompter.format,
        "template": prompter.task.prompt.template,
        "system": prompter.task.prompt.system,
        "target_delimiter": prompter.task.prompt.target_delimiter,
        "shots": [ex.id for ex in prompter.shots],
        "chat_template_sha256": None,
    }
    template = getattr(prompter.tokenizer, "chat_template", None)
    if prompter.format == "chat" and template:
        write_text_atomic(record.folder / "chat_template.jinja", template)
        info["chat_template_sha256"] = hashlib.sha256(template.encode()).hexdigest()
    return info


def _predict(task: Task, prompter: Prompter, model, examples, record, settings, console):
    """Predict every example by the chosen protocol, appending each batch to predictions.jsonl as it finishes."""
    labels = task.answer.labels
    verbalized = {label: task.answer.verbalize(label) for label in labels}
    prompts = [prompter.prompt(ex) for ex in examples]
    predictions: dict[int, str | None] = {}
    path = record.folder / PREDICTIONS

    def row(i: int, prediction: str | None, **extra) -> dict:
        predictions[i] = prediction
        ex = examples[i]
        return {
            "id": ex.id, "prompt_sha256": hashlib.sha256(prompts[i].encode()).hexdigest(), "prompt": prompts[i],
            "gold": ex.answer, "prediction": prediction, "correct": prediction == ex.answer, **extra,
        }

    with progress_bar(console, f"eval {task.name}", len(examples), unit="ex") as advance:
        started = time.perf_counter()
        if settings.protocol == "loglikelihood":
            requests = []
            for prompt in prompts:
                encoded = [prompter.encode(prompt, prompter.continuation(v)) for v in verbalized.values()]
                requests.append(ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded]))
            n_tokens = sum(len(r.prompt_ids) + sum(len(c) for c in r.choice_ids) for r in requests)

            def save_scores(indices: list[int], scores) -> None:
                rows = []
                for i, per_label in zip(indices, scores, strict=True):
                    values = {lab: s.score(task.answer.normalize) for lab, s in zip(labels, per_label, strict=True)}
                    rows.append(row(
                        i, max(labels, key=lambda lab: values[lab]),
                        scores={lab: round(v, 5) for lab, v in values.items()},
                        tokens={lab: s.n_tokens for lab, s in zip(labels, per_label, strict=True)},
                    ))
                append_jsonl(path, rows)
                advance(len(indices))

            score_choices(model, requests, settings.batch_size, on_batch=save_scores)
        else:
            prompt_ids = [prompter.encode(prompt, "").prompt_ids for prompt in prompts]
            n_tokens = sum(len(ids) for ids in prompt_ids)

            def save_generations(indices: list[int], texts: list[str]) -> None:
                append_jsonl(path, [row(i, parse_label(t, verbalized), generation=t)
                                    for i, t in zip(indices, texts, strict=True)])
                advance(len(indices))

            generate_greedy(model, prompter.tokenizer, prompt_ids, settings.max_new_tokens, settings.batch_size,
                            on_batch=save_generations)
        seconds = time.perf_counter() - started

    gold = [ex.answer for ex in examples]
    pred = [predictions[i] for i in range(len(examples))]
    return compute_metrics(task, gold, pred, settings.bootstrap_resamples), n_tokens, seconds


def compute_metrics(task: Task, gold: list[str], pred: list[str | None], resamples: int = 5000) -> dict:
    """Each metric with its 95% bootstrap interval; an unparseable answer (None) counts as wrong."""
    labels = task.answer.labels
    pred = [NO_ANSWER if p is None else p for p in pred]
    return {
        name: stats.bootstrap_ci(gold, pred, name, labels=labels, n_resamples=resamples).to_dict()
        for name in task.metrics
    }
