"""The evaluation loop: one system, one task split, every prediction kept, metrics with CIs.

The same loop serves every backend: local models get token ids from the shared Prompter, chat
APIs get the same prompt as messages. Predictions are appended batch by batch, so `--resume`
continues an interrupted evaluation at the next unfinished example.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field
from rich.console import Console
from rich.markup import escape

from llamalab.backends.api import ApiError
from llamalab.backends.base import Backend, ChoiceRequest, ChoiceScore
from llamalab.backends.registry import DEFAULT_PRECISION, BackendName, backend_for, backend_spec
from llamalab.config import LlamalabError, StrictModel, parse_model
from llamalab.evaluation.metrics import (
    label_score,
    metric_intervals,
    normalization_accuracies,
    prediction_summary,
    score_generation,
)
from llamalab.evaluation.parsing import unparseable_verbalizers
from llamalab.evaluation.systems import System, canonical_name, resolve_system, system_outline
from llamalab.lab import Lab
from llamalab.progress import progress_bar
from llamalab.runs.files import append_jsonl, read_jsonl, repair_jsonl, write_json_atomic
from llamalab.runs.record import (
    PREDICTIONS,
    Inputs,
    RunRecord,
    config_hash,
    finished_run,
    has_unfinished,
    now_iso,
    resume_run,
)
from llamalab.tasks.data import Example, TaskData, load_task_data
from llamalab.tasks.prompts import Prompter, run_on_rule, store_chat_template
from llamalab.tasks.task import NORMALIZATIONS, Task, load_task

DEFAULT_BACKEND: BackendName = "hf"


class EvalSettings(StrictModel):
    """Everything that decides an evaluation's numbers (recorded, and hashed, with the run)."""

    system: str
    task: str
    split: Literal["train", "dev", "test"] = "test"
    backend: BackendName | Literal["api"] = Field(
        DEFAULT_BACKEND, description="for local models; API models use their API (recorded as api)")
    format: Literal["plain", "chat"] | None = Field(
        None, description="default: the task's format (a fine-tuned run: the format it was trained in)"
    )
    shots: int = Field(0, ge=0, description="k-shot examples drawn from the train split")
    shot_seed: int = 0
    limit: int | None = Field(None, ge=1, description="evaluate a seeded random subset of this size")
    protocol: Literal["loglikelihood", "generate"] | None = Field(
        None, description="loglikelihood scores every label; generate answers greedily and parses. "
        "Default: loglikelihood for label tasks on local models, else generate"
    )
    max_new_tokens: int | None = Field(None, ge=1, description="generation budget; default 16 for labels, else 256")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="label scoring precision; bfloat16 (little faster on a CPU: see the README) scores "
        "again in float32 every call bf16's measured error could change, and is not guaranteed bit-identical"
    )
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        16, description="rows per batch (hf backend); auto: as many as the GPU's free memory holds (16 on a CPU)")
    bootstrap_resamples: int = Field(5000, ge=100)


@dataclass
class LoadedSystem:
    """A system with its backend open: evaluate it on several tasks while loading the model once.

    Use it as a context manager, or call `close()` when done."""

    name: str  # what it was loaded by (a model, a train run id, an API model from lab.yaml)
    system: System
    backend: Backend
    backend_name: BackendName | Literal["api"]
    precision: str = DEFAULT_PRECISION  # what it was opened for: its label-scoring evaluations score in it

    def check_precision(self, asked: str | None, caller: str) -> None:
        if asked not in (None, self.precision):
            raise LlamalabError(f"{caller}: {self.name} was loaded for precision {self.precision!r}, not {asked!r}: "
                                f"load it with load_system(..., precision={asked!r})")

    def scoring(self, settings: EvalSettings) -> EvalSettings:
        """Complete `settings` with label scoring in the precision the system was loaded for."""
        if settings.protocol != "loglikelihood":
            return settings
        return settings.model_copy(update={"precision": self.precision})

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> LoadedSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_system(lab: Lab, name: str, backend: BackendName = DEFAULT_BACKEND, precision: str = DEFAULT_PRECISION
                ) -> LoadedSystem:
    """Open `name` (a model, a train run id or an API model from lab.yaml) on `backend`, for `evaluate`."""
    system = resolve_system(lab, name)
    opened = system.open(backend, precision)
    return LoadedSystem(name, system, opened, "api" if system.api else backend, precision)


