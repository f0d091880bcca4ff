"""What the records say, gathered once for the report, the site and the weekly post.

Everything here is read from run folders (run.json, predictions.jsonl, train_log.jsonl) and the task files:
no number is computed anywhere else, so every figure and table traces back to a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import (
    Comparison,
    Entry,
    SystemRow,
    add_cost_and_time,
    format_p,
    latest_evals,
    rank,
    refers_to,
    signed,
)
from llamalab.lab import Lab
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import TRAIN_LOG, RunRecord, list_runs, started_at
from llamalab.studies.quantization import REFERENCE, QuantRow, recorded_quantization
from llamalab.studies.run import CellState, cell_states, check_sizes, recorded_comparators
from llamalab.studies.scaling import ScalingResult, scaling_result
from llamalab.studies.spec import Study, load_study
from llamalab.studies.sweep import SweepResult, sweep_result
from llamalab.tasks.task import Task, load_task
from llamalab.training.experiment import LATER_SETTINGS


@dataclass
class TaskBoard:
    """One task's leaderboard on one split: the comparison, and the evaluations behind its rows (same order)."""

    task: Task
    comparison: Comparison
    entries: list[Entry]

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def metric(self) -> str:
        return self.comparison.metric

    @property
    def rows(self) -> list[SystemRow]:
        return self.comparison.systems


def task_names(lab: Lab) -> list[str]:
    return sorted(p.stem for p in (lab.root / "tasks").glob("*.yaml"))


def load_tasks(lab: Lab, names: Sequence[str] | None = None) -> list[Task]:
    """The lab's tasks (only those `names` names: a half-edited file of another task stops nothing)."""
    return [load_task(lab.task_path(name), lab.root) for name in task_names(lab) if names is None or name in names]


def task_boards(
    lab: Lab, split: str = "test", only: set[str] | None = None, reference: str | None = None,
    current_only: bool = True, tasks: Sequence[str] | None = None,
) -> list[TaskBoard]:
    """A leaderboard for every task that has finished evaluations on `split` (restricted to `only` run ids), made on
    the task's data as it is now (with `current_only`; else as they were, e.g. for what a past post showed).

    Systems are tested against `reference` (a run id or system label) on the tasks it was evaluated on, and
    against each task's best system elsewhere."""
    boards = []
    for task in load_tasks(lab, tasks):
        entries, earlier = latest_evals(lab, task, split, only, current_only)
        if not entries:
            continue
        named = reference and any(refers_to(reference, e.record.id, e.label, e.run.system.train_run) for e in entries)
        comparison = rank(task, entries, split, reference=reference if named else None, earlier_data=earlier)
        by_run = {e.record.id: e for e in entries}
        add_cost_and_time(comparison, by_run, lab.config.local_compute_usd_per_hour)
        boards.append(TaskBoard(task, comparison, [by_run[row.run] for row in comparison.systems]))
    return boards


def task_evals(lab: Lab, task: str) -> list[RunRecord]:
    """Finished evaluations of `task` on any split, oldest first: what methods reads a selection (or its absence)
    from: the dev runs, and every test run that came before them."""
    return [r for r in list_runs(lab.runs_dir, "eval") if r.run.finished and r.run.task.name == task]


def dev_evals(lab: Lab, task: str) -> list[RunRecord]:
    """Finished evaluations of `task` on its dev split, oldest first: the only evidence of a choice made on dev."""
    return [r for r in list_runs(lab.runs_dir, "eval")
            if r.run.finished and r.run.task.name == task and r.run.task.split == "dev"]


def train_runs(lab: Lab) -> list[RunRecord]:
    return [r for r in list_runs(lab.runs_dir, "train") if r.run.finished]


def loss_history(record: RunRecord) -> list[dict]:
    """Logged training steps (step, loss, learning rate, ...), one per step even after a resume."""
    by_step: dict[int, dict] = {}
    for row in read_jsonl(record.folder / TRAIN_LOG):
        if "loss" in row:
            by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


def scaling_points(board: TaskBoard, trained: dict[str, RunRecord]) -> dict[str, list[tuple[int, SystemRow]]]:
    """Fine-tuned systems on the board (`trained`: their train runs, in any order; not their quantized exports)
    by experiment, the settings held equal in training (all but train_examples and seed) and the evaluation
    setting (prompt format, shots, protocol, backend, precision, generation budget: a fine-tune evaluated plain and
    chat is on two curves): (training examples, board row), fewest examples first; at a size trained more than
    once, the latest training by start time. No point is chosen by its score (that would pick on the board's own
    split, test). A curve is named by its experiment, where one experiment has several by the training settings
    that set it apart (`tiny (learning_rate 0.001)`), and where the curves were evaluated in more than one setting
    by the evaluation settings that set them apart (`tiny [chat]`).

    Only curves evaluated at two or more training-set sizes are drawn."""
    curves: dict[tuple[str, tuple, tuple], dict[int, tuple[tuple, SystemRow]]] = {}
    for row, entry in zip(board.rows, board.entries, strict=True):
        train = trained.get(entry.run.system.train_run or "")
        if entry.run.export_type:  # a quantization study's export of the run: not the run's own weights
            continue
        size = train.run.data_used.train_examples if train and train.run.data_used else None
        if size:
            config = {**LATER_SETTINGS, **train.config}  # a run from before a setting existed ran its default
            held = tuple(sorted((k, repr(v)) for k, v in config.items() if k not in _NOT_HELD))
            # what else the row's system is besides the weights: one row per train run and setting on a board
            setting = tuple(entry.run.system_key.model_dump(exclude={"weights"}).items())
            points = curves.setdefault((train.run.name, held, setting), {})
            if size not in points or started_at(train) > points[size][0]:  # started_at ends in the run id: no ties
                points[size] = (started_at(train), row)
    drawn = {key: points for key, points in curves.items() if len(points) >= 2}
    settings = [dict(setting) for _, _, setting in drawn]
    evaluated_apart = [k for k in settings[0] if len({repr(s[k]) for s in settings}) > 1] if settings else []
    names = {}
    for name, held, setting in drawn:
        others = [dict(h) for n, h, _ in drawn if n == name and h != held]
        apart = sorted({k for other in others for k, v in dict(held).items() if other.get(k) != v}
                       | {k for other in others for k in other if k not in dict(held)})
        names[name, held, setting] = (
            name + (" (" + ", ".join(f"{k} {dict(held).get(k, 'unset')}" for k in apart) + ")" if apart else "")
            + (" [" + ", ".join(_setting_part(k, dict(setting)[k]) for k in evaluated_apart) + "]"
               if evaluated_apart else ""))
    return {names[key]: [(size, row) for size, (_, row) in sorted(points.items())]
            for key, points in sorted(drawn.items(), key=lambda item: names[item[0]])}


