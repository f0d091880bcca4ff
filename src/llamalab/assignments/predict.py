"""A submission's predictions.jsonl: a system's answers to inputs without labels, or an eval run's answers.

`predict_inputs` runs the lab's one evaluation loop (same Prompter, same backends, same parsing) on examples
whose gold answers are hidden, and keeps only each example's id and answer.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from llamalab.assignments.rubric import submission_answer
from llamalab.backends.registry import DEFAULT_PRECISION
from llamalab.config import LlamalabError, parse_model, read_utf8
from llamalab.evaluation.evaluate import (
    EvalSettings,
    LoadedSystem,
    complete_settings,
    content_free_scores,
    load_system,
    predict_rows,
)
from llamalab.lab import Lab
from llamalab.runs.files import read_jsonl, write_text_atomic
from llamalab.runs.record import PREDICTIONS, RunRecord, read_predictions
from llamalab.tasks.data import Example
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task


def predict_inputs(lab: Lab, system: str | LoadedSystem, inputs: Path | str, out: Path | str, *, task: str,
                   console: Console | None = None, **options: Any) -> Path:
    """Answer every input in `inputs` (JSON lines with an "id" and the task's input fields, no answers) with
    `system` (a model, a train run id, or a `LoadedSystem`), and write `out` as a submission's predictions.jsonl.

    `options` are `EvalSettings` fields (format, protocol, max_new_tokens, batch_size, precision); the defaults
    are evaluate's, so the answers are those an evaluation of the same system would give."""
    console = console or Console(stderr=True)
    examples = read_inputs(Path(inputs))
    if Path(out).is_dir():  # before any model is loaded or any input answered
        raise LlamalabError(f"{out} is a folder: name the file to write, e.g. {Path(out) / PREDICTIONS}")
    owned = not isinstance(system, LoadedSystem)
    loaded = load_system(lab, system, precision=options.get("precision") or DEFAULT_PRECISION) if owned else system
    try:
        spec = load_task(lab.task_path(task), lab.root)
        fields = {"system": loaded.name, "task": task, "backend": loaded.backend_name, **options}
        loaded.check_precision(options.get("precision"), "predict_inputs()")
        settings = loaded.scoring(complete_settings(parse_model(EvalSettings, fields, "predict_inputs()"), spec,
                                                    loaded.system))
        backend = loaded.backend
        prompter = Prompter(spec, backend.tokenizer, settings.format,
                            list_labels=spec.answer.type == "label" and settings.protocol == "generate")
        unconditional = None
        if settings.protocol == "loglikelihood" and spec.answer.normalize == "calibrate":
            unconditional = content_free_scores(prompter, backend, examples[0], settings.precision)["logprobs"]
        with tempfile.TemporaryDirectory() as scratch:
            rows_path = Path(scratch) / PREDICTIONS
            predict_rows(spec, prompter, backend, examples, rows_path, settings, console, 0, unconditional)
            order = {ex.id: i for i, ex in enumerate(examples)}  # the backend batches by length: back to input order
            rows = sorted(read_jsonl(rows_path), key=lambda row: order[row["id"]])
    finally:
        if owned:
            loaded.close()
    return write_answers(rows, Path(out))


def read_inputs(path: Path) -> list[Example]:
    """Inputs without answers, as examples whose gold answer is empty (scored against nothing)."""
    if not path.is_file():
        raise LlamalabError(f"{path}: no such inputs file")
    examples, seen = [], {}
    text = read_utf8(path, "the inputs file is JSON lines in UTF-8, as the assignment handed it out")
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may stand inside a string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlamalabError(f"{path}:{number}: not JSON ({exc.msg} at column {exc.colno}): each line is one "
                                "JSON object, e.g. {\"id\": \"test-00001\", \"text\": \"...\"}") from None
        except (ValueError, RecursionError):
            raise LlamalabError(f"{path}:{number}: JSON that cannot be read (an integer of over 4,300 digits, or "
                                "nesting too deep): each line is one JSON object, as the assignment handed it "
                                "out") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise LlamalabError(f"{path}:{number}: expected a JSON object with a string \"id\"")
        if row["id"] in seen:
            raise LlamalabError(f"{path}:{number}: id {row['id']!r} was already given on line {seen[row['id']]}; "
                                "each input needs an id of its own")
        seen[row["id"]] = number
        examples.append(Example(row["id"], {k: v for k, v in row.items() if k != "id"}, "", f"{path.name}:{number}"))
    if not examples:
        raise LlamalabError(f"{path}: no inputs")
    return examples


def write_predictions(record: RunRecord, out: Path | str) -> Path:
    """An eval run's answers as a submission's predictions.jsonl (e.g. on dev, to check a submission locally)."""
    return write_answers(list(read_predictions(record.folder).values()), Path(out))


def write_answers(rows: list[dict], out: Path) -> Path:
    """One {"id", "answer"} line per example (a resumed evaluation may hold a row twice: the first wins)."""
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(row["id"], row)
    lines = [json.dumps({"id": i, "answer": submission_answer(row)}, ensure_ascii=False) for i, row in first.items()]
    write_text_atomic(out, "".join(f"{line}\n" for line in lines))
    return out
