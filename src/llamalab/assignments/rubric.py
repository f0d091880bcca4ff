"""An assignment's grading rules: written by the builder into grading/config.json, applied by the grader.

One config holds everything the grader needs besides the gold answers: the task's answer spec and metric, the
thresholds taken from the lab's runs, the points, the report's required sections and the size limits. The same
model is validated when the builder writes it and when the grader reads it.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from llamalab.config import StrictModel
from llamalab.evaluation.metrics import score_generation
from llamalab.tasks.task import AnswerSpec

ASSIGNMENT_FILE = "assignment.yaml"  # in assignments/NAME/: what it was built from, and whether it is public
CONFIG_FILE = "config.json"  # in grading/
LABELS_FILE = "labels.jsonl"  # in grading/: one {"id", "gold"} per example
IDS_FILE = "ids.jsonl"  # in the hidden test's grading/: one {"id", "lab_id"} per renamed example
# What a submission holds (and where the starter's submit/ template puts it).
PREDICTIONS = "predictions.jsonl"
EXPERIMENT = "experiment.yaml"
REPORT = "report.md"
SUBMISSION_FILES = (PREDICTIONS, EXPERIMENT, REPORT)
# The report's sections, in the order the steps run; each needs REPORT_MIN_WORDS words of the student's own.
REPORT_SECTIONS = ("Data check", "Baseline", "Fine-tuning", "Evaluation", "Ablation")
REPORT_MIN_WORDS = 30
MiB = 2**20


class Thresholds(StrictModel):
    """Where the metric part of the grade starts and ends, and the runs the numbers come from."""

    metric: str
    zero_at: float = Field(description="no credit at or below: the best baseline without fine-tuning, or what the "
                                       "best constant answer scores (`constant`) where that is higher")
    full_at: float = Field(description="full credit at or above: the lab's fine-tuned result minus the margin")
    margin: float = Field(ge=0)
    baseline: float
    baseline_run: str
    baseline_system: str
    baseline_n: int
    finetuned: float
    finetuned_run: str
    finetuned_system: str
    finetuned_n: int
    # The score of the best answer given to every hidden example (the majority label, say); the answer itself is
    # staff's only (it may be a hidden gold answer), and this config also travels in the student's grading/.
    constant: float | None = None  # None: built before the floor was kept

    @model_validator(mode="after")
    def _leaves_a_range(self) -> Thresholds:
        if self.full_at <= self.zero_at:
            raise ValueError(f"full_at {self.full_at} must lie above zero_at {self.zero_at}")
        return self

    @property
    def floor_is_constant(self) -> bool:
        """Zero credit is at what a constant answer scores, which the best baseline does not beat."""
        return self.constant is not None and self.constant > self.baseline

    def zero_reason(self) -> str:
        """What sets zero credit, in words a student may read (the constant answer is not named)."""
        if self.floor_is_constant:
            return (f"what one answer given to every example scores, the most a constant answer can; the best "
                    f"baseline without fine-tuning, {self.baseline_system}, scores {self.baseline:.4f}")
        return f"the best baseline without fine-tuning, {self.baseline_system}"


class Points(StrictModel):
    metric: int = Field(60, ge=0, description="linear between the thresholds, on the hidden examples")
    predictions_format: int = Field(10, ge=0, description="every id exactly once, each with an answer")
    experiment: int = Field(10, ge=0, description="a valid experiment file of this task")
    report: int = Field(20, ge=0, description="split evenly over the required sections")

    @property
    def total(self) -> int:
        return self.metric + self.predictions_format + self.experiment + self.report


class Limits(StrictModel):
    """Sizes past which a file is refused unread (a 1 GB upload costs the grader nothing)."""

    predictions_bytes: int = 20 * MiB
    experiment_bytes: int = 64 * 1024
    report_bytes: int = 1 * MiB
    zip_bytes: int = 50 * MiB
    zip_members: int = 1000
    answer_chars: int = Field(20_000, description="a longer answer is not scored (ROUGE on megabytes takes minutes)")

    def of(self, name: str) -> int:
        return {PREDICTIONS: self.predictions_bytes, EXPERIMENT: self.experiment_bytes,
                REPORT: self.report_bytes}[name]


class GradingConfig(StrictModel):
    assignment: str
    task: str
    split: Literal["dev", "test"]
    n: int = Field(ge=1, description="examples graded (the gold answers in labels.jsonl)")
    answer: AnswerSpec
    metric: str
    thresholds: Thresholds
    points: Points = Points()
    report_sections: list[str] = list(REPORT_SECTIONS)
    report_min_words: int = REPORT_MIN_WORDS
    limits: Limits = Limits()
    partial: bool = Field(False, description="grade the ids submitted (a self-check on dev), not every id")
    visibility: Literal["visible", "after_due_date", "after_published"] = Field(
        "visible", description="when students see the metric test and its score (Gradescope's visibility)")

    @field_validator("report_sections")
    @classmethod
    def _distinct_sections(cls, sections: list[str]) -> list[str]:
        keys = [section_key(s) for s in sections]
        if blank := [s for s, k in zip(sections, keys, strict=True) if not k]:
            raise ValueError(f"report section {blank[0]!r} has no letter or digit to find its heading by")
        if same := [s for s, k in zip(sections, keys, strict=True) if keys.count(k) > 1]:
            raise ValueError(f"report sections {same[0]!r} and {same[1]!r} name the same heading: one heading "
                             "gives its words to one section")
        return sections


def section_key(text: str) -> str:
    """A heading or section name as the grader compares them: case, punctuation and spacing set aside."""
    return " ".join(re.sub(r"[\W_]+", " ", text.casefold()).split())


def metric_points(score: float, thresholds: Thresholds, points: int) -> float:
    """None at or below the baseline, all at or above the lab's result minus the margin, linear between."""
    if score >= thresholds.full_at:
        return float(points)
    if score <= thresholds.zero_at:
        return 0.0
    return round(points * (score - thresholds.zero_at) / (thresholds.full_at - thresholds.zero_at), 2)


