"""The methods section, written from the run records alone.

Every clause rests on a recorded field (run.json, config.yaml, the metrics and the board built from the
predictions): a clause whose field is missing is left out rather than guessed, and a claim such as "chosen on
the dev split" is made only when the dev runs in the records show that choice. The few statements that are
facts of the code rather than of a record (answer-only loss, AdamW, a seeded subset) are marked where made.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import (
    NO_SHARED,
    SystemRow,
    format_seconds,
    reference_name,
    tests_run,
    untested,
)
from llamalab.publish.results import TaskBoard
from llamalab.runs.record import RunRecord
from llamalab.runs.schema import DataUsed, EvalRun, ScoringInfo, TrainRun
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import NORMALIZATIONS  # for older records, which lack scoring.normalization

# Eval settings that do not change what a configuration is: which data it saw, and how fast it ran.
_NOT_CONFIGURATION = {"system", "task", "split", "limit", "batch_size", "bootstrap_resamples"}
_SETTING_NAMES = {"format": "prompt format", "shots": "number of shots", "shot_seed": "shot seed",
                  "protocol": "scoring protocol", "max_new_tokens": "generation budget", "precision": "precision",
                  "backend": "backend"}


@dataclass
class _Eval:
    """One evaluation on the board: its label there, its record, its config.yaml and its board row."""

    name: str
    record: RunRecord
    config: dict
    row: SystemRow  # its row on the board
    predictions: dict[str, dict]  # example id -> prediction row

    @property
    def run(self) -> EvalRun:
        return self.record.run  # type: ignore[return-value] - board entries are eval runs


def methods_paragraphs(
    board: TaskBoard, trained: dict[str, RunRecord], dev: Sequence[RunRecord] = ()
) -> list[str]:
    """Plain-text paragraphs describing how the numbers of one task's leaderboard were made.

    `trained` maps train run ids to their records (the fine-tuned systems on the board); `dev` holds the
    finished evaluations of the task (`results.task_evals`): its dev-split ones are the only evidence for a claim
    that something was chosen on dev, and its test-split ones say whether test was seen before them."""
    evals = [
        _Eval(row.system, entry.record, entry.record.config, row, entry.predictions)
        for row, entry in zip(board.rows, board.entries, strict=True)
    ]
    sizes = _SplitSizes(board)
    paragraphs = [_task_and_data(board, evals, sizes)]
    if selection := _selection(board, evals, dev, sizes):
        paragraphs.append(selection)
    tuned = [trained[r] for r in dict.fromkeys(e.run.system.train_run for e in evals) if r in trained]
    paragraphs += [_training(record, board.name) for record in tuned]
    paragraphs.append(_evaluation(board, evals))
    if software := _software([*tuned, *(e.record for e in evals)]):
        paragraphs.append(software)
    return paragraphs


# --- task, data and the examples each system saw ---------------------------------------------------------------


def _task_and_data(board: TaskBoard, evals: list[_Eval], sizes: _SplitSizes) -> str:
    answer_type = evals[0].run.task.answer_type or board.task.answer.type
    metrics = ", ".join(board.comparison.metrics)
    hashes = [e.run.task.data_sha256 for e in evals]
    if all(h == hashes[0] for h in hashes):
        data = f"Data: {_files(hashes[0])}." if hashes[0] else "The data files' hashes are not recorded."
    else:  # a board mixing data versions (or records without hashes) must say so
        groups = _grouped((_files(h) if h else "", e.name) for h, e in zip(hashes, evals, strict=True))
        opening = ("The evaluations read different data" if sum(1 for text in groups if text) > 1
                   else "Not every evaluation recorded the data it read")
        data = f"{opening}: " + "; ".join(
            f"{text or 'no hashes recorded'} ({_join(names)})" for text, names in groups.items()) + "."
    return (f"Task {board.name} ({answer_type} answers, scored by {metrics}). "
            f"{_examples_sentence(board, evals, sizes)} {data}")


def _files(hashes: dict[str, str]) -> str:
    return "; ".join(f"{path} (SHA-256 {digest[:12]})" for path, digest in sorted(hashes.items()))


def _examples_sentence(board: TaskBoard, evals: list[_Eval], sizes: _SplitSizes) -> str:
    split = board.comparison.split
    phrases = [_sample(e.run, e.config, split, sizes) for e in evals]
    groups = _grouped(zip(phrases, (e.name for e in evals), strict=True))
    if len(groups) == 1:
        same = len(evals) > 1 and all(e.predictions.keys() == evals[0].predictions.keys() for e in evals)
        who = "Every system was" if len(evals) > 1 else "The system was"
        return f"{who} evaluated on {phrases[0]}{', the same examples for all' if same else ''}."
    return ("The systems were not all evaluated on the same examples: " + "; ".join(
        f"{phrase} for {_join(names)}" for phrase, names in groups.items()) + ".")


def _sample(run: EvalRun, config: dict, split: str, sizes: _SplitSizes, show_limit: bool = True) -> str:
    """Which examples of `split` an evaluation saw, from task.n, task.split_size and config.limit."""
    n = run.task.n
    total = run.task.split_size
    if total is None:
        total = sizes.get(split, run.task.data_sha256)
    limit = config.get("limit")
    shown = f" (limit {limit})" if limit is not None and show_limit else ""
    # select_examples takes every example when the limit is not below the split's size: fewer than it asked for
    if (total is not None and n >= total) or (limit is not None and n < limit):
        return f"all {_count(n, 'example')} of the {split} split"
    # select_examples draws the subset with a fixed seed: every run with the same limit sees the same examples.
    how = "a seeded random subset of" if limit is not None else ""
    if total is None:
        return f"{how} {n:,} examples of the {split} split, whose size is not recorded{shown}".strip()
    return f"{how} {n:,} of the {total:,} examples of the {split} split{shown}".strip()


class _SplitSizes:
    """Full split sizes for records made before task.split_size was recorded: read from the task's data, and
    used only when the data files still hash as the record says."""

    def __init__(self, board: TaskBoard):
        self.task = board.task
        self.data: Any = None
        self.failed = False

    def get(self, split: str, recorded_hashes: dict | None) -> int | None:
        if self.data is None and not self.failed:
            try:
                self.data = load_task_data(self.task)
            except (LlamalabError, OSError, ValueError):
                self.failed = True
        if self.data is None or not recorded_hashes or self.data.file_hashes != recorded_hashes:
            return None
        return len(self.data.split(split))


# --- selection on the dev split ----------------------------------------------------------------------------------


def _selection(board: TaskBoard, evals: list[_Eval], dev: Sequence[RunRecord], sizes: _SplitSizes) -> str | None:
    """What the dev split was used for, per system; None when the board itself is not a held-out split."""
    if board.comparison.split != "test":
        return None
    of_task = [r for r in dev if isinstance(r.run, EvalRun) and r.run.finished and r.run.task.name == board.name]
    dev = [r for r in of_task if r.run.task.split == "dev"]
    if not dev:
        return (f"No configuration was selected on a dev split: the records hold no dev-split evaluation of "
                f"{board.name}.")
    # A system is its weights (as the leaderboard pairs them), not its label: two models may share a label, and
    # one model's label may change
    by_system: dict[str, list[_Eval]] = {}
    for e in evals:
        by_system.setdefault(e.run.system_key.weights, []).append(e)
    sentences, unselected = [], []
    for weights, tests in by_system.items():
        runs = [r for r in dev if r.run.system_key.weights == weights]
        # any test evaluation of it, not only the board's latest: one made before the dev runs chose nothing
        seen_on_test = [r for r in of_task if r.run.task.split == "test" and r.run.system_key.weights == weights]
        if runs:
            sentences.append(_system_selection(tests[0].run.system.label, tests, runs, board.metric, sizes,
                                               seen_on_test))
        else:
            unselected += [e.name for e in tests]
    if unselected:
        its = "its configuration was" if len(unselected) == 1 else "their configurations were"
        sentences.append(f"No dev-split evaluation of {_join(unselected)} is recorded: {its} not selected on a "
                         "dev split.")
    return "Selection: " + " ".join(sentences)


def _system_selection(label: str, tests: list[_Eval], runs: list[RunRecord], metric: str, sizes: _SplitSizes,
                      seen_on_test: Sequence[RunRecord] = ()) -> str:
    """Whether the dev runs of one system chose its test configuration: only runs that ended before its first
    test evaluation (of any configuration, `seen_on_test`) started can have, and only if the configuration on
    test is among the best of them."""
    # A dev run whose times are missing, or (in older records, kept to the second) that ended in the second its
    # test run started, is not shown to have come first, so it never counts as a candidate.
    first_test = min(_time(run.started, datetime.min) for run in [*(e.run for e in tests),
                                                                   *(r.run for r in seen_on_test)])
    before = [r for r in runs if _time(r.run.ended, datetime.max) < first_test]
    if not before:
        return (f"{label} was evaluated on the dev split ({len(runs)} run(s)), but no such evaluation is recorded as "
                "finished before its test evaluation began, so none chose its test configuration.")
    after = (f" {len(runs) - len(before)} further dev evaluation(s) of it are not recorded as finished before its "
             "test evaluation began." if len(runs) > len(before) else "")
    configs = _dev_configs(before, metric, sizes)
    varied = _varied([c.settings for c in configs])
    same_sample = len({c.sample for c in configs}) == 1
    listing = ", ".join(f"{_describe(c.settings, varied)} {_score(c.value)}" + ("" if same_sample else
                                                                              f" on {c.sample}") for c in configs)
    sample = configs[0].sample if same_sample else "differing samples of the dev split"
    if len(configs) == 1:
        only = configs[0]
        return (f"{label} was evaluated on the dev split in one configuration only ({_describe(only.settings, [])}, "
                f"{metric} {_score(only.value)} on {only.sample}) before its test evaluation: no alternative was "
                f"compared there.{after}")
    compared = f"{len(configs)} dev evaluations on {sample} ({metric}: {listing})"
    return _verdict(label, metric, compared, configs, [_settings(e) for e in tests], varied) + after


@dataclass
class _DevConfig:
    settings: dict
    value: float | None  # the metric's recorded estimate on dev
    sample: str


def _dev_configs(runs: list[RunRecord], metric: str, sizes: _SplitSizes) -> list[_DevConfig]:
    """One entry per configuration (a re-run replaces the earlier one), best first."""
    latest = {_key(_settings(r)): r for r in runs}
    configs = [_DevConfig(_settings(r), m.estimate if (m := r.run.metrics.get(metric)) else None,
                          _sample(r.run, r.config, "dev", sizes, show_limit=False)) for r in latest.values()]
    return sorted(configs, key=lambda c: (c.value is None, -(c.value or 0), _describe(c.settings, [])))


def _varied(configs: list[dict]) -> list[str]:
    keys = [*_SETTING_NAMES, *sorted({k for c in configs for k in c} - set(_SETTING_NAMES))]
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def _verdict(label: str, metric: str, compared: str, configs: list[_DevConfig], tests: list[dict],
             varied: list[str]) -> str:
    """"Chosen" only when one configuration went to test and it scored highest on dev (ties named)."""
    if len(tests) > 1:
        return (f"{label} was compared in {compared} before its test evaluations, but its {len(tests)} test "
                "configurations are all on the board, so the dev runs chose none of them.")
    test = _describe(tests[0], varied)
    found = next((c for c in configs if _key(c.settings) == _key(tests[0])), None)
    known = [c.value for c in configs if c.value is not None]
    if found is None:
        outcome = f"its test configuration, {test}, was not among them"
    elif found.value is None:
        outcome = f"the {metric} of its test configuration, {test}, is not recorded there"
    elif found.value < max(known):
        outcome = f"its test configuration, {test}, did not score highest there, so it was not chosen by them"
    elif len(known) == len(configs) and len(set(known)) == 1:
        outcome = f"they all scored the same, so they did not single out its test configuration, {test}"
    else:
        ties = [_describe(c.settings, varied) for c in configs if c is not found and c.value == found.value]
        tied = f", tied with {_join(ties)}" if ties else ""
        what = _join([_SETTING_NAMES.get(k, k) for k in varied])
        return (f"The {what} of {label} {'were' if len(varied) > 1 else 'was'} chosen among {compared}; its test "
                f"configuration, {test}, scored highest{tied}.")
    return f"{label} was compared in {compared} before its test evaluation, but {outcome}."


def _settings(record: RunRecord | _Eval) -> dict:
    """An evaluation's configuration; an API model runs on its API whatever backend its settings name (older
    records name hf, or whatever was asked for, where newer ones name api)."""
    api = getattr(record.run.system, "kind", None) == "api"
    return {k: v for k, v in record.config.items() if k not in _NOT_CONFIGURATION and not (api and k == "backend")}


def _key(settings: dict) -> str:
    return repr(sorted(settings.items(), key=lambda kv: kv[0]))


def _describe(settings: dict, varied: list[str]) -> str:
    shots = settings.get("shots") or 0
    words = [f"{shots}-shot" if shots else "zero-shot", str(settings.get("format") or "unrecorded format")]
    words += [f"{_SETTING_NAMES.get(k, k)} {settings.get(k)}" for k in varied if k not in ("format", "shots")]
    return " ".join(words[:2]) + "".join(f", {w}" for w in words[2:])


def _score(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "(not recorded)"


def _time(stamp: str | None, missing: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(stamp) if stamp else missing
    except ValueError:
        moment = missing
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # records write UTC


# --- training ----------------------------------------------------------------------------------------------------


def _computed(run: TrainRun) -> list[str]:
    """Its precision and activation checkpointing: where its sessions differed (one resumed on another machine),
    each with the steps it held for."""
    sessions, last = run.sessions, run.metrics.steps if run.metrics else None
    if not sessions or sessions[0].from_step != 0 or last is None:  # not recorded: as its last session said
        return [*([f"{run.precision} precision"] if run.precision else []),
                *(["activation checkpointing"] if run.memory is not None and run.memory.activation_checkpointing
                  else [])]
    precision = _held(sessions, last, lambda s: s.precision)
    checkpointing = [(first, end) for on, first, end in _held(sessions, last, lambda s: s.activation_checkpointing)
                     if on]
    if len(precision) == 1:
        clauses = [f"{precision[0][0]} precision"]
    else:
        clauses = [" and ".join(f"{value} precision for {_steps(first, end)}" for value, first, end in precision)]
    if checkpointing:
        whole = checkpointing == [(1, last)]
        clauses.append("activation checkpointing" + ("" if whole else " for " + " and ".join(
            _steps(first, end) for first, end in checkpointing)))
    return clauses


def _held(sessions: list, last: int, value) -> list[tuple[Any, int, int]]:
    """(value, first step, last step) for each stretch of steps the sessions computed alike."""
    stretches: list[tuple[Any, int, int]] = []
    for session, after in zip(sessions, [*(s.from_step for s in sessions[1:]), last], strict=True):
        if stretches and stretches[-1][0] == value(session):
            stretches[-1] = (stretches[-1][0], stretches[-1][1], after)
        else:
            stretches.append((value(session), session.from_step + 1, after))
    return stretches


def _steps(first: int, end: int) -> str:
    return f"step {first}" if first == end else f"steps {first}-{end}"


def _training(record: RunRecord, task: str) -> str:
    run, config = record.run, record.config
    assert isinstance(run, TrainRun)
    trained_on = run.task.name
    clauses = [*_recipe(run, config), _training_data(run.data_used, config, trained_on if trained_on != task else None)]
    if config.get("seed") is not None:
        clauses.append(f"training seed {config['seed']}")
    clauses += _computed(run)
    clauses.append("loss on the answer tokens only")  # the trainer masks every prompt token, always
    clauses.append(f"{run.prompt.format} prompt format")
    text = f"Fine-tuned system {record.id}: " + ", ".join(c for c in clauses if c) + "."
    if run.metrics is not None:
        # Stated, not interpreted: on a short run the loss may as well rise.
        text += (f" The training loss was {_loss(run.metrics.first_loss)} at the first logged step and "
                 f"{_loss(run.metrics.final_loss)} at the end (averaged over the last logged steps).")
    return text + _training_cost(run)


def _recipe(run: TrainRun, config: dict) -> list[str | None]:
    """Base model, method and optimisation, each only as far as the record and config.yaml hold it."""
    metrics = run.metrics
    base = f"base model {run.model.name} (revision {run.model.revision})"
    used = run.optimizer  # as the Trainer ran it (records from version 5); older ones: what config.yaml holds
    if config.get("lr_scheduler") == "constant":  # the Trainer's constant schedule has no warm-up
        schedule, warmup = "constant learning rate", None
    else:
        schedule = f"{config['lr_scheduler']} schedule" if "lr_scheduler" in config else None
        warmup = (f"{used.warmup_steps} warm-up step(s)" if used is not None
                  else f"warm-up ratio {_num(config['warmup_ratio'])}" if "warmup_ratio" in config else None)
    optimizer = [f"learning rate {_num(config['learning_rate'])}" if "learning_rate" in config else None,
                 schedule, warmup,
                 f"weight decay {_num(config['weight_decay'])}" if config.get("weight_decay") is not None else None]
    if used is not None:
        optimizer.append(f"betas {_num(used.betas[0])} and {_num(used.betas[1])}, epsilon {_num(used.epsilon)}")
        optimizer.append(f"gradients clipped to a global norm of {_num(used.max_grad_norm)}"
                         if used.max_grad_norm else "no gradient clipping")
    # The recipe sets no optimizer but the Trainer's AdamW (fused, where torch has it)
    name = "AdamW" if used is None or used.name.lower().startswith("adamw") else used.name
    clauses = [base, _method(config), f"{name} (" + ", ".join(c for c in optimizer if c) + ")" if any(optimizer)
               else name]
    if "batch_size" in config:
        accumulation = f", gradient accumulation {config['grad_accum']}" if "grad_accum" in config else ""
        clauses.append(f"batch size {config['batch_size']}{accumulation}")
    if metrics is not None:
        limit = f" (max_steps {config['max_steps']})" if config.get("max_steps") else ""
        clauses.append(f"{_count(metrics.steps, 'optimizer step')}{limit}, {_num(metrics.epochs)} epoch(s)")
    return clauses


def _training_cost(run: TrainRun) -> str:
    tokens_per_s = run.throughput.get("tokens_per_s")
    speed = [f"{_whole(tokens_per_s)} tokens/s" if tokens_per_s else None,
             f"peak memory {_whole(run.peak_memory_mb)} MiB" + (f" in the first of its {run.processes} processes"
                                                           if (run.processes or 1) > 1 else "")
             if run.peak_memory_mb is not None else None]
    speed = [c for c in speed if c]
    where = _where_trained(run)
    train_s = run.timings.get("train_s")
    if train_s is not None:
        details = f" ({', '.join(speed)})" if speed else ""
        timed, epochs = run.timings.get("train_epochs"), run.metrics.epochs if run.metrics else None
        if timed is not None and epochs and timed < epochs - 1e-3:  # a session killed before it recorded its time
            part, whole = _apart(timed, epochs)
            return (f" Training was interrupted and resumed: the sessions that recorded their time took "
                    f"{format_seconds(train_s)} for {part} of its {whole} epochs{details}, on {where}.")
        return f" Training took {format_seconds(train_s)}{details} on {where}."
    return f" Training: {', '.join(speed)}, on {where}." if speed else ""


def _where_trained(run: TrainRun) -> str:
    """The machine the run was made on; where its sessions ran on different devices, each with its steps (the
    machine recorded is the first session's, the speed the last's)."""
    sessions, last = run.sessions, run.metrics.steps if run.metrics else None
    if sessions and sessions[0].from_step == 0 and last is not None:
        devices = _held(sessions, last, lambda s: s.device)
        if len(devices) > 1:
            return ("sessions on " + " and ".join(f"{device} for {_steps(first, end)}" for device, first, end
                                                  in devices) + " (the tokens/s are the last session's, the peak "
                    "memory the largest a session recorded)")
    return _hardware(run)


def _whole(value: float) -> str:
    """A positive amount in whole units, never shown as 0."""
    text = f"{value:,.0f}"
    return "<1" if value > 0 and text == "0" else text


def _loss(value: float) -> str:
    """Three decimals; a loss too small for them in two significant digits (0.0004, not 0.000)."""
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.0005 else f"{value:.2g}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _method(config: dict) -> str | None:
    method = config.get("method")
    if method == "full":
        return "full fine-tuning of every weight"
    if method not in ("lora", "qlora"):
        return None
    lora = config.get("lora") or {}
    targets = lora.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    parts = [f"rank {lora['r']}" if "r" in lora else None, f"alpha {lora['alpha']}" if "alpha" in lora else None,
             f"dropout {_num(lora['dropout'])}" if "dropout" in lora else None,
             f"on {targets} layers" if targets else None]
    name = "LoRA" if method == "lora" else ("QLoRA: LoRA on the base model quantized to 4-bit NF4 with double "
                                             "quantization and bfloat16 compute (bitsandbytes)")
    return f"{name} (" + ", ".join(p for p in parts if p) + ")" if any(parts) else name


def _training_data(used: DataUsed | None, config: dict, other_task: str | None) -> str | None:
    if used is None:
        return None
    kept, skipped, size = used.train_examples, used.skipped_too_long, used.split_size
    split = f"the train split of {other_task}" if other_task else "the train split"
    if skipped is None:  # how many were drawn before the too-long ones went is not recorded: no more is said
        return f"{_count(kept, 'training example')} from {split}"
    drawn = skipped + kept
    wanted = config.get("train_examples")
    # training_subset draws with the experiment's seed, and takes the whole split when asked for as many or more.
    seed = f" drawn with seed {config['seed']}" if config.get("seed") is not None else ""
    if wanted is None or (size is not None and wanted >= size):
        source = f"all {drawn:,} examples of {split}"
    elif size is not None:
        source = f"a random subset of {drawn:,} of the {size:,} examples of {split}{seed}"
    else:  # records before the split's size: a subset only if the split held more than train_examples
        source = (f"{drawn:,} examples of {split} (train_examples {wanted:,}{seed}: a random subset if the split "
                  "held more; its size is not recorded)")
    if not skipped:
        return f"{_count(kept, 'training example')}: {source}, none skipped"
    longer = (f"longer than {config['max_length']} tokens" if config.get("max_length") is not None
              else "too long")
    return f"{_count(kept, 'training example')}: {source}, less {skipped:,} skipped as {longer}"


# --- evaluation --------------------------------------------------------------------------------------------------


def _evaluation(board: TaskBoard, evals: list[_Eval]) -> str:
    sentences = [f"Evaluation of {len(evals)} system(s)."]
    sentences += _scoring(evals)
    sentences.append(_prompts(evals))
    sentences.append(_quantized(evals))
    if all(_keeps_prompts(e) for e in evals):
        sentences.append("Every prompt, its SHA-256 and the prediction are kept per example in each run's "
                         "predictions.jsonl.")
    sentences.append(_intervals(board, evals))
    sentences.append(_comparison(board))
    sentences.append(_prediction_time(evals))
    return " ".join(s for s in sentences if s)


def _scoring(evals: list[_Eval]) -> list[str]:
    by_way = _grouped((_scoring_way(e.run.scoring), e.name) for e in evals)
    if len(by_way) == 1:
        return [f"All systems: {next(iter(by_way))}." if len(evals) > 1 else f"Scoring: {next(iter(by_way))}."]
    return [f"{_join(names)}: {way}." for way, names in by_way.items()]


def _scoring_way(scoring: ScoringInfo) -> str:
    if scoring.protocol == "loglikelihood":
        normalize = scoring.normalize
        rule = scoring.normalization or NORMALIZATIONS.get(normalize or "")
        how = f"every label scored by {rule}" if rule else "every label scored by its log-likelihood"
        parts = [f"{how} after the prompt (normalize: {normalize})" if normalize else f"{how} after the prompt",
                 "the highest-scoring label predicted"]
        if scoring.precision:
            parts.append(f"{scoring.precision} precision")
        if scoring.tokenization:
            parts.append(scoring.tokenization)
        return "; ".join(parts)
    decoding = scoring.decoding or {}
    budget = decoding.get("max_new_tokens")
    parts = [("greedy decoding" if decoding.get("greedy") else "generation") +
             (f" of at most {budget} new tokens" if budget is not None else "")]
    if scoring.parsing:
        parts.append(f"parsing: {scoring.parsing}")
    if scoring.unparsed_answer:
        parts.append(f"an answer that does not parse is {scoring.unparsed_answer}")
    return "; ".join(parts)


def _prompts(evals: list[_Eval]) -> str:
    by_prompt = _grouped((_prompt_way(e), e.name) for e in evals)
    if len(by_prompt) == 1:
        return f"Prompts: {next(iter(by_prompt))}."
    return "Prompts: " + "; ".join(f"{way} for {_join(names)}" for way, names in by_prompt.items()) + "."


def _prompt_way(e: _Eval) -> str:
    prompt = e.run.prompt
    fmt = prompt.format if prompt else e.config.get("format")
    shots = len(prompt.shots) if prompt else e.config.get("shots")
    where = f"{fmt} format" if fmt else "format not recorded"
    if shots is None:
        return f"{where}, number of shots not recorded"
    if shots == 0:
        return f"{where}, zero-shot"
    seed = e.config.get("shot_seed")
    # evaluate() draws the shots from the train split; the seed is the record's, the example ids are in run.json.
    drawn = f", drawn at random from the train split with shot seed {seed}" if seed is not None else ""
    return f"{where}, {_count(shots, 'example')} in the prompt{drawn}"


def _quantized(evals: list[_Eval]) -> str:
    """Which systems are a quantization study's GGUF exports, and of what (the record's `system.quantized`; a
    record from before schema 9 by its file's name)."""
    exports = [f"{e.name} is " + (f"fine-tuned run {s.train_run}'s weights" if s.train_run and s.quantized else
                                  f"the model file {s.model.name if s.model else s.label}")
               + f" at GGUF type {quant}, run by the {e.run.backend.backend} backend"
               for e in evals if (quant := e.run.export_type) and (s := e.run.system)]
    if not exports:
        return ""
    return ("Quantized weights (a quantization study's exports, made by llama.cpp's converter and quantizer): "
            + "; ".join(exports) + ".")


