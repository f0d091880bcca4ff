"""`llamalab report`: a write-up draft in reports/<name>/, generated from the run records alone.

    README.md          the draft: per task a table, figures and the methods paragraphs
    report.tex         the same as a LaTeX document (booktabs tables, PDF figures)
    tables/<task>.md   and tables/<task>.tex: the leaderboards
    figures/           <task>-by-system, <task>-vs-cost, <task>-scaling (with fine-tunes of several sizes),
                       loss-<run id>; each as .pdf and .png
    methods.md         the methods section alone
    results.json       every number in the tables, for scripts

Nothing in the output depends on when it was built: the same records give byte-identical files.
"""

from __future__ import annotations

import re
from pathlib import Path

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import refers_to
from llamalab.lab import Lab
from llamalab.publish import figures
from llamalab.publish.methods import methods_paragraphs
from llamalab.publish.results import (
    QuantBoard,
    StudyBoard,
    SweepBoard,
    TaskBoard,
    loss_history,
    scaling_points,
    study_boards,
    task_boards,
    task_evals,
    train_runs,
)
from llamalab.publish.tables import (
    latex_escape,
    latex_table,
    markdown_table,
    md_escape,
    quant_latex,
    quant_markdown,
    study_latex,
    study_markdown,
    sweep_latex,
    sweep_markdown,
)
from llamalab.runs.files import staged_folder, write_json_atomic, write_text_atomic
from llamalab.runs.record import RunRecord

FORMATS = ("pdf", "png")