def split_points(points: int, parts: int) -> list[float]:
    """`points` over `parts` tests in hundredths that add up exactly (20 over 3: 6.67, 6.67, 6.66, not 3 × 6.67)."""
    if parts <= 0:
        return []
    each, extra = divmod(round(points * 100), parts)
    return [(each + (1 if i < extra else 0)) / 100 for i in range(parts)]


def score_answer(answer: AnswerSpec, gold: str, text: str) -> dict:
    """A submitted answer scored into the fields of a prediction row, as an evaluation scores a generation.

    A label task also takes the label's own name (what a log-likelihood evaluation predicts)."""
    if answer.type == "label" and text.strip() in answer.labels:
        prediction = text.strip()
        return {"prediction": prediction, "parsed": True, "correct": prediction == gold}
    return score_generation(answer, gold, text)


def submission_answer(row: dict) -> str | None:
    """The answer an eval run's prediction row gives: the generated text the run scored (up to where a plain-format
    model started another example, `answer_text`), else the label the log-likelihoods chose."""
    if "generation" in row:
        return row.get("answer_text", row["generation"])
    prediction = row.get("prediction")
    return prediction if isinstance(prediction, str) else None


def archived_ids(archive_path: Path) -> dict[str, str]:
    """The hidden test of a built autograder.zip, test id -> lab id (from its grading/ids.jsonl); empty when there
    is no readable archive, and a line that is not such a row is skipped."""
    try:
        with zipfile.ZipFile(archive_path) as archive:
            lines = archive.read(f"grading/{IDS_FILE}").decode("utf-8").splitlines()
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return {}
    ids = {}
    for line in lines:
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("lab_id"), str):
            ids[row["id"]] = row["lab_id"]
    return ids