def _keeps_prompts(e: _Eval) -> bool:
    return bool(e.predictions) and all("prompt" in r and "prompt_sha256" in r for r in e.predictions.values())


def _intervals(board: TaskBoard, evals: list[_Eval]) -> str:
    """How the intervals were computed, as each metric records it: never assumed."""
    per_metric: dict[str, dict[str, list[str]]] = {}
    for name in board.comparison.metrics:
        for e in evals:
            m = e.row.metrics.get(name)
            method = m.method if m else None
            way = f"{m.confidence * 100:.10g}% {method}" if m and method else "method not recorded"
            per_metric.setdefault(name, {}).setdefault(way, []).append(e.name)
    ways = {way for by_way in per_metric.values() for way in by_way}
    if len(ways) == 1:
        return f"Confidence intervals: {ways.pop()}."
    parts = []
    for name, by_way in per_metric.items():
        if len(by_way) == 1:
            parts.append(f"{name}, {next(iter(by_way))}")
        else:
            parts.append(f"{name}, " + "; ".join(f"{way} for {_join(names)}" for way, names in by_way.items()))
    return "Confidence intervals: " + "; ".join(parts) + "."


def _comparison(board: TaskBoard) -> str:
    tests, apart = tests_run(board.rows), untested(board.rows)
    by_reason: dict[str, list[str]] = {}
    for system, reason in apart.items():
        by_reason.setdefault(reason, []).append(system)
    not_tested = "".join(
        f" {_join(names)} {'shares' if len(names) == 1 else 'share'} no example with it and "
        f"{'is' if len(names) == 1 else 'are'} not tested." if reason == NO_SHARED else
        f" {_join(names)} {'is' if len(names) == 1 else 'are'} not tested ({reason})."
        for reason, names in by_reason.items())
    if not tests:
        if apart:
            return f"No system is compared with {reference_name(board.comparison)}:{not_tested}"
        return "With one system there is no paired comparison."
    return (f"Each system is compared with {reference_name(board.comparison)} on the examples both saw "
            f"({', '.join(tests)}), with Holm's correction for the number of comparisons.{not_tested}")


