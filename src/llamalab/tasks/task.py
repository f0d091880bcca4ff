"""The task file (tasks/<name>.yaml): data files and fields, splits, prompt, answer type, metrics."""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llamalab.config import KeyProblem, LlamalabError, StrictModel, load_config

SPLITS = ("train", "dev", "test")
FileFormat = Literal["jsonl", "json", "csv", "tsv", "lines", "parquet", "arrow", "hf_dataset"]
SUFFIX_FORMATS: dict[str, FileFormat] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "lines",
    ".parquet": "parquet", ".arrow": "arrow",
}
_TEXT_FORMATS = ("jsonl", "json", "csv", "tsv", "lines")
_RECORD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "arrow", "hf_dataset")
# The formats each option applies to: an option a format would ignore is an error, never silently dropped.
OPTION_FORMATS: dict[str, tuple[str, ...]] = {
    "encoding": _TEXT_FORMATS,
    "header": ("csv", "tsv"),
    "delimiter": ("csv", "tsv"),
    "quotechar": ("csv", "tsv"),
    "columns": ("csv", "tsv", "json", "jsonl"),
    "records": ("json", "hf_dataset"),
    "fields": _RECORD_FORMATS,
    "spans": _RECORD_FORMATS,
}


class SpanSpec(StrictModel):
    """Character-offset spans in a record, turned into the entity answer: a JSON list of {"type", "text"}."""

    text: str = Field("text", description="path to the text the offsets point into")
    spans: str = Field("spans", description="path to the list of spans (a record without it has no entities)")
    start: str = Field("start", description="key of a span's first character offset; a span without it starts at 0")
    end: str = Field("end", description="key of the offset just past a span's last character")
    label: str = Field("label", description="key of a span's entity type")
    end_inclusive: bool = Field(False, description="`end` is the offset of the span's last character")
    into: str | None = Field(None, description="field that receives the entities (default: data.answer_field)")


class DataFile(StrictModel):
    """One data file or dataset folder. `split` says which split it holds; without it, rows join the pool."""

    path: str
    split: Literal["train", "dev", "test"] | None = None
    format: FileFormat | None = Field(
        None, description="default: from the suffix; no known suffix: `lines` with `label:`, else `hf_dataset`"
    )
    label: str | None = Field(None, description="every row is an example of this label (one text file per label)")
    encoding: str = Field("utf-8", description="text encoding; a UTF-8 byte-order mark is skipped")
    header: bool = Field(True, description="csv/tsv: the first line names the columns")
    columns: list[str] | None = Field(
        None, description="names of a headerless csv/tsv file's columns, or of the items of list-valued JSON records"
    )
    delimiter: str | None = Field(None, min_length=1, max_length=1, description="csv/tsv: default `,` or tab")
    quotechar: str | None = Field('"', min_length=1, max_length=1, description="csv/tsv: null for no quoting")
    records: str | None = Field(
        None, description="json: dotted path to the list of records in the document; hf_dataset: the split to read"
    )
    fields: dict[str, str] = Field({}, description="task field name -> dotted path in the raw record")
    spans: SpanSpec | None = Field(None, description="convert character-offset spans into entity answers")

    @field_validator("label", mode="before")
    @classmethod
    def _label_as_text(cls, value: Any) -> Any:
        """`label: 1` is the label "1", as `answer.labels: [0, 1]` are; YAML's unquoted yes/no is refused, as there."""
        if isinstance(value, bool):
            raise ValueError("YAML read an unquoted yes/no/on/off/true/false as a boolean: quote it: 'yes', 'no'")
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _options_fit_the_format(self) -> DataFile:
        fmt = self.resolved_format()
        misplaced = sorted(k for k in self.model_fields_set if fmt not in OPTION_FORMATS.get(k, (fmt,)))
        if misplaced:
            uses = "; ".join(f"{k} applies to {', '.join(OPTION_FORMATS[k])}" for k in misplaced)
            raise ValueError(f"{self.path} is read as {fmt}: {uses}")
        if fmt == "lines" and self.label is None:
            raise ValueError(
                f"{self.path} is read as one example per line (format: lines), which needs `label:` (one text file "
                "per label); for lines of text and label use `format: tsv, header: false, columns: [text, label]`, "
                "or set `format:` to jsonl, json, csv, tsv, parquet, arrow or hf_dataset"
            )
        if fmt in ("csv", "tsv") and not self.header and not self.columns:
            raise ValueError("`header: false` needs `columns:` naming the columns, e.g. columns: [text, label]")
        if fmt in ("csv", "tsv") and self.header and self.columns:
            raise ValueError("`columns:` names the columns of a file without a header row: add `header: false` "
                             "(to rename a header's columns, use `fields:`)")
        if self.columns and len(set(self.columns)) != len(self.columns):
            raise ValueError("`columns:` must be unique")
        try:
            text_encoding = codecs.lookup(self.encoding)._is_text_encoding  # not rot13, hex, zlib: transforms
        except LookupError:
            text_encoding = False
        if not text_encoding:
            raise ValueError(f"unknown text encoding {self.encoding!r}: e.g. utf-8, latin-1, cp1252, utf-16")
        return self

    def resolved_format(self) -> FileFormat:
        """The format given, else the suffix's; a path without a known suffix is a text file per label (with
        `label:`) or a dataset folder."""
        if self.format:
            return self.format
        suffix = Path(self.path).suffix.lower()
        if suffix in SUFFIX_FORMATS:
            return SUFFIX_FORMATS[suffix]
        return "lines" if self.label is not None else "hf_dataset"


