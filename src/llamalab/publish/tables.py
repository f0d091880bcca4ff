"""A task's leaderboard as a Markdown table and a LaTeX (booktabs) table, from `results.TaskBoard` rows."""

from __future__ import annotations

import re

from llamalab.evaluation.compare import (
    TIME_NOTE,
    cost_note,
    earlier_data_note,
    format_cost,
    format_delta,
    format_interval,
    format_p,
    format_seconds,
    interval_note,
    reference_cell,
    reference_name,
    signed,
    tests_label,
)
from llamalab.publish.results import QuantBoard, StudyBoard, SweepBoard, TaskBoard


def leaderboard_cells(board: TaskBoard) -> tuple[list[str], list[list[str]]]:
    """Header and plain-text cells shared by every rendering of the leaderboard."""
    metrics = board.comparison.metrics
    header = ["System", "Protocol", "n", *(f"{m} [95% CI]" for m in metrics), "Δ vs ref.", "p (Holm)",
              "$ / 1k ex.", "time / 1k ex."]
    body = []
    for row in board.rows:
        vs = row.vs_reference
        delta = reference_cell(board.comparison) if vs is None else format_delta(vs)
        body.append([
            row.system, row.protocol, f"{row.n:,}",
            *(format_interval(row.metrics[m]) if m in row.metrics else "–" for m in metrics),
            delta, "" if vs is None else format_p(vs.p_holm), format_cost(row.cost_per_1k_usd, row.cost_basis),
            format_seconds(row.seconds_per_1k),
        ])
    return header, body


def caption(board: TaskBoard) -> str:
    return (
        f"{board.name}, {board.comparison.split} split, ranked by {board.metric}. "
        f"{interval_note([row.metrics for row in board.rows], [row.system for row in board.rows])} "
        + ("p: none, with one system. " if len(board.rows) == 1 else
           f"p: {tests_label(board.rows)} on {board.metric} against {reference_name(board.comparison)}, "
           "on the examples both saw (n=… marks a paired subset), Holm-corrected. ") + cost_note(board.rows)
        + f" {TIME_NOTE} " + earlier_data_note(board.comparison)
    ).strip()


def markdown_table(board: TaskBoard) -> str:
    return _markdown(*leaderboard_cells(board), caption(board))


def latex_table(board: TaskBoard) -> str:
    return _latex(*leaderboard_cells(board), caption(board), board.name)


def study_cells(board: StudyBoard) -> tuple[list[str], list[list[str]]]:
    """A scaling study's curve, one row per training-set size, with the paired test against each comparator."""
    result = board.result
    header = ["Training examples", "Seeds", f"{result.metric} (mean)", "95% band",
              *(f"Δ vs {c.comparator} (p Holm)" for c in result.crossovers)]
    body = []
    for i, point in enumerate(result.curve):
        m = point.interval
        tests = [c.tests[i] for c in result.crossovers]
        body.append([f"{point.size:,}", str(point.seeds), f"{m.estimate:.3f}", f"[{m.low:.3f}, {m.high:.3f}]",
                     *(f"{signed(t.delta)} ({format_p(t.p_holm)}){' *' if t.better else ''}" for t in tests)])
    return header, body


def study_caption(board: StudyBoard) -> str:
    result, spec = board.result, board.study.spec
    comparators = "; ".join(f"{c.comparator} {format_interval(c.interval)}" for c in result.crossovers)
    if comparators:  # their own evaluations' intervals, as recorded
        comparators += (" (" + interval_note([{result.metric: c.interval} for c in result.crossovers],
                                             [c.comparator for c in result.crossovers])[:-1] + ")")
    return (f"Study {board.name}: {result.metric} on {board.study.task}/{spec.eval.split} of the fine-tuned "
            f"{spec.experiment} against its number of training examples; mean over seeds, 95% percentile-bootstrap "
            "band over examples and seeds. Δ: mean over seeds minus the comparator on the examples both saw "
            "(paired bootstrap), Holm-corrected across sizes; * better at p < 0.05. "
            + (f"Comparators: {comparators}." if comparators else "No comparator has finished evaluations."))


def study_markdown(board: StudyBoard) -> str:
    return _markdown(*study_cells(board), study_caption(board))


def study_latex(board: StudyBoard) -> str:
    return _latex(*study_cells(board), study_caption(board), f"study-{board.name}")


def sweep_cells(board: SweepBoard) -> tuple[list[str], list[list[str]]]:
    """A sweep study: one row per setting (mean over seeds), best first, each tested against the best."""
    header = ["Setting", "Seeds", f"{board.result.metric} (mean)", "95% band", "Δ vs best", "p (Holm)", "n"]
    body = []
    best_n = board.result.points[0].interval.n if board.result.points else None
    for i, point in enumerate(board.result.points):
        m = point.interval
        fewer = point.n_shared is not None and (point.n_shared != m.n or point.n_shared != best_n)  # than either saw
        shared = f" (n={point.n_shared:,})" if point.delta is not None and fewer else ""
        if i == 0:
            test = ["best", "–"]
        elif not point.tested:
            test = ["not tested: no examples in common", "–"]
        else:  # Δ on the examples both saw, with their n where fewer
            mark = " *" if point.worse or point.better else ""
            test = [signed(point.delta) + shared, f"{format_p(point.p_holm)}{mark}"]
        body.append([point.setting, str(point.seeds), f"{m.estimate:.3f}", f"[{m.low:.3f}, {m.high:.3f}]", *test,
                     f"{m.n:,}"])
    return header, body


