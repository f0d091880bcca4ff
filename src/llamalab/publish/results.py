"""What the records say, gathered once for the report, the site and the weekly post.

Everything here is read from run folders (run.json, predictions.jsonl, train_log.jsonl) and the task files:
no number is computed anywhere else, so every figure and table traces back to a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamalab.config import LlamalabError
from llamalab.evaluate.compare import Entry, latest_evals, rank
from llamalab.lab import Lab
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import RunRecord, list_runs
from llamalab.tasks.task import Task, load_task

TRAIN_LOG = "train_log.jsonl"


@dataclass
class TaskBoard:
    """One task's leaderboard on one split: the comparison, and the evaluations behind its rows (same order)."""

    task: Task
    comparison: dict
    entries: list[Entry]

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def metric(self) -> str:
        return self.comparison["metric"]

    @property
    def rows(self) -> list[dict]:
        return self.comparison["systems"]


def task_names(lab: Lab) -> list[str]:
    return sorted(p.stem for p in (lab.root / "tasks").glob("*.yaml"))


def load_tasks(lab: Lab) -> list[Task]:
    return [load_task(lab.task_path(name), lab.root) for name in task_names(lab)]


def task_boards(lab: Lab, split: str = "test", only: set[str] | None = None) -> list[TaskBoard]:
    """A leaderboard for every task that has finished evaluations on `split` (restricted to `only` run ids)."""
    boards = []
    for task in load_tasks(lab):
        entries = latest_evals(lab, task.name, split, only)
        if not entries:
            continue
        comparison = rank(task, entries, split)
        by_run = {e.record.id: e for e in entries}
        for row in comparison["systems"]:
            row.update(cost_and_time(by_run[row["run"]].record))
        boards.append(TaskBoard(task, comparison, [by_run[row["run"]] for row in comparison["systems"]]))
    return boards


def cost_and_time(record: RunRecord) -> dict:
    """Cost (API list prices) and evaluation wall time per 1,000 examples; None where the records do not say."""
    n = (record.data.get("task") or {}).get("n") or 0
    usage = record.data.get("usage") or {}
    predict_s = (record.data.get("timings") or {}).get("predict_s")
    return {
        "cost_per_1k_usd": usage.get("cost_per_1k_examples_usd"),
        "seconds_per_1k": round(1000 * predict_s / n, 1) if predict_s and n else None,
        "latency_s_median": usage.get("latency_s_median"),
    }


def train_runs(lab: Lab) -> list[RunRecord]:
    return [r for r in list_runs(lab.runs_dir, "train") if r.data.get("status") == "finished"]


def eval_runs(lab: Lab) -> list[RunRecord]:
    return [r for r in list_runs(lab.runs_dir, "eval") if r.data.get("status") == "finished"]


def loss_history(record: RunRecord) -> list[dict]:
    """Logged training steps (step, loss, learning rate, ...), one per step even after a resume."""
    by_step: dict[int, dict] = {}
    for row in read_jsonl(record.folder / TRAIN_LOG):
        if "loss" in row:
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


def require_runs(lab: Lab) -> None:
    if not eval_runs(lab) and not train_runs(lab):
        raise LlamalabError(f"no finished runs in {lab.runs_dir}: train or evaluate something first")


def relative_run_path(record: RunRecord, lab_root: Path) -> str:
    return record.folder.relative_to(lab_root).as_posix()