class SplitSpec(StrictModel):
    """How to derive missing splits: fractions of `source`, drawn with a seed, stratified by label."""

    source: Literal["pool", "train"] = "pool"
    dev: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    stratify: bool = Field(True, description="hold out the same share of each label (label tasks only)")

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitSpec:
        if self.dev + self.test >= 1:
            raise KeyProblem("dev", "dev + test must leave some examples for train (sum < 1)")
        return self


class DataSpec(StrictModel):
    files: list[DataFile] = Field(min_length=1)
    text_fields: list[str] = Field(["text"], description="fields the prompt uses; each must be non-empty")
    answer_field: str = Field("label", description="field with the gold answer (not used by one-file-per-label)")
    id_field: str | None = Field(None, description="field with a stable example id; default file:line")
    split: SplitSpec | None = None


class PromptSpec(StrictModel):
    """The prompt, one jinja2 template shared by training and evaluation."""

    template: str
    format: Literal["plain", "chat"] = Field(
        "plain", description="plain text, or the user turn of the model's own chat template"
    )
    system: str | None = None
    target_delimiter: str = Field(" ", description="between a plain prompt and its answer")


# What each answer type can be scored by (the first is the default ranking metric).
METRICS_BY_TYPE = {
    "label": ("accuracy", "macro_f1"),
    "number": ("exact_match",),
    "text": ("exact_match", "exact_match_strict", "rouge1", "rouge2", "rougeL"),
    "sql": ("exact_match", "exact_match_strict"),
    "entities": ("entity_f1", "entity_precision", "entity_recall"),
}
# How a label's log-likelihood becomes its score (see README "Label scoring"), and how records describe it.
LabelNormalization = Literal["sum", "mean", "chars", "calibrate"]
NORMALIZATIONS: dict[str, str] = {
    "sum": "the label's summed log-likelihood",
    "mean": "the label's log-likelihood per token",
    "chars": "the label's log-likelihood per character of the label (lm-eval's acc_norm)",
    "calibrate": "the label's log-likelihood minus its log-likelihood after a content-free prompt "
    "(the example's text fields replaced by 'N/A')",
}