def build_report(
    lab: Lab, name: str = "draft", split: str = "test", tasks: list[str] | None = None, reference: str | None = None
) -> Path:
    """Write reports/<name>/ (replacing a previous build whole) and return its path.

    Significance is against `reference` (a run id or system label) where it was evaluated, else the best system."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:  # reports/NAME/, never elsewhere
        raise LlamalabError(f"report name {name!r}: use letters, digits, '.', '_' and '-' (it is the folder "
                            "reports/NAME/, replaced whole by each build)")
    boards = task_boards(lab, split, reference=reference, tasks=tasks or None)
    if reference and not any(refers_to(reference, row.run, row.system, row.train_run) for b in boards
                             for row in b.rows):
        raise LlamalabError(f"reference {reference!r} names no evaluated system: give a run id or a system label "
                            "as `llamalab compare` shows them")
    if tasks and (missing := sorted(set(tasks) - {b.name for b in boards})):
        for name in missing:
            lab.task_path(name)  # a task that does not exist: its own error, with the name it probably meant
        raise LlamalabError(f"no finished {split} evaluations on the current data for task(s) {', '.join(missing)} "
                            f"in {lab.runs_dir} (see `llamalab compare --task {missing[0]} --split {split}`)")
    if not boards:
        raise LlamalabError(f"no finished evaluations on the {split} split in {lab.runs_dir}: run `llamalab eval`")
    trained = {r.id: r for r in train_runs(lab)}
    target = lab.root / "reports" / name
    with staged_folder(target) as out:
        sections, latex_sections, all_methods = [], [], []
        for board in boards:
            used = {rid: trained[rid] for e in board.entries if (rid := e.run.system.train_run) in trained}
            paths = _write_board(out, board, used)
            methods = methods_paragraphs(board, used, task_evals(lab, board.name))
            all_methods.append((board.name, methods))
            sections.append(_markdown_section(board, paths, methods))
            latex_sections.append(_latex_section(board, paths, methods))
        for study in study_boards(lab):
            if study.study.spec.eval.split == split and (not tasks or study.study.task in tasks):
                markdown, latex = _write_study(out, study)
                sections.append(markdown)
                latex_sections.append(latex)
        draft = f"# {lab.config.name}: results draft\n\n" + _provenance(boards) + "\n".join(sections)
        write_text_atomic(out / "README.md", draft)
        write_text_atomic(out / "methods.md", "# Methods\n\n" + "\n".join(
            f"## {task}\n\n" + _methods_markdown(paragraphs) + "\n" for task, paragraphs in all_methods))
        write_text_atomic(out / "report.tex", _latex_document(lab, latex_sections))
        write_json_atomic(out / "results.json", [b.comparison.to_json() for b in boards])
    return target


def _write_board(out: Path, board: TaskBoard, trained: dict[str, RunRecord]) -> dict[str, list[str]]:
    """Tables and figures of one task; returns the figure stems (relative to `out`) by kind."""
    write_text_atomic(out / "tables" / f"{board.name}.md", markdown_table(board))
    write_text_atomic(out / "tables" / f"{board.name}.tex", latex_table(board))
    stems: dict[str, list[str]] = {"figures": [], "loss": []}
    figures.save(figures.metric_by_system(board.comparison), out / "figures" / f"{board.name}-by-system", FORMATS)
    stems["figures"].append(f"figures/{board.name}-by-system")
    if (fig := figures.metric_vs_cost(board.comparison)) is not None:
        figures.save(fig, out / "figures" / f"{board.name}-vs-cost", FORMATS)
        stems["figures"].append(f"figures/{board.name}-vs-cost")
    if curves := scaling_points(board, trained):
        figures.save(figures.scaling(board.comparison, curves), out / "figures" / f"{board.name}-scaling", FORMATS)
        stems["figures"].append(f"figures/{board.name}-scaling")
    for run_id, record in trained.items():
        if history := loss_history(record):
            figures.save(figures.loss_curve(history, f"training loss: {record.run.name}"),
                         out / "figures" / f"loss-{run_id}", FORMATS)
            stems["loss"].append(f"figures/loss-{run_id}")
    return stems


def _write_study(out: Path, board: StudyBoard | SweepBoard | QuantBoard) -> tuple[str, str]:
    """A study's table, figure and summary sentences; returns its Markdown and LaTeX sections."""
    stem = f"study-{board.name}"
    if isinstance(board, QuantBoard):
        table_md, table_tex = quant_markdown(board), quant_latex(board)
        title = f"{board.study.task}: {board.metric} against GGUF file size"
        figure = figures.quant_tradeoff(board.rows, board.metric, title)
        intro = (f"{len(board.rows)} evaluations of {len(board.study.spec.quantize.systems)} system(s) exported to "
                 f"GGUF, from studies/{board.name}.yaml.")
        runs = "\n".join(f"- {md_escape(row.system)} {row.type}: eval {row.eval.id}" for row in board.rows)
    else:
        if isinstance(board, SweepBoard):
            table_md, table_tex = sweep_markdown(board), sweep_latex(board)
            title = f"{board.study.task}: {board.result.metric} of each setting"
            figure = figures.sweep_settings(board.result, title)
        else:
            table_md, table_tex = study_markdown(board), study_latex(board)
            title = f"{board.study.task}: {board.result.metric} against training examples"
            figure = figures.study_curve(board.result, title)
        intro = (f"{len(board.states)} cells of experiment `{board.study.spec.experiment}`, from "
                 f"studies/{board.name}.yaml.")
        runs = "\n".join(f"- {md_escape(s.cell.label)}: train {s.train.id}, eval {s.eval.id}" for s in board.states
                          if s.status == "finished" and s.train and s.eval)
    write_text_atomic(out / "tables" / f"{stem}.md", table_md)
    write_text_atomic(out / "tables" / f"{stem}.tex", table_tex)
    figures.save(figure, out / "figures" / stem, FORMATS)
    summary = board.summary()
    markdown = "\n".join([f"## Study: {board.name}\n", f"{intro} {md_escape(summary)}\n", table_md,
                          f"![{title}](figures/{stem}.png)\n", "Runs:\n\n" + runs + "\n"])
    latex = (f"\\section{{Study: {latex_escape(board.name)}}}\n{latex_escape(intro)} {latex_escape(summary)}\n"
             f"\\input{{tables/{stem}.tex}}\n\\begin{{figure}}[t]\\centering\n"
             f"\\includegraphics[width=0.85\\linewidth]{{figures/{stem}.pdf}}\n"
             f"\\caption{{{_first_upper(latex_escape(title))}.}}\n\\end{{figure}}\n")
    return markdown, latex