def evaluate(
    lab: Lab, system: str | LoadedSystem | EvalSettings, *, task: str | None = None, console: Console | None = None,
    resume: bool = False, reuse: bool = False, **options: Any,
) -> RunRecord:
    """Evaluate a system on a task split, write a complete run record and return it (`record.run` is a typed
    `EvalRun`, with metrics and their CIs).

    `system` is a name (a model, a train run id or an API model from lab.yaml), a `LoadedSystem` from
    `load_system` (evaluating it does not close it), or complete `EvalSettings`; `task` and `options` are the
    other `EvalSettings` fields (split, limit, shots, format, protocol, ...). With `resume`, continue the latest
    unfinished evaluation with the same settings. With `reuse`, return the latest finished evaluation with the
    same settings, if there is one, instead of running it again, or else continue an unfinished one (a killed
    process's), as `train(reuse=True)` does (studies use this to skip finished cells and continue killed ones).
    """
    console = console or Console(stderr=True)
    loaded = system if isinstance(system, LoadedSystem) else None
    if isinstance(system, EvalSettings):
        if task is not None or options:
            raise LlamalabError("evaluate(): give either EvalSettings or a system with task= and options, not both")
        settings = system
    else:
        fields = {"system": loaded.name if loaded else system, "task": task, **options}
        if loaded:
            if fields.get("backend") not in (None, loaded.backend_name) and loaded.system.api is None:
                raise LlamalabError(f"evaluate(): {loaded.name} was loaded on the {loaded.backend_name} backend, "
                                    f"not {fields['backend']!r}: load it with load_system(..., "
                                    f"backend={fields['backend']!r})")
            fields["backend"] = loaded.backend_name
            loaded.check_precision(fields.get("precision"), "evaluate()")
        settings = parse_model(EvalSettings, {k: v for k, v in fields.items() if v is not None}, "evaluate()")
    given = settings
    settings = settings.model_copy(update={"system": canonical_name(lab, settings.system)})
    task_spec = load_task(lab.task_path(settings.task), lab.root)
    resolved = loaded.system if loaded else resolve_system(lab, settings.system)
    budget = settings.max_new_tokens
    settings = complete_settings(settings, task_spec, resolved)
    if loaded:
        settings = loaded.scoring(settings)
    before = recorded_before(settings, given)  # an evaluation made before is still this one (if of this system)
    if budget is not None and settings.protocol == "loglikelihood":
        console.print(f"[yellow]max_new_tokens {budget} is not used: label scoring (--protocol loglikelihood) "
                      "generates nothing; --protocol generate would use it[/]")
    check_verbalizers(task_spec, settings.protocol)
    data = load_task_data(task_spec)
    if settings.limit is not None and settings.limit >= (size := len(data.split(settings.split))):
        console.print(f"[yellow]note:[/] --limit {settings.limit:,} is not below the {size:,} examples of "
                      f"{task_spec.name}/{settings.split}: evaluating all of them")
    inputs = Inputs(resolved.model.revision if resolved.model else None, data.file_hashes,
                    task_spec.definition_sha256("eval"), resolved.api.model_dump() if resolved.api else None)
    if reuse:
        mine = {"also": before, "where": lambda record: same_system(record, resolved)}
        if done := finished_run(lab.runs_dir, "eval", settings.model_dump(), inputs=inputs, **mine):
            return done
        resume = resume or has_unfinished(lab.runs_dir, "eval", run_name(task_spec, resolved), settings.model_dump(),
                                          inputs, **mine)
    elif not resume and has_unfinished(lab.runs_dir, "eval", run_name(task_spec, resolved), settings.model_dump(),
                                       inputs, also=before, where=lambda record: same_system(record, resolved)):
        console.print("[yellow]note:[/] an unfinished evaluation with these settings exists (a killed or "
                      "interrupted one): this starts a new one; add --resume to continue it instead")
    return _evaluate(lab, settings, task_spec, data, resolved, loaded, console, inputs if resume else None,
                     before)


def run_name(task: Task, system: System) -> str:
    """An evaluation's run name (its folder's, after the time): the task and the system's label."""
    return f"{task.name}-{system.label.replace('/', '_')}"


