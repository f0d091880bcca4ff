"""The shape of run.json: typed, versioned records of train and eval runs.

Every reader (compare, report, site, post, methods, resume) goes through these models; a record is
validated when it is written and when it is read. `schema_version` is written into every run.json.
Records written before the version field existed (version 0) load through `migrate`; a record from a
newer llamalab fails with a message saying so instead of being misread.

Version history:
  0  (no field) the first format; identical fields, no version.
  1  `schema_version` added.
  2  `host`: the machine the run's process is on (with `pid`, it tells a live run on a cluster node from a
     dead one); unknown (null) in older records.
  3  a train run's `memory`: the plan's predicted peak, the measured one and the activation checkpointing
     decision, and `processes` (data-parallel training); absent (null) in older records.
  4  a train run's `parallelism` when it trained in several processes: ddp (each holds the whole model) or fsdp
     (the model sharded across them); absent (null) in older records.
  5  a train run's `optimizer`: its name, betas, epsilon, gradient clipping and warm-up steps; absent (null) in
     older records.
  6  an eval run's `usage` counts the tokens of API answers that could not be used and were asked for again
     (`retried_input_tokens`, `retried_output_tokens`; in `cost_usd` too) and the answers a content filter ended
     (`content_filtered`); 0 in older records. A train run
     in several processes records each one's peak memory (`memory.measured_mb_each`) and `memory.measured_mb` is
     the largest (older records: the first process's).
  7  an eval run's `usage.content_filtered_unmetered`: content-filtered answers (or prompts a filter refused) the
     provider reported no usage for, counted at 0 tokens; 0 in older records.
  8  `slurm_job`: the Slurm job the run's process is in (with it, a run on a cluster node whose job ended without
     finishing the record is told from a live one); unknown (null) in older records and outside Slurm.
  9  an eval run's `system.quantized`: the GGUF type of a quantization study's export it evaluated (the
     system is then a fine-tuned run's or a base model's weights at that type); null in older records, whose
     exports of a fine-tuned run were recorded as base models (a study evaluates those files again).
  10 an eval run's `predictions_summary.truncated`: generations cut off by max_new_tokens (the budget spent
     without an end token, or a chat API's `finish_reason: length`; each such row says `truncated: true`); null
     in older records and where not every row says (a chat API without finish_reason, rows kept before this).
  11 a train run's `sessions`: for each session whose steps the run kept (a run resumed after a kill has
     several), the step it started from, its precision, its activation checkpointing and its device (a session
     resumed on another machine may compute otherwise); null in older records, whose `precision` and
     `memory.activation_checkpointing` are their last session's. Also `data_used.split_size`, the train split's
     size (whether `train_examples` drew a subset of it); null in older records.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 11

Status = Literal["running", "finished", "interrupted", "failed"]


def _iso_time(value: str) -> str:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 time such as 2026-11-29T09:16:26+00:00") from None
    return value


Timestamp = Annotated[str, AfterValidator(_iso_time)]  # when a run started, ended or was resumed


def gguf_export_name(system: str, quant: str) -> str:
    """The file a quantization study exports `system` to at GGUF type `quant`: a readable slug of the name, a hash
    of the name itself (two names with one slug, "org/model" and "org-model", would otherwise share a file, and one
    be evaluated on the other's weights), and the type."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", system).strip("-")[:80]
    return f"{slug}-{hashlib.sha256(system.encode()).hexdigest()[:8]}-{quant}.gguf"


def gguf_export_type(file_name: str) -> str | None:
    """The GGUF type of a file named by `gguf_export_name`, None for any other name."""
    found = re.fullmatch(r"[^/]*-[0-9a-f]{8}-([^-/]+)\.gguf", file_name)
    return found[1] if found else None


class Shape(BaseModel):
    """A part of a record: unknown keys are an error, so a typo in a writer cannot pass silently."""

    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """A part whose keys depend on the backend or protocol (kept as written, typed where we read them)."""

    model_config = ConfigDict(extra="allow")


# ---- shared parts ---------------------------------------------------------------------------------------------


class ModelInfo(Shape):
    name: str
    revision: str


class GitState(Shape):
    commit: str | None = None
    dirty: bool | None = None


class Hardware(Open):
    platform: str | None = None
    python: str | None = None
    cpu: str | None = None
    cpu_count: int | None = None
    memory_gb: float | None = None
    gpu: str | None = None


class Environment(Shape):
    git: GitState = GitState()
    packages: dict[str, str | None] = {}
    hardware: Hardware = Hardware()


class Interval(Shape):
    """A metric's estimate and its confidence interval, as the eval computed them (one number per run)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str | None = None
    confidence: float = 0.95


# ---- eval runs ------------------------------------------------------------------------------------------------


class SystemInfo(Shape):
    label: str  # how the system was named when it ran; tables derive their labels from `SystemKey`
    kind: Literal["base", "finetuned", "api"]
    train_run: str | None = None
    model: ModelInfo | None = None
    api: dict[str, Any] | None = None  # the endpoint, model id and prices; never the key
    quantized: str | None = None  # a quantization study's GGUF type of the weights (`model` is the file)


class BackendInfo(Open):
    backend: str = "hf"
    model: str | None = None
    revision: str | None = None
    adapter: str | None = None


class EvalTaskInfo(Shape):
    name: str
    split: Literal["train", "dev", "test"]
    n: int
    split_size: int | None = None
    data_sha256: dict[str, str] = {}
    definition_sha256: str | None = None  # Task.definition_sha256 when it ran (older records: none)
    answer_type: str | None = None


class ScoringInfo(Shape):
    protocol: Literal["loglikelihood", "generate"]
    # loglikelihood
    normalize: str | None = None
    normalization: str | None = None  # the rule in words
    tokenization: str | None = None
    precision: str | None = None
    calibration: dict[str, Any] | None = None  # the content-free prompt and each label's log-likelihood after it
    # generate
    decoding: dict[str, Any] | None = None
    parsing: str | None = None
    unparsed_answer: str | None = None


class PromptInfo(Open):
    format: Literal["plain", "chat"]
    template: str
    system: str | None = None
    target_delimiter: str | None = None
    labels_listed: bool | None = None
    shots: list[str] = []
    chat_template_sha256: str | None = None


class PredictionSummary(Shape):
    n: int
    warnings: list[str] = []
    parse_failures: int | None = None
    truncated: int | None = None  # generations max_new_tokens cut off (schema 10; null where not known)
    predicted: dict[str, int] | None = None  # most frequent first
    gold: dict[str, int] | None = None
    accuracy_by_normalization: dict[str, float] | None = None


class Usage(Shape):
    input_tokens: int  # of the answers used
    output_tokens: int
    # what answers that could not be used cost before the answers used (at list prices, like cost_usd, which
    # includes them; a cache hit's too, as it cost when it was paid for)
    retried_input_tokens: int = 0
    retried_output_tokens: int = 0
    content_filtered: int = 0  # answers the provider's content filter ended (their text, often empty, is scored)
    content_filtered_unmetered: int = 0  # of those, the ones with no usage (0 tokens here; the bill may have more)
    cost_usd: float
    paid_now_usd: float
    cost_per_1k_examples_usd: float
    cache_hits: int
    latency_s_median: float | None = None
    latency_s_per_1k_examples: float | None = None


class SystemKey(BaseModel):
    """What makes two evaluations the same system: never the display label, which may change freely."""

    model_config = ConfigDict(frozen=True)

    weights: str  # "train:<run id>", "model:<name>@<revision>" or "api:<base url>#<model id>"
    format: str | None
    shots: int
    protocol: str
    backend: str
    # what else changes the numbers: the shots drawn (their seed), the generation budget, the scoring precision
    shot_ids: tuple[str, ...] = ()
    max_new_tokens: int | None = None
    precision: str | None = None


class RunBase(Shape):
    schema_version: int = SCHEMA_VERSION
    id: str
    name: str
    status: Status = "running"
    started: Timestamp
    ended: Timestamp | None = None
    config_hash: str
    environment: Environment = Environment()
    pid: int | None = None
    host: str | None = None  # the machine `pid` is on
    slurm_job: str | None = None  # the Slurm job `pid` is in (JOBID, or ARRAYID_TASK for a job array's task)
    resumed: list[Timestamp] = []
    timings: dict[str, int | float] = {}  # seconds per stage (an eval's predict_examples: the examples predict_s timed)
    throughput: dict[str, int | float] = {}
    peak_memory_mb: float | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class EvalRun(RunBase):
    kind: Literal["eval"] = "eval"
    system: SystemInfo
    backend: BackendInfo
    task: EvalTaskInfo
    scoring: ScoringInfo
    prompt: PromptInfo | None = None  # written once the prompt is built
    metrics: dict[str, Interval] = {}
    predictions_summary: PredictionSummary | None = None
    usage: Usage | None = None

    @property
    def shots(self) -> int:
        return len(self.prompt.shots) if self.prompt else 0

    @property
    def system_key(self) -> SystemKey:
        system = self.system
        if system.train_run and not system.quantized:
            weights = f"train:{system.train_run}"
        elif system.api is not None:
            weights = f"api:{system.api.get('base_url')}#{system.api.get('model')}"
        elif system.model is not None:
            weights = f"model:{system.model.name}@{system.model.revision}"
        else:
            weights = f"label:{system.label}"
        budget = (self.scoring.decoding or {}).get("max_new_tokens") if self.scoring.protocol == "generate" else None
        return SystemKey(weights=weights, format=self.prompt.format if self.prompt else None, shots=self.shots,
                         protocol=self.scoring.protocol, backend=self.backend.backend,
                         shot_ids=tuple(self.prompt.shots) if self.prompt else (), max_new_tokens=budget,
                         precision=self.scoring.precision)

    @property
    def export_type(self) -> str | None:
        """The GGUF type when this evaluated a quantization study's export (`system.quantized`; a record from
        before schema 9 by its file in runs/.gguf/, named `<system>-<hash>-<type>.gguf`), else None."""
        if self.system.quantized:
            return self.system.quantized
        name = (self.system.model.name if self.system.model else "").replace("\\", "/")
        folder, _, file = name.rpartition("/")
        return gguf_export_type(file) if folder == "runs/.gguf" or folder.endswith("/runs/.gguf") else None

    @property
    def display_label(self) -> str:
        """How tables name the system: its label, prompt format, shots, (when not hf or an API) backend and (when
        reduced) scoring precision; evaluations that differ in what else `system_key` holds (the shots drawn, the
        generation budget) are told apart by their run id where they share a table."""
        backend = self.backend.backend
        where = f", {backend}" if backend not in ("hf", "api") else ""
        shots = f", {self.shots}-shot" if self.shots else ""
        precision = self.scoring.precision
        reduced = f", {precision}" if precision in ("bfloat16", "float16") else ""  # a backend's own: its name says
        return f"{self.system.label} [{self.prompt.format if self.prompt else None}{shots}{where}{reduced}]"


# ---- train runs -----------------------------------------------------------------------------------------------


class TrainTaskInfo(Shape):
    name: str
    data_sha256: dict[str, str] = {}
    definition_sha256: str | None = None  # Task.definition_sha256 when it ran (older records: none)


class TrainPromptInfo(Shape):
    format: Literal["plain", "chat"]
    template: str
    system: str | None = None
    chat_template_sha256: str | None = None


class TrainMetrics(Shape):
    first_loss: float
    final_loss: float
    steps: int
    epochs: float


class DataUsed(Shape):
    train_examples: int
    skipped_too_long: int | None = None
    tokens_per_epoch: int | None = None
    split_size: int | None = None  # the train split's examples, a subset drawn or not (None: before version 11)


class OptimizerUse(Shape):
    """The optimizer as the Trainer ran it, defaults included (recorded from version 5)."""

    name: str
    betas: tuple[float, float]
    epsilon: float
    max_grad_norm: float | None  # None: no clipping
    warmup_steps: int  # the learning-rate warm-up, in optimizer steps (a ratio of the run's steps, rounded up)


class MemoryUse(Shape):
    """What `llamalab plan` predicted for the run and what it used (MiB; see training/plan.py for the parts)."""

    device: str
    predicted_mb: float
    measured_mb: float | None = None  # with several processes, the largest of their peaks
    measured_mb_each: list[float | None] | None = None  # each process's peak, in rank order (several processes)
    activation_checkpointing: bool
    reason: str
    predicted_s_per_epoch: float | None = None
    flops_per_token: float | None = None  # model FLOPs per trained token (4 P for LoRA, 6 P for a full fine-tune)


class TrainSession(Shape):
    """One session of a train run (recorded from version 11): it trained steps from_step + 1 onwards, until the
    next session's from_step or the run's last step."""

    from_step: int = Field(ge=0)
    precision: str
    activation_checkpointing: bool
    device: str


class TrainRun(RunBase):
    kind: Literal["train"] = "train"
    experiment: str
    task: TrainTaskInfo
    model: ModelInfo
    prompt: TrainPromptInfo
    metrics: TrainMetrics | None = None
    data_used: DataUsed | None = None
    precision: str | None = None
    memory: MemoryUse | None = None
    optimizer: OptimizerUse | None = None  # None: before version 5
    processes: int | None = None  # data-parallel training processes (None: one, in records before version 3)
    parallelism: Literal["ddp", "fsdp"] | None = None  # with processes > 1 (None: one process, or before version 4)
    sessions: list[TrainSession] | None = None  # None: before version 11


Run = Annotated[EvalRun | TrainRun, Field(discriminator="kind")]
RUN_TYPES: dict[str, type[EvalRun] | type[TrainRun]] = {"eval": EvalRun, "train": TrainRun}


class RecordError(ValueError):
    """A run.json that is not a record this llamalab can read."""


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a run.json of any known version to the current one (the only place that knows old formats)."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise RecordError(f"schema_version {version!r} is not a version number")
    if version > SCHEMA_VERSION:
        raise RecordError(f"it was written by a newer llamalab (record schema {version}; this one reads up to "
                          f"{SCHEMA_VERSION}): upgrade llamalab to read it")
    if version == 0:  # the first format: the same fields, without the version
        data, version = {**data, "schema_version": 1}, 1
    if version == 1:  # the host was not recorded
        data, version = {**data, "schema_version": 2}, 2
    if version == 2:  # no memory plan was recorded
        data, version = {**data, "schema_version": 3}, 3
    if version == 3:  # how several processes shared the model was not recorded
        data, version = {**data, "schema_version": 4}, 4
    if version == 4:  # the optimizer's settings as run were not recorded
        data, version = {**data, "schema_version": 5}, 5
    if version == 5:  # tokens billed for unusable API answers were not counted (read as 0)
        data, version = {**data, "schema_version": 6}, 6
    if version == 6:  # content-filtered answers without usage were not told apart (read as 0)
        data, version = {**data, "schema_version": 7}, 7
    if version == 7:  # the Slurm job was not recorded
        data, version = {**data, "schema_version": 8}, 8
    if version == 8:  # a quantized export was not told apart from the weights it was made from
        data, version = {**data, "schema_version": 9}, 9
    if version == 9:  # generations the budget cut off were not counted (unknown: null)
        data, version = {**data, "schema_version": 10}, 10
    if version == 10:  # a train run's sessions were not recorded
        data, version = {**data, "schema_version": 11}, 11
    return data


def parse_run(data: Any) -> EvalRun | TrainRun:
    """A typed run from the contents of a run.json (of any known version)."""
    if not isinstance(data, dict):
        raise RecordError("it is not a JSON object")
    data = migrate(data)
    kind = data.get("kind")
    if kind not in RUN_TYPES:
        raise RecordError(f"unknown run kind {kind!r} (expected one of: {', '.join(RUN_TYPES)})")
    try:
        return RUN_TYPES[kind].model_validate(data)
    except ValidationError as exc:
        raise RecordError(problems(exc)) from None


def problems(exc: ValidationError, shown: int = 5) -> str:
    """The first few problems pydantic found, each at its dotted key, and how many more there are."""
    errors = exc.errors()
    listed = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:shown])
    return listed + (f"; and {len(errors) - shown} more" if len(errors) > shown else "")
