"""`llamalab assignment build|grade|predict`: course assignments from the lab's tasks (a thin layer over
llamalab.assignments). Also runs on its own: `python -m llamalab.assignments.cli ...`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llamalab.lab import find_lab

assignment_app = typer.Typer(help="Course assignments from the lab's tasks: student handout, Gradescope autograder, "
                                  "reference solution.", no_args_is_help=True, pretty_exceptions_enable=False)
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
out = Console(width=None if sys.stdout.isatty() else 140)

LabOption = Annotated[Path | None, typer.Option("--lab", help="lab folder (default: the one containing the cwd)")]


@assignment_app.command("build")
def build(
    task: str,
    name: Annotated[str | None, typer.Option(help="writes assignments/NAME/ (default: the task's name)")] = None,
    from_runs: Annotated[list[str] | None, typer.Option(
        "--from-runs", metavar="RUN",
        help="eval runs on the test split to take the thresholds from (repeat, or separate with commas); default: "
             "the best fine-tuned and the best other evaluation in the lab")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="output folder (default: LAB/assignments/NAME)")
                       ] = None,
    margin: Annotated[float | None, typer.Option(
        help="full credit at the lab's fine-tuned result minus this (default 0.02)")] = None,
    public: Annotated[bool | None, typer.Option(
        "--public/--private", help="publish the handout on the lab site (default: as before, else private)")] = None,
    lab: LabOption = None,
) -> None:
    """Build the student handout, the Gradescope autograder and the reference solution from the lab's runs."""
    from llamalab.assignments.build import build_assignment
    from llamalab.assignments.grade import grading_folder, load_config

    runs = [ref.strip() for item in from_runs or [] for ref in item.split(",") if ref.strip()]
    options = {} if margin is None else {"margin": margin}
    notes: list[str] = []
    folder = build_assignment(find_lab(lab), task, name=name, from_runs=runs or None, out=out_dir, public=public,
                              note=notes.append, **options)
    with grading_folder(folder) as grading:  # the numbers as the grader will read them
        t = load_config(grading).thresholds
    console.print(f"{t.metric}: 0 points at or below {t.zero_at:.4f} ({escape(t.zero_reason())}), full points at "
                  f"or above {t.full_at:.4f} ({escape(t.finetuned_system)} {t.finetuned:.4f} minus {t.margin:g}); "
                  f"hidden test: {t.finetuned_n:,} examples")
    for line in notes:  # the constant-answer floor, and hidden files git tracks
        console.print(line, markup=False, style="yellow" if line.startswith("warning") else None)
    for part, what in (("student", "hand this out"), ("autograder", "upload autograder.zip to Gradescope"),
                       ("solution", "the reference submission (full marks)")):
        console.print(f"  {folder / part}  [dim]{what}[/]")
    out.print(str(folder))


@assignment_app.command("grade")
def grade(
    folder: Annotated[Path, typer.Argument(
        metavar="DIR", help="assignments/NAME (the hidden test), or a student folder (its dev self-check)")],
    submission: Annotated[Path, typer.Argument(help="a folder holding predictions.jsonl, experiment.yaml, report.md")],
    as_json: Annotated[bool, typer.Option("--json", help="print the results.json Gradescope would get")] = False,
) -> None:
    """Grade a submission locally, with the same grader Gradescope runs."""
    from llamalab.assignments.grade import grade_submission, grading_folder

    with grading_folder(folder) as grading:
        results = grade_submission(grading, submission)
    if as_json:
        out.print_json(json.dumps(results))
        return
    table = Table(title=escape(results["output"].split("\n")[0]), show_lines=True)
    for column, justify in (("points", "right"), ("part", "left"), ("details", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for test in results["tests"]:
        table.add_row(f"{test['score']:g} / {test['max_score']:g}", escape(test["name"]), escape(test["output"]))
    out.print(table)
    for note in results["output"].split("\n")[1:]:
        out.print(escape(note))


@assignment_app.command("predict")
def predict(
    system: Annotated[str, typer.Argument(help="a train run id or a base model")],
    inputs: Annotated[Path, typer.Argument(help="JSON lines with an id and the task's input fields")],
    target: Annotated[Path, typer.Argument(metavar="OUT", help="where to write predictions.jsonl")],
    task: Annotated[str, typer.Option(help="task name")],
    prompt_format: Annotated[str | None, typer.Option("--format", help="plain or chat (default: as evaluate)")] = None,
    lab: LabOption = None,
) -> None:
    """Answer inputs without labels (the test inputs) and write them as a submission's predictions.jsonl."""
    from llamalab.assignments.predict import predict_inputs

    options = {"format": prompt_format} if prompt_format else {}
    path = predict_inputs(find_lab(lab), system, inputs, target, task=task, console=console, **options)
    console.print(f"predictions written to {path}")


def main() -> None:
    from llamalab.cli import run_app

    run_app(assignment_app)


if __name__ == "__main__":
    main()