def _evaluate(lab: Lab, settings: EvalSettings, task: Task, data: TaskData, system: System,
              loaded: LoadedSystem | None, console: Console, resume: Inputs | None,
              before: list[dict] | None = None) -> RunRecord:
    """The evaluation; with `resume` (the inputs it must have started from), continuing an unfinished one."""
    examples = select_examples(data.split(settings.split), settings.limit)
    shots = draw_shots(task, data, settings)

    config = settings.model_dump()
    name = run_name(task, system)
    record = resume_run(lab.runs_dir, "eval", name, config, resume, also=before or [],
                        where=lambda found: same_system(found, system)) if resume else None
    started = time.perf_counter()
    # Before any run folder exists: a model that cannot load, or a setting its backend cannot honour, leaves none.
    try:
        if loaded is None:
            backend = system.open(settings.backend, settings.precision)
        else:
            backend = loaded.backend
            backend_for(system, settings.backend).check_precision(settings.precision)
    except BaseException as exc:
        if record is not None:  # a resumed run, marked running: stopped or failed again, never left "running"
            stopped = isinstance(exc, KeyboardInterrupt)
            record.update(status="interrupted" if stopped else "failed", ended=now_iso(),
                          error=None if stopped else f"{type(exc).__name__}: {exc}")
        raise
    load_s = time.perf_counter() - started
    if record is None:
        record = RunRecord.create(
            lab.runs_dir, "eval", name, config,
            system=system.to_dict(), backend=backend.provenance(),
            task={"name": task.name, "split": settings.split, "n": len(examples),
                  "split_size": len(data.split(settings.split)), "data_sha256": data.file_hashes,
                  "definition_sha256": task.definition_sha256("eval"),
                  "answer_type": task.answer.type},
            scoring=scoring_provenance(task, settings), prompt=None,
        )
    else:
        console.print(f"Resuming evaluation [bold]{record.id}[/]")
    try:
        with record.tracking():
            prompter = Prompter(task, backend.tokenizer, settings.format, shots,
                                list_labels=task.answer.type == "label" and settings.protocol == "generate")
            record.update(prompt=prompt_provenance(prompter, record))
            unconditional = None
            if settings.protocol == "loglikelihood":  # in float32: its scores shift every label's, in any precision
                calibration = content_free_scores(prompter, backend, examples[0], "float32")
                unconditional = calibration["logprobs"]
                record.update(scoring=record.run.scoring.model_copy(update={"calibration": calibration}))
            path = record.folder / PREDICTIONS
            repair_jsonl(path)
            done = {row["id"] for row in read_jsonl(path)}
            todo = [ex for ex in examples if ex.id not in done]
            n_tokens, computed, seconds = predict_rows(task, prompter, backend, todo, path, settings, console,
                                                       len(done), unconditional) if todo else (0, None, 0.0)
            rows = _ordered(read_jsonl(path), examples)
            metrics = metric_intervals(task.metric_names, rows, task.answer.labels or None,
                                       settings.bootstrap_resamples)
            summary = prediction_summary(task.answer, rows, settings.protocol)
            if unconditional is not None:
                summary["accuracy_by_normalization"] = normalization_accuracies(
                    rows, task.answer.labels, _label_chars(task), unconditional)
            for warning in summary["warnings"]:
                console.print(f"[yellow]warning[/] {escape(warning)}")
            timed = record.run.timings
            if all("seconds" in r for r in rows):  # each row's share of its batch's time, a killed session's too
                # answers from the API request cache left out: their time is not the API's (none: no time to state)
                answered = [r for r in rows if not r.get("cached")]
                predict_s, predict_examples = sum(r["seconds"] for r in answered), len(answered)
            else:  # rows written before they carried their time: the sessions that ended (a killed one said none)
                predict_s = timed.get("predict_s", 0) + seconds
                now_ids = {ex.id for ex in todo}
                predict_examples = int(timed.get("predict_examples", 0)) + sum(
                    1 for r in rows if r["id"] in now_ids and not r.get("cached"))
            rates = {} if not (todo and predict_examples) else {  # nothing computed this session: no rate
                "examples_per_s": round(predict_examples / max(predict_s, 1e-9), 2),
                # a chat API's tokens are its own (usage has them): no rate of ours to state
                **({"tokens_per_s": round(n_tokens / max(seconds, 1e-9))} if system.kind != "api" else {}),
                # what the model computed (a shared prompt prefix once, no padding): the work's floor
                **({"forward_tokens": computed, "forward_tokens_per_s": round(computed / max(seconds, 1e-9))}
                   if computed is not None else {}),
                # bfloat16 scoring re-scores its close calls in float32: the rate covers both passes
                **({"rechecked_float32": backend.rechecked} if settings.precision == "bfloat16"
                   and settings.protocol == "loglikelihood" and hasattr(backend, "rechecked") else {}),
                # the rows `batch_size: auto` put in one batch at most (it sizes them to the memory)
                **({"largest_batch_rows": backend.largest_batch} if settings.batch_size == "auto"
                   and getattr(backend, "largest_batch", 0) else {})}
            record.update(
                metrics=metrics,
                predictions_summary=summary,
                # every answer from the API request cache: no time of the API's to state (not 0 s)
                timings={**{k: v for k, v in timed.items() if k != "predict_s"}, "load_model_s": round(load_s, 2),
                         **({"predict_s": round(predict_s, 6)} if predict_examples else {}),
                         "predict_examples": predict_examples},
                throughput=rates or record.run.throughput,
                usage=_usage(rows),
            )
            write_json_atomic(record.folder / "metrics.json", metrics)
    finally:
        if loaded is None:  # a loaded system stays open for the caller's next task
            backend.close()
    return record