def _provenance(boards: list[TaskBoard]) -> str:
    runs = sorted({e.record.id for b in boards for e in b.entries})
    return (f"Generated by `llamalab report` from the {len(runs)} evaluation run(s) on its leaderboards (and the "
            "runs each study section lists) in `runs/`: every leaderboard estimate and interval is the one its run "
            "recorded in `run.json` (a metric a run predates is computed from its `predictions.jsonl`, as its "
            "evaluation would have); a study's points and bands are computed from its runs' `predictions.jsonl` (the "
            "mean over seeds on the examples they share, the band resampling examples and seeds together, as each "
            "study section says), so one run's interval there can differ slightly from its leaderboard one; every "
            "paired test is computed from the runs' `predictions.jsonl`. Edit freely: rebuilding overwrites this "
            "folder.\n\n")


def _markdown_section(board: TaskBoard, paths: dict[str, list[str]], methods: list[str]) -> str:
    best = board.rows[0]
    m = best.metrics[board.metric]
    tied = [md_escape(r.system) for r in board.rows[1:] if board.metric in r.metrics
            and r.metrics[board.metric].estimate == m.estimate]  # ranked first by order alone: say so
    tie = f" (tied with {', '.join(tied)})" if tied else ""
    lines = [
        f"## {board.name}\n",
        f"Best system on {board.metric}: **{md_escape(best.system)}**{tie}, {m.estimate:.3f} "
        f"(95% CI {m.low:.3f} to {m.high:.3f}, n = {best.n:,}).\n",
        markdown_table(board),
        *(f"![{_alt(stem, board)}]({stem}.png)\n" for stem in paths["figures"] + paths["loss"]),
        "### Methods\n",
        _methods_markdown(methods) + "\n",
    ]
    return "\n".join(lines)


def _methods_markdown(paragraphs: list[str]) -> str:
    """The methods paragraphs (plain text, labels and parsing rules as recorded) as literal Markdown: a label reads
    as it does in the table, never as emphasis, a link or HTML."""
    return "\n\n".join(md_escape(p) for p in paragraphs)


def _alt(stem: str, board: TaskBoard) -> str:
    if stem.endswith("-by-system"):
        return f"{board.metric} of each system on {board.name} with 95% confidence intervals"
    if stem.endswith("-scaling"):
        return f"{board.metric} on {board.name} against the number of fine-tuning examples, with the baselines"
    if stem.endswith("-vs-cost"):
        return f"{board.metric} on {board.name} against cost per 1,000 examples"
    return f"training loss curve of run {stem.removeprefix('figures/loss-')}"


def _latex_section(board: TaskBoard, paths: dict[str, list[str]], methods: list[str]) -> str:
    graphics = "\n".join(
        "\\begin{figure}[t]\\centering\n"
        f"\\includegraphics[width=0.85\\linewidth]{{{stem}.pdf}}\n"
        f"\\caption{{{_first_upper(latex_escape(_alt(stem, board)))}.}}\n\\end{{figure}}"
        for stem in paths["figures"] + paths["loss"]
    )
    body = "\n\n".join(latex_escape(p) for p in methods)
    return (f"\\section{{{latex_escape(board.name)}}}\n\\input{{tables/{board.name}.tex}}\n{graphics}\n"
            f"\\subsection{{Methods}}\n{body}\n")


def _latex_document(lab: Lab, sections: list[str]) -> str:
    return (
        "% Generated by `llamalab report` from the run records.\n"
        "\\documentclass{article}\n\\usepackage[utf8]{inputenc}\n\\usepackage[T1]{fontenc}\n"
        "\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\usepackage[margin=2cm]{geometry}\n"
        f"\\title{{{latex_escape(lab.config.name)}: results draft}}\n\\date{{}}\n"
        "\\begin{document}\n\\maketitle\n" + "\n".join(sections) + "\\end{document}\n"
    )


def _first_upper(text: str) -> str:
    """A caption's first letter in capitals; task names and run ids kept as written (not str.capitalize)."""
    return text[:1].upper() + text[1:]