def _untimed(run: EvalRun) -> str:
    """Why an evaluation's time covers only some of its examples."""
    hits = run.usage.cache_hits if run.usage else 0
    if hits and run.timings["predict_examples"] + hits == run.task.n:
        return "answered from the API request cache, which takes no time of the API's"
    return "predicted in a session that was interrupted"


def _prediction_time(evals: list[_Eval]) -> str:
    timed = [(e, s) for e in evals if (s := e.run.timings.get("predict_s")) is not None]
    if not timed:
        return "Prediction times are not recorded."
    untimed = [e.name for e in evals if all(e is not t for t, _ in timed)]
    places = _grouped((_hardware(e.run), e.name) for e, _ in timed)
    where = next(iter(places)) if len(places) == 1 else "; ".join(
        f"{hw} ({_join(names)})" for hw, names in places.items())
    api = " (for API systems, the wall time of their requests)" if any(
        e.run.system.kind == "api" for e, _ in timed) else ""
    missing = f"; not recorded for {_join(untimed)}" if untimed else ""
    partly = [f"{e.name} ({e.run.timings['predict_examples']:,} of its {e.run.task.n:,} examples; the rest were "
              f"{_untimed(e.run)})" for e, _ in timed
              if e.run.timings.get("predict_examples", e.run.task.n) < e.run.task.n]
    partial = f"; timed over part of the examples for {_join(partly)}" if partly else ""
    return f"Prediction took {format_seconds(sum(s for _, s in timed))} in total{api} on {where}{missing}{partial}."