def check_verbalizers(task: Task, protocol: str | None) -> None:
    """Before a run that generates labels: each must be findable in an answer (not only when settings are hashed,
    so records of an older run stay readable)."""
    if protocol == "generate" and task.answer.type == "label" and (why := unparseable_verbalizers(
            {label: task.answer.verbalize(label) for label in task.answer.labels})):
        raise LlamalabError(f"task {task.name!r}: {why}, so generated answers cannot be scored: give the labels "
                            "distinct `verbalizers:` made of words, or score them with --protocol loglikelihood")


def draw_shots(task: Task, data: TaskData, settings: EvalSettings) -> tuple[Example, ...]:
    """The k-shot examples, drawn (seeded) from the train split; a zero-shot evaluation needs no train split."""
    if not settings.shots:
        return ()
    if settings.split == "train":
        raise LlamalabError(f"--shots {settings.shots} with --split train: the shots are drawn from the train split, "
                            "so evaluated examples would be shown with their answers in their own prompts: evaluate "
                            "--split dev or test, or use --shots 0")
    train = data.splits.get("train")
    if not train:
        raise LlamalabError(f"--shots {settings.shots} draws its examples from the train split of task "
                            f"{task.name!r}, which it does not have (have: {', '.join(data.splits)}): use --shots 0, "
                            f"or add a train file to tasks/{task.name}.yaml")
    if settings.shots > len(train):
        raise LlamalabError(f"--shots {settings.shots}: the train split of task {task.name!r} has "
                            f"{len(train)} example(s): use --shots {len(train)} or fewer")
    return tuple(random.Random(settings.shot_seed).sample(train, settings.shots))


def complete_settings(settings: EvalSettings, task: Task, system: System) -> EvalSettings:
    """Fill in the defaults that depend on the task and system, and reject impossible combinations."""
    is_api = system.kind == "api"
    protocol = settings.protocol or ("loglikelihood" if task.answer.type == "label" and not is_api else "generate")
    if protocol == "loglikelihood" and task.answer.type != "label":
        raise LlamalabError(f"task {task.name!r} has {task.answer.type} answers: use --protocol generate")
    if protocol == "loglikelihood" and is_api:
        raise LlamalabError(f"{system.label} is a chat API without log-likelihoods: use --protocol generate")
    if protocol == "generate" and settings.precision != DEFAULT_PRECISION:
        raise LlamalabError(f"--precision {settings.precision} applies to label scoring (--protocol loglikelihood); "
                            "generation runs in the backend's own precision: drop --precision")
    if is_api and settings.format == "plain":
        raise LlamalabError(f"{system.label} is a chat API: it can only be prompted in chat format")
    prompt_format = "chat" if is_api else settings.format or system.trained_format or task.prompt.format
    max_new = settings.max_new_tokens or task.answer.default_max_new_tokens
    # an API model runs on its API whatever the backend setting (a study's, say): recorded as what ran it
    backend = "api" if is_api else settings.backend
    return settings.model_copy(update={"protocol": protocol, "format": prompt_format, "max_new_tokens": max_new,
                                       "backend": backend})


