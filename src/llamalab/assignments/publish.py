"""Assignments on the lab site: the handout of each assignment whose assignment.yaml says `public: true`, and
its leaderboard when staff export one (leaderboard.csv with columns name and score; any other column, such as an
email or a student id, is never read). And what the site must not publish: every built assignment's hidden test
(`hidden_tests`), public or not."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llamalab.assignments.rubric import ASSIGNMENT_FILE, archived_ids
from llamalab.config import LlamalabError
from llamalab.lab import Lab
from llamalab.publish.content import render_markdown
from llamalab.runs.record import read_predictions

LEADERBOARD_FILE = "leaderboard.csv"


@dataclass(frozen=True)
class PublicAssignment:
    name: str
    task: str
    metric: str
    handout_html: str  # safe HTML: raw HTML in the handout is escaped
    leaderboard: list[tuple[str, float]] = field(default_factory=list)  # best first


@dataclass
class HiddenTest:
    """A task's examples that some assignment grades on, which the site leaves out, and those assignments."""

    ids: set[str] = field(default_factory=set)
    assignments: list[str] = field(default_factory=list)


def _built(lab: Lab) -> list[tuple[Path, dict]]:
    """Every assignment.yaml under assignments/, read, by folder name."""
    found = []
    for path in sorted((lab.root / "assignments").glob(f"*/{ASSIGNMENT_FILE}")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise LlamalabError(f"{path}: not valid YAML ({exc}); rebuild the assignment "
                                "(`llamalab assignment build`) or restore the file") from None
        found.append((path, data if isinstance(data, dict) else {}))
    return found


def hidden_tests(lab: Lab) -> dict[str, HiddenTest]:
    """Task name -> the lab ids of the examples its built assignments grade on (public or not: the site is
    public either way). The hidden test is every example the fine-tuned evaluation named in assignment.yaml
    answered, so it is known from the lab's records alone (autograder/, which holds the hidden answers, stays
    out of git, and a site built by CI has no copy); autograder.zip's id list adds to it where it is present."""
    hidden: dict[str, HiddenTest] = {}
    for path, data in _built(lab):
        runs = data.get("runs")
        tuned = runs.get("finetuned") if isinstance(runs, dict) else None
        ids: set[str] = set()
        if isinstance(tuned, str) and tuned and "/" not in tuned and (lab.runs_dir / tuned).is_dir():
            ids |= set(read_predictions(lab.runs_dir / tuned))
        ids |= set(archived_ids(path.parent / "autograder" / "autograder.zip").values())
        if ids:
            entry = hidden.setdefault(str(data.get("task", "")), HiddenTest())
            entry.ids |= ids
            entry.assignments.append(path.parent.name)
    return hidden


def public_assignments(lab: Lab) -> list[PublicAssignment]:
    """The lab's public assignments, by name."""
    found = []
    for path, data in _built(lab):
        handout = path.parent / "student" / "README.md"
        if not isinstance(data, dict) or data.get("public") is not True or not handout.is_file():
            continue
        found.append(PublicAssignment(
            name=path.parent.name, task=str(data.get("task", "")), metric=str(data.get("metric", "score")),
            handout_html=render_markdown(handout.read_text(encoding="utf-8")),
            leaderboard=read_leaderboard(path.parent / LEADERBOARD_FILE)))
    return found


def read_leaderboard(path: Path) -> list[tuple[str, float]]:
    """(name, score) rows of a staff export, best first; a bad row is an error naming its line."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise LlamalabError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8 "
                            "(a spreadsheet's \"CSV UTF-8\" export)") from None
    reader = csv.DictReader(io.StringIO(text))
    rows = []
    try:
        if not reader.fieldnames or not {"name", "score"} <= set(reader.fieldnames):
            raise LlamalabError(f"{path}: needs the columns name and score (found: "
                                f"{', '.join(reader.fieldnames or [])})")
        for row in reader:
            try:
                score = float(row["score"])
            except (TypeError, ValueError):
                score = math.nan
            if not row["name"] or not math.isfinite(score):
                raise LlamalabError(f"{path}:{reader.line_num}: needs a name and a numeric score")
            rows.append((row["name"], score))
    except csv.Error as exc:  # a NUL byte, a quote left open at the end of the file
        raise LlamalabError(f"{path}:{reader.line_num + 1}: not readable as CSV ({exc}); export it again") from None
    return sorted(rows, key=lambda item: -item[1])