class AnswerSpec(StrictModel):
    type: Literal["label", "text", "number", "entities", "sql"] = Field(
        "label", description="label: one of `labels`; number: final number; text: free text; "
        "entities: a JSON list of {type, text}; sql: a query, compared after SQL normalisation (no execution)"
    )
    labels: list[str] = []
    verbalizers: dict[str, str] = Field({}, description="what the model says for each label (default: the label)")
    normalize: LabelNormalization = Field(
        "sum", description="label score: summed log-likelihood (sum), per token (mean), per character of the "
        "label (chars, lm-eval's acc_norm), or minus the label's log-likelihood after a content-free prompt "
        "(calibrate)"
    )

    @field_validator("labels", "verbalizers", mode="before")
    @classmethod
    def _no_yaml_booleans(cls, value: Any) -> Any:
        # YAML reads unquoted yes/no/on/off/true/false as booleans: say so, not "Input should be a valid string".
        items = [*value, *value.values()] if isinstance(value, dict) else value
        if isinstance(items, list) and any(isinstance(v, bool) for v in items):
            raise ValueError("YAML read an unquoted yes/no/on/off/true/false as a boolean: quote them: 'yes', 'no'")
        # labels: [0, 1] are the labels "0" and "1" (as a data file's 0 and 1 are read)
        if isinstance(value, dict):
            return {str(k) if isinstance(k, int) else k: str(v) if isinstance(v, int) else v for k, v in value.items()}
        return [str(v) if isinstance(v, int) else v for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _labels_are_consistent(self) -> AnswerSpec:
        if self.type == "label" and len(self.labels) < 2:
            raise KeyProblem("labels", "a label answer needs at least two labels")
        unknown = sorted(set(self.verbalizers) - set(self.labels))
        if unknown:
            raise KeyProblem("verbalizers", f"verbalizers name labels not in `labels`: {', '.join(unknown)}")
        if len(set(self.labels)) != len(self.labels):
            raise KeyProblem("labels", "labels must be unique")
        return self

    @property
    def default_max_new_tokens(self) -> int:
        """The generation budget when an eval is not given one: a label is short, other answers may not be."""
        return 16 if self.type == "label" else 256

    def verbalize(self, label: str) -> str:
        return self.verbalizers.get(label, label)

    def references(self, answer: str) -> list[str]:
        """Gold answers: a text task may give several (a JSON list); other types give one."""
        if self.type in ("text", "sql") and answer.startswith("["):
            try:
                value = json.loads(answer)
            except json.JSONDecodeError:
                return [answer]
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return [v.strip() for v in value]
        return [answer]

    def target(self, answer: str) -> str:
        """What training teaches the model to say: the answer, or a label's verbalizer, or the first reference."""
        return self.verbalize(answer) if self.type == "label" else self.references(answer)[0]


# A name that becomes a folder, a file and a link of the site and the report (tasks/NAME/, tables/NAME.tex,
# \input{tables/NAME.tex}): `q&a#1` would break the links and the LaTeX
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit"


def suggested_name(name: str, fallback: str) -> str:
    """A valid name close to `name` (`q&a#1` -> `q-a-1`); `fallback` when nothing of it is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or fallback


class Task(StrictModel):
    name: str
    description: str = ""
    data: DataSpec
    prompt: PromptSpec
    answer: AnswerSpec
    metrics: list[str] = Field([], description="default: every metric of the answer type")

    # Where the task file lives: data paths are relative to the lab root.
    lab_root: Path = Field(Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _name_fits_paths_and_links(cls, name: str) -> str:
        if not NAME.fullmatch(name):
            valid = suggested_name(name, "my-task")
            raise ValueError(f"{name!r} is part of the site's and the report's file names and links (tasks/NAME/, "
                             f"tables/NAME.tex), which it would break: use {NAME_RULE}, e.g. `name: {valid}`, and "
                             f"rename the file to tasks/{valid}.yaml")
        return name

    @model_validator(mode="after")
    def _metrics_fit_the_answer_type(self) -> Task:
        allowed = METRICS_BY_TYPE[self.answer.type]
        unknown = [m for m in self.metrics if m not in allowed]
        if unknown:
            raise KeyProblem("metrics", f"metrics {unknown} do not apply to answer.type {self.answer.type}: "
                             f"use {list(allowed)}")
        return self

    def definition_sha256(self, kind: Literal["train", "eval"]) -> str:
        """The task as its file defines what a run of `kind` depends on besides the data files: its data layout,
        prompt and answer; not its description, nor its metrics (computed from the rows), nor, for training, how
        label scores are normalised. Only the keys the file sets are hashed, so a setting a later llamalab adds
        (at its default) changes no hash."""
        import hashlib

        defined = self.model_dump(mode="json", exclude_unset=True, exclude={"description", "metrics"})
        if kind == "train":
            defined.get("answer", {}).pop("normalize", None)
        return hashlib.sha256(json.dumps(defined, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics or METRICS_BY_TYPE[self.answer.type])

    def data_path(self, file: DataFile) -> Path:
        return (self.lab_root / file.path).resolve()


def load_task(path: str | Path, lab_root: str | Path) -> Task:
    """Load tasks/<name>.yaml; data paths resolve against the lab root (made absolute here, so that a task loaded
    from Python with a relative root reads the same files after a change of working directory)."""
    path = Path(path)
    task = load_config(Task, path)
    if task.name != path.stem:  # a copy edited into tasks/x_v2.yaml would pin its split over the original's
        raise LlamalabError(
            f"{path}: key 'name': {task.name!r} is not the file's name: commands find a task by its file, and its "
            f"runs and pinned split (data/splits/{task.name}.json) go by `name`, so they must agree: rename the file "
            f"to tasks/{task.name}.yaml (which keeps its runs and split), or, for a new task with no runs yet, set "
            f"name: {path.stem}")
    return task.model_copy(update={"lab_root": Path(lab_root).resolve()})  # model_copy does not validate