def settings_hashes(lab: Lab, spec: Task, system: str, **options: Any) -> tuple[str, set[str]]:
    """The settings hashes under which `evaluate(lab, system, task=spec.name, **options)` finds an evaluation of
    its own, without loading a model: studies find their evaluations by them, as `evaluate(reuse=True)` does, so
    an evaluation of the same system with other settings (shots, format, protocol, ...) is never taken for
    theirs. The hash it records now, and those recorded before evaluations spelled each system one way and an
    API model's backend as api (`recorded_before`: a record found by one of those must be `same_system`)."""
    given = parse_model(EvalSettings, {"system": system, "task": spec.name,
                                       **{k: v for k, v in options.items() if v is not None}}, "evaluate()")
    now = complete_settings(given.model_copy(update={"system": canonical_name(lab, system)}), spec,
                            system_outline(lab, system))
    return config_hash(now.model_dump()), {config_hash(c) for c in recorded_before(now, given)}


def recorded_before(settings: EvalSettings, given: EvalSettings) -> list[dict]:
    """Complete `settings` as evaluations recorded them before one spelling per system (`canonical_name`) and an
    API model's backend recorded as api: the system as given, the backend as asked for (an API model's: also
    hf, the default then). A record found by these must be checked to be of the same system (`same_system`):
    before, a local model and an API model of one name recorded the same settings."""
    backends = {given.backend, DEFAULT_BACKEND} if settings.backend == "api" else {given.backend}
    return [settings.model_copy(update={"system": given.system, "backend": b}).model_dump() for b in sorted(backends)]


def same_system(record: RunRecord, system: System) -> bool:
    """Whether an evaluation record is of `system`: its kind (base, fine-tuned, API) and, fine-tuned, its run."""
    recorded = record.run.system
    return recorded.kind == system.kind and (system.train_run is None or recorded.train_run == system.train_run)


def select_examples(examples: list[Example], limit: int | None) -> list[Example]:
    """All examples, or a seeded subset: every system evaluated with the same limit sees the same ones."""
    if limit is None or limit >= len(examples):
        return examples
    chosen = set(random.Random(0).sample(range(len(examples)), limit))
    return [ex for i, ex in enumerate(examples) if i in chosen]


def scoring_provenance(task: Task, settings: EvalSettings) -> dict:
    if settings.protocol == "generate":
        parsing = {
            "label": "the label whose verbalizer starts the answer's first line (case and every character but "
            "letters, digits and their accents ignored), else the first one that line mentions, else the first one "
            "the whole answer mentions; the prompt lists the allowed labels",
            "number": "the number right after the first #### that has one, else right after the first 'answer is' "
            "or 'answer:' that has one (either followed along an arithmetic chain to its result: '5 + 3 = 8' is 8), "
            "else the first in the last \\boxed{}, else the last number; a fraction without an exact decimal is "
            "kept as a fraction",
            "text": "exact_match after removing accents (the combining diacritical marks), reading full-width forms "
            "as ASCII, lower-casing, and removing punctuation (Unicode punctuation categories; symbols such as $ and "
            "+ are kept), articles and extra whitespace; exact_match_strict after collapsing whitespace only",
            "entities": "a JSON list of {type, text}; invalid JSON counts as no entities",
            "sql": "the first fenced code block (else the text) up to the first semicolon outside quotes; "
            "exact_match after SQL normalisation (keywords and unquoted or back-quoted identifiers case-folded, the "
            "back-quotes dropped; spacing between tokens and the quote style of literals, in single or double "
            "quotes, normalised; a trailing semicolon dropped; no execution); exact_match_strict after collapsing "
            "whitespace only",
        }[task.answer.type]
        rule = run_on_rule(task.prompt.template, list_labels=task.answer.type == "label")
        if settings.format == "plain" and rule:
            parsing += f"; {rule} (the model starting another example): the rest is kept in the generation, not scored"
        return {"protocol": "generate", "decoding": {"greedy": True, "max_new_tokens": settings.max_new_tokens},
                "parsing": parsing, "unparsed_answer": "counted as wrong"}
    return {
        "protocol": "loglikelihood",
        "normalize": task.answer.normalize,
        "normalization": NORMALIZATIONS[task.answer.normalize],
        "tokenization": "prompt and answer tokenized together, split at the prompt's tokens (as lm-eval)",
        "precision": backend_spec(settings.backend).recorded_precision(settings.precision),
    }


CONTENT_FREE = "N/A"