# --- shared ------------------------------------------------------------------------------------------------------


def _apart(part: float, whole: float) -> tuple[str, str]:
    """Two different numbers written with as few significant digits (3 or more) as tell them apart (1.998 of 2
    epochs was written "2 of its 2")."""
    for digits in range(3, 16):
        if (a := f"{part:.{digits}g}") != (b := f"{whole:.{digits}g}"):
            return a, b
    return repr(part), repr(whole)


def _hardware(run: EvalRun | TrainRun) -> str:
    hw = run.environment.hardware
    if hw.gpu:
        device = hw.gpu
    elif hw.cpu_count is not None:
        device = f"{hw.cpu_count} CPU cores" + (f" ({hw.cpu})" if hw.cpu else "")
    else:
        device = hw.cpu or ""
    memory = f"{hw.memory_gb} GB RAM" if hw.memory_gb is not None else ""
    return ", ".join(p for p in (device, memory) if p) or "hardware not recorded"


def _software(records: Iterable[RunRecord]) -> str | None:
    by_software = _grouped((_software_of(r.run), r.id) for r in records)
    by_software.pop(None, None)
    if not by_software:
        return None
    if len(by_software) == 1:
        return f"Software: {next(iter(by_software))}."
    return "Software, which differs between runs: " + "; ".join(
        f"{software} ({_join(runs)})" for software, runs in by_software.items()) + "."


def _software_of(run: EvalRun | TrainRun) -> str | None:
    packages = run.environment.packages
    if not packages:
        return None
    git = run.environment.git
    where = f" at lab commit {git.commit[:12]}{' (with uncommitted changes)' if git.dirty else ''}" \
        if git.commit else ""
    others = ", ".join(f"{k} {v}" for k, v in packages.items() if v and k != "llamalab")
    return f"llamalab {packages.get('llamalab') or '(version not recorded)'}{where}; {others}"


def _grouped(pairs: Iterable[tuple[Any, str]]) -> dict[Any, list[str]]:
    groups: dict[Any, list[str]] = {}
    for key, name in pairs:
        groups.setdefault(key, []).append(name)
    return groups


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