def _setting_part(field: str, value: object) -> str:
    """One part of an evaluation setting as a curve's name shows it, as the tables' labels do (`chat`, `4-shot`)."""
    if value is None:
        return f"no {field}"
    if field == "shots":
        return f"{value}-shot"
    if field == "shot_ids":  # the shots drawn (their seed): named by their ids' digest
        return "shots " + (hashlib.sha256("\n".join(value).encode()).hexdigest()[:8] if value else "none")
    if field == "max_new_tokens":
        return f"max_new_tokens {value}"
    return str(value)  # format, protocol, backend, precision: their values say what they are


# What a scaling curve varies (training examples, seeds) and what does not change a run's numbers (memory and
# checkpoint settings); every other setting is held equal along a curve
_NOT_HELD = ("train_examples", "seed", "activation_checkpointing", "memory_limit", "save_steps")


def relative_run_path(record: RunRecord, lab_root: Path) -> str:
    return record.folder.relative_to(lab_root).as_posix()


@dataclass
class StudyBoard:
    """A scaling study's result as the records hold it (cells and comparators that finished); a sweep study's is
    the `SweepBoard` below."""

    study: Study
    states: list[CellState]
    result: ScalingResult

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def runs(self) -> list[str]:
        return [r.id for s in self.states for r in (s.train, s.eval) if r is not None]

    def sentences(self) -> str:
        sentences = [c.sentence() for c in (*self.result.crossovers, *self.result.untested)]
        return " ".join(sentences) or "No comparator has finished yet."

    def summary(self) -> str:
        finished = sum(1 for s in self.states if s.status == "finished")
        return f"{finished} of {len(self.states)} cells finished. {self.sentences()}"


@dataclass
class SweepBoard(StudyBoard):
    """A sweep study's settings as the records hold them (cells that finished)."""

    result: SweepResult

    def sentences(self) -> str:
        return self.result.sentence()


@dataclass
class QuantBoard:
    """A quantization study's rows as the records hold them (evaluations that finished)."""

    study: Study
    rows: list[QuantRow]
    metric: str

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def runs(self) -> list[str]:
        return [row.eval.id for row in self.rows]

    def summary(self) -> str:
        """Per system, what each smaller type costs against its f16 file."""
        parts = []
        for row in self.rows:
            reference = next((r for r in self.rows if r.system == row.system and r.type == REFERENCE), None)
            if row.delta is None or reference is None:
                continue
            size = (f" at {row.size_mib / reference.size_mib:.0%} of its size"
                    if row.size_mib is not None and reference.size_mib else "")
            subset = f" (n={row.n_paired:,})" if row.paired_subset else ""  # as the table's Δ cell
            parts.append(f"{row.system} {row.type}: {signed(row.delta)}{subset} {self.metric} against f16{size} "
                         f"(p {format_p(row.p_holm)}, Holm)")
        return ("; ".join(parts) + ".") if parts else "No type has been tested against f16 yet."


def study_boards(lab: Lab) -> list[StudyBoard | SweepBoard | QuantBoard]:
    """Every scaling or sweep study with a finished cell and every quantization study with a finished evaluation,
    from the records alone (nothing is run)."""
    boards: list[StudyBoard | SweepBoard | QuantBoard] = []
    for path in sorted((lab.root / "studies").glob("*.yaml")):
        try:
            board = _study_board(lab, path.stem)
        except (LlamalabError, ValueError) as exc:  # one study's problem, named, with the way past it
            raise LlamalabError(f"study {path.stem}: {exc}\n(the report, the site and posts show every study in "
                                f"studies/: fix studies/{path.name}, or move it out of studies/ to publish without "
                                "it)") from None
        if board is not None:
            boards.append(board)
    return boards


def _study_board(lab: Lab, name: str) -> StudyBoard | SweepBoard | QuantBoard | None:
    """One study's board from the records, or None while it has nothing finished to show."""
    study = load_study(lab, name)
    task = load_task(lab.task_path(study.task), lab.root)
    metric, labels = task.metric_names[0], task.answer.labels or None
    if study.spec.kind == "quantization":
        rows = recorded_quantization(lab, study)
        return QuantBoard(study, rows, metric) if rows else None
    check_sizes(lab, study, data_required=False)  # a study `study run` refuses is not published either
    states = cell_states(lab, study)
    if not any(s.status == "finished" for s in states):
        return None
    if study.spec.kind == "sweep":
        return SweepBoard(study, states, sweep_result(states, metric, labels))
    comparators = [(r.run.display_label, r) for r in recorded_comparators(lab, study)]
    return StudyBoard(study, states, scaling_result(states, comparators, metric, labels))