def content_free_scores(prompter: Prompter, backend, example: Example, precision: str) -> dict:
    """Each label's log-likelihood after the prompt with the example's text replaced by 'N/A' (Zhao et al.,
    2021, "Calibrate before use"): how much the prompt alone favours each label."""
    task = prompter.task
    fields = {**example.fields, **{name: CONTENT_FREE for name in task.data.text_fields}}
    prompt = prompter.prompt(Example("content-free", fields, example.answer, "content-free prompt"))
    labels = task.answer.labels
    encoded = [prompter.encode(prompt, prompter.continuation(task.answer.verbalize(label))) for label in labels]
    found: list[list[ChoiceScore]] = []
    backend.score_choices([ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded])], 1,
                          lambda _, scores: found.extend(scores), precision)
    return {"prompt": prompt, "logprobs": {label: s.logprob for label, s in zip(labels, found[0], strict=True)}}


def _label_chars(task: Task) -> dict[str, int]:
    return {label: len(task.answer.verbalize(label)) for label in task.answer.labels}


def prompt_provenance(prompter: Prompter, record: RunRecord) -> dict:
    """What shaped the prompt; the chat template itself is stored with the run."""
    info = {
        "format": prompter.format,
        "template": prompter.task.prompt.template,
        "system": prompter.task.prompt.system,
        "target_delimiter": prompter.task.prompt.target_delimiter,
        "labels_listed": prompter.list_labels,
        "shots": [ex.id for ex in prompter.shots],
    }
    if prompter.format == "chat" and prompter.tokenizer is not None:
        info.update(store_chat_template(prompter.tokenizer, record.folder))
    return info


def predict_rows(task: Task, prompter: Prompter, backend, examples, path, settings, console, already: int,
             unconditional: dict[str, float] | None = None):
    """Predict `examples`, appending each finished batch to predictions.jsonl. Returns (tokens, computed, seconds):
    the prompt and answer tokens, the tokens the model computed for them where the backend counts them (label
    scoring: a shared prefix once, no padding; else None), and the time taken."""
    labels = task.answer.labels
    verbalized = {label: task.answer.verbalize(label) for label in labels}
    chat_api = backend.tokenizer is None
    prompts = [json.dumps(prompter.messages(ex)) if chat_api else prompter.prompt(ex) for ex in examples]

    def row(i: int, **fields) -> dict:
        ex = examples[i]
        return {"id": ex.id, "prompt_sha256": hashlib.sha256(prompts[i].encode()).hexdigest(),
                "prompt": prompts[i], "gold": ex.answer, **fields}

    total = already + len(examples)
    with progress_bar(console, f"eval {task.name}", total, unit="ex", done=already) as advance:
        started = time.perf_counter()
        last = [started]

        def timed(rows: list[dict]) -> list[dict]:
            """Each row with its share of the time since the last batch was saved: the time of a session killed
            later stays with its rows (batches go longest first: a resumed run timed by its last session alone
            looked fast)."""
            now = time.perf_counter()
            # an answer from the API request cache took a file read: the batch's time is its requests'
            sent = [r for r in rows if not r.get("cached")] or rows
            share, last[0] = (now - last[0]) / max(len(sent), 1), now
            return [{**r, "seconds": round(share, 6) if not r.get("cached") or len(sent) == len(rows) else 0.0}
                    for r in rows]

        if settings.protocol == "loglikelihood":
            requests = []
            chars = _label_chars(task)
            for prompt in prompts:
                encoded = [prompter.encode(prompt, prompter.continuation(v)) for v in verbalized.values()]
                # the ranking label_score applies, so reduced-precision scoring knows which calls are close
                ranking = tuple(
                    ((unconditional or {}).get(label, 0.0) if task.answer.normalize == "calibrate" else 0.0,
                     float(len(e.answer_ids) if task.answer.normalize == "mean" else
                           max(chars[label], 1) if task.answer.normalize == "chars" else 1))
                    for label, e in zip(labels, encoded, strict=True))
                requests.append(ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded], ranking))
            n_tokens = sum(len(r.prompt_ids) + sum(len(c) for c in r.choice_ids) for r in requests)
            computed = backend.forward_tokens(requests) if hasattr(backend, "forward_tokens") else None

            def save_scores(indices: list[int], scores) -> None:
                rows = []
                for i, per_label in zip(indices, scores, strict=True):
                    raw = dict(zip(labels, per_label, strict=True))
                    if broken := [lab for lab, s in raw.items() if math.isnan(s.logprob)]:
                        # max() over NaNs picks whichever label comes first: the accuracy would be a label share
                        raise LlamalabError(
                            f"example {examples[i].id}: the model's log-probability of {broken[0]!r} is NaN (its "
                            f"weights, or {settings.precision} arithmetic, overflowed): evaluate with precision: "
                            "float32, or check the model")
                    values = {lab: label_score(s.logprob, s.n_tokens, chars[lab],
                                               (unconditional or {}).get(lab), task.answer.normalize)
                              for lab, s in raw.items()}
                    prediction = max(labels, key=lambda lab: values[lab])
                    rows.append(row(
                        i, prediction=prediction, correct=prediction == examples[i].answer,
                        scores={lab: round(v, 5) for lab, v in values.items()},
                        logprobs={lab: s.logprob for lab, s in raw.items()},  # unrounded: re-scored later
                        tokens={lab: s.n_tokens for lab, s in raw.items()},
                    ))
                append_jsonl(path, timed(rows))
                advance(len(indices))

            backend.score_choices(requests, settings.batch_size, save_scores, settings.precision)
        else:
            inputs = [prompter.messages(ex) for ex in examples] if chat_api else [
                prompter.encode(prompt, "").prompt_ids for prompt in prompts]
            n_tokens = 0 if chat_api else sum(len(ids) for ids in inputs)
            computed = None

            def save_generations(indices: list[int], generations) -> None:
                rows = []
                for i, g in zip(indices, generations, strict=True):
                    answer = prompter.answer_text(g.text)  # a plain run-on cut where the next example starts
                    cut = {"answer_text": answer} if answer != g.text else {}  # what was scored, where it differs
                    rows.append(row(i, generation=g.text, **cut,
                                    **score_generation(task.answer, examples[i].answer, answer), **g.extra))
                append_jsonl(path, timed(rows))
                advance(len(indices))

            try:
                backend.generate(inputs, settings.max_new_tokens, settings.batch_size, save_generations)
            except ApiError as exc:  # "request 3" is a position among this call's examples: name the example
                if exc.request is None or not 0 <= exc.request < len(examples):
                    raise
                raise ApiError(str(exc).replace(f"request {exc.request}", f"example {examples[exc.request].id}", 1),
                               exc.request) from None
        return n_tokens, computed, time.perf_counter() - started