def sweep_caption(board: SweepBoard) -> str:
    spec = board.study.spec
    chosen = ("These are the examples the best setting was picked on, so its estimate is optimistic: choose on the "
              "dev split and confirm on test. " if spec.eval.split != "dev" else "")
    return (f"Study {board.name}: {board.result.metric} on {board.study.task}/{spec.eval.split} of the fine-tuned "
            f"{spec.experiment} in each setting; mean over seeds, 95% percentile-bootstrap band over examples and "
            "seeds. Δ: this setting minus the best on the examples both saw (paired bootstrap of the means over "
            "seeds), Holm-corrected across the settings tested; * significantly different from the best at "
            "p < 0.05. " + chosen).rstrip()


def sweep_markdown(board: SweepBoard) -> str:
    return _markdown(*sweep_cells(board), sweep_caption(board))


def sweep_latex(board: SweepBoard) -> str:
    return _latex(*sweep_cells(board), sweep_caption(board), f"study-{board.name}")


def quant_cells(board: QuantBoard) -> tuple[list[str], list[list[str]]]:
    """A quantization study: one row per system and GGUF type, each tested against the same system's f16 file."""
    header = ["System", "Type", "File (MiB)", f"{board.metric} [95% CI]", "Δ vs f16", "p (Holm)", "examples / s",
              "n"]
    body = [[row.system, row.type, "gone" if row.size_mib is None else f"{row.size_mib:,.1f}",
             format_interval(row.interval), _quant_delta(row),
             format_p(row.p_holm), "–" if not row.examples_per_s else f"{row.examples_per_s:.1f}",
             f"{row.interval.n:,}"] for row in board.rows]
    return header, body


def _quant_delta(row) -> str:
    """The Δ cell: f16 is the reference; another type without its system's f16 evaluation yet has no Δ; a test on
    fewer examples than the type's evaluation saw says on how many."""
    from llamalab.studies.quantization import REFERENCE

    if row.type == REFERENCE:
        return "reference"
    if row.delta is None:
        return "–"
    return signed(row.delta) + (f" (n={row.n_paired:,})" if row.paired_subset else "")


def quant_caption(board: QuantBoard) -> str:
    spec = board.study.spec
    tests = ", ".join(sorted({row.test for row in board.rows if row.test})) or "no test yet"
    family = sum(row.p_holm is not None for row in board.rows)
    return (f"Study {board.name}: {board.metric} on {board.study.task}/{spec.eval.split} of each system exported "
            "to GGUF by llama.cpp's converter and quantizer and evaluated with the llama.cpp backend on the same "
            "examples. "
            f"Δ and p: this type minus the same system's f16 file on the examples both saw ({tests}; "
            f"Holm-corrected for the {family} such test{'' if family == 1 else 's'} in the table; Δ marked n=… "
            "when f16 saw only some of the type's examples). n: the examples the type's evaluation saw. "
            + (interval_note([{board.metric: row.interval} for row in board.rows],
                             [f"{row.system} {row.type}" for row in board.rows]) if board.rows else ""))


def quant_markdown(board: QuantBoard) -> str:
    return _markdown(*quant_cells(board), quant_caption(board))


def quant_latex(board: QuantBoard) -> str:
    return _latex(*quant_cells(board), quant_caption(board), f"study-{board.name}")


def _markdown(header: list[str], body: list[list[str]], text: str) -> str:
    lines = [_md_row(header), "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += [_md_row([md_escape(cells[0]), *cells[1:]]) for cells in body]  # the first column: labels from records
    return "\n".join(lines) + f"\n\n*{md_escape(text.strip())}*\n"  # "test. *" would close no emphasis


def md_escape(text: str) -> str:
    """Text from records (a system label, a task name) as literal Markdown: `*star*`, `[a](b)` or `<img>` in a
    label is shown as written, not rendered as emphasis, a link or HTML. Brackets alone ("model [plain]") make
    no link, nor does an underscore inside a word ("learning_rate"): they stay as they are."""
    escaped = re.sub(r"([\\`*<>#|&])", r"\\\1", text)
    escaped = re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", escaped)  # "learning_rate" makes no emphasis
    return re.sub(r"([\[\]])", r"\\\1", escaped) if "](" in text or "][" in text else escaped


def _latex(header: list[str], body: list[list[str]], text: str, label: str) -> str:
    spec = "ll" + "r" * (len(header) - 2)
    lines = [
        "% Generated by `llamalab report` from the run records; needs \\usepackage{booktabs} and "
        "\\usepackage[T1]{fontenc}.",
        "\\begin{table}[t]", "\\centering", "\\small", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
        " & ".join(latex_escape(h) for h in header) + " \\\\", "\\midrule",
        *(" & ".join(latex_escape(c) for c in cells) + " \\\\" for cells in body),
        "\\bottomrule", "\\end{tabular}", f"\\caption{{{latex_escape(text)}}}",
        f"\\label{{tab:{re.sub(r'[^A-Za-z0-9-]', '-', label)}}}", "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "Δ": r"$\Delta$", "–": "--",
          "×": r"$\times$", "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
          '"': r"\textquotedbl{}", "≥": r"$\geq$", "≤": r"$\leq$", "…": r"\ldots{}", "−": "-", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    escaped = "".join(_LATEX.get(c, c) for c in text)
    return "{}" + escaped if escaped.startswith("[") else escaped  # not an optional argument of the \\ before it


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
