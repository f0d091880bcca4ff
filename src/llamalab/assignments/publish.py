"""Assignments on the lab site: the handout of each assignment whose assignment.yaml says `public: true`, and
its leaderboard when staff export one (leaderboard.csv with columns name and score; any other column, such as an
email or a student id, is never read)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llamalab.assignments.rubric import ASSIGNMENT_FILE
from llamalab.config import LlamalabError
from llamalab.lab import Lab
from llamalab.publish.content import render_markdown

LEADERBOARD_FILE = "leaderboard.csv"


@dataclass(frozen=True)
class PublicAssignment:
    name: str
    task: str
    metric: str
    handout_html: str  # safe HTML: raw HTML in the handout is escaped
    leaderboard: list[tuple[str, float]] = field(default_factory=list)  # best first


def public_assignments(lab: Lab) -> list[PublicAssignment]:
    """The lab's public assignments, by name."""
    found = []
    for path in sorted((lab.root / "assignments").glob(f"*/{ASSIGNMENT_FILE}")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise LlamalabError(f"{path}: not valid YAML ({exc})") from None
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
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    if not reader.fieldnames or not {"name", "score"} <= set(reader.fieldnames):
        raise LlamalabError(f"{path}: needs the columns name and score (found: {', '.join(reader.fieldnames or [])})")
    rows = []
    for row in reader:
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            score = math.nan
        if not row["name"] or not math.isfinite(score):
            raise LlamalabError(f"{path}:{reader.line_num}: needs a name and a numeric score")
        rows.append((row["name"], score))
    return sorted(rows, key=lambda item: -item[1])