def _ordered(rows: list[dict], examples: list[Example]) -> list[dict]:
    """One row per example, in example order (a resumed run may hold a row twice: the first wins)."""
    by_id: dict[str, dict] = {}
    for r in rows:
        by_id.setdefault(r["id"], r)
    missing = [ex.id for ex in examples if ex.id not in by_id]
    if missing:
        raise LlamalabError(f"{len(missing)} example(s) have no prediction, e.g. {missing[0]}")
    return [by_id[ex.id] for ex in examples]


def _usage(rows: list[dict]) -> dict | None:
    """Token usage, cost and latency of API requests (None for local models)."""
    api_rows = [r for r in rows if "cost_usd" in r]
    if not api_rows:
        return None
    latencies = sorted(r["latency_s"] for r in api_rows if not r.get("cached"))
    cost = sum(r["cost_usd"] for r in api_rows)
    return {
        "input_tokens": sum(r["input_tokens"] for r in api_rows),
        "output_tokens": sum(r["output_tokens"] for r in api_rows),
        # what answers that could not be used cost before each answer was asked for again (in cost_usd too)
        "retried_input_tokens": sum(r.get("retried_input_tokens", 0) for r in api_rows),
        "retried_output_tokens": sum(r.get("retried_output_tokens", 0) for r in api_rows),
        "content_filtered": sum(1 for r in api_rows if r.get("content_filtered")),
        # of those, the ones the provider sent no or partial usage for (older rows: 0 input tokens marks them)
        "content_filtered_unmetered": sum(1 for r in api_rows if r.get("content_filtered")
                                          and (r.get("unmetered") or not r["input_tokens"])),
        "cost_usd": round(cost, 6),  # at list prices, whether paid now or earlier (cache hits)
        "paid_now_usd": round(sum(r["cost_usd"] for r in api_rows if not r.get("cached")), 6),
        "cost_per_1k_examples_usd": round(1000 * cost / len(api_rows), 6),
        "cache_hits": sum(1 for r in api_rows if r.get("cached")),
        "latency_s_median": statistics.median(latencies) if latencies else None,
        # over the requests that were sent: a cache hit took no time, and would make the API look faster
        "latency_s_per_1k_examples": round(1000 * sum(latencies) / len(latencies), 2) if latencies else None,
    }
