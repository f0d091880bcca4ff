"""The task file (tasks/<name>.yaml): data files and fields, splits, prompt, answer type, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from llamalab.config import StrictModel, load_config

SPLITS = ("train", "dev", "test")
FileFormat = Literal["jsonl", "csv", "tsv", "lines"]


class DataFile(StrictModel):
    """One data file. `split` says which split it holds; without it, the rows join the pool to split."""

    path: str
    split: Literal["train", "dev", "test"] | None = None
    format: FileFormat | None = Field(None, description="inferred from the suffix when omitted")
    label: str | None = Field(None, description="one-text-file-per-label: every line is one example of this label")

    def resolved_format(self) -> FileFormat:
        if self.format:
            return self.format
        suffix = Path(self.path).suffix.lower()
        return {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}.get(suffix, "lines")  # type: ignore[return-value]


class SplitSpec(StrictModel):
    """How to derive missing splits: fractions of `source`, drawn with a seed, stratified by label."""

    source: Literal["pool", "train"] = "pool"
    dev: float = Field(0.1, ge=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    stratify: bool = True

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> SplitSpec:
        if self.dev + self.test >= 1:
            raise ValueError("dev + test must leave some examples for train (sum < 1)")
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
# How a label's log-likelihood becomes its score (see README "Label scoring").
LabelNormalization = Literal["sum", "mean", "chars", "calibrate"]


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

    @model_validator(mode="after")
    def _labels_are_consistent(self) -> AnswerSpec:
        if self.type == "label" and len(self.labels) < 2:
            raise ValueError("a label answer needs at least two labels")
        unknown = sorted(set(self.verbalizers) - set(self.labels))
        if unknown:
            raise ValueError(f"verbalizers name labels not in `labels`: {', '.join(unknown)}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

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


class Task(StrictModel):
    name: str
    description: str = ""
    data: DataSpec
    prompt: PromptSpec
    answer: AnswerSpec
    metrics: list[str] = Field([], description="default: every metric of the answer type")

    # Where the task file lives: data paths are relative to the lab root.
    lab_root: Path = Field(Path("."), exclude=True)

    @model_validator(mode="after")
    def _metrics_fit_the_answer_type(self) -> Task:
        allowed = METRICS_BY_TYPE[self.answer.type]
        unknown = [m for m in self.metrics if m not in allowed]
        if unknown:
            raise ValueError(f"metrics {unknown} do not apply to answer.type {self.answer.type}: use {list(allowed)}")
        return self

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics or METRICS_BY_TYPE[self.answer.type])

    def data_path(self, file: DataFile) -> Path:
        return (self.lab_root / file.path).resolve()


def load_task(path: Path, lab_root: Path) -> Task:
    """Load tasks/<name>.yaml; data paths resolve against the lab root."""
    task = load_config(Task, path)
    return task.model_copy(update={"lab_root": lab_root})
