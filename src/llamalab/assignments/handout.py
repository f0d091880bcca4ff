"""The texts of an assignment, rendered from templates/: the handout, the starter (one source: a percent-format
script, which also becomes the notebook), the submission templates, the staff notes and the solution's report.
"""

from __future__ import annotations

import re
from typing import Any

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("llamalab.assignments", "templates"), autoescape=False,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
)
_ENV.filters["py"] = repr  # a value as a Python literal, in the starter script
_ENV.filters["interval"] = lambda m: f"{m.estimate:.4f} [{m.low:.4f}, {m.high:.4f}]"

# What the report's sections ask for (rubric.REPORT_SECTIONS), as the template's prompts.
SECTION_PROMPTS = {
    "Data check": "What `llamalab data check` found (split sizes, label balance, lengths, duplicates, overlap) and "
                  "what it means for this task.",
    "Baseline": "The zero-shot baselines on dev in each prompt format, with 95% CIs; which one you chose as the "
                "baseline to beat, and why it is chosen on dev.",
    "Fine-tuning": "Your LoRA fine-tune: its settings (experiment.yaml), training examples, steps, loss, time and "
                   "hardware.",
    "Evaluation": "The fine-tuned model against the baseline on dev: the metric with its 95% CI, the paired test, n, "
                  "and the errors you looked at.",
    "Ablation": "Your one change (what, and why): what you expected, what you measured (with CIs and a paired test) "
                "and what the numbers do and do not support.",
}
ANSWER_FORMATS = {
    "label": "one of the labels ({labels}), as a string; a longer generated text is read the way an evaluation reads "
             "it (the label its first line starts with, else the first label that line names, else the first one "
             "the rest names)",
    "number": "the final number as a string, e.g. \"42\", or your model's whole answer (read as an evaluation reads "
              "it: the number after \"####\", else after \"the answer is\", else the last number)",
    "text": "the text, as a string",
    "entities": "a JSON list of {{\"type\", \"text\"}} objects (as JSON, or as a string holding it)",
    "sql": "the SQL query, as a string",
}


def render(template: str, **context: Any) -> str:
    return _ENV.get_template(template).render(**context)


def notebook_from_script(script: str) -> str:
    """The percent-format script (cells start at `# %%`; `# %% [markdown]` cells are comments) as an .ipynb."""
    import nbformat

    cells = []
    for chunk in re.split(r"^# %%", script, flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if header.strip() == "[markdown]":
            text = "\n".join(re.sub(r"^# ?", "", line) for line in body.split("\n"))
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            tags = ["parameters"] if "parameters" in header else []
            cells.append(nbformat.v4.new_code_cell(body, metadata={"tags": tags} if tags else {}))
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    })
    for number, cell in enumerate(notebook.cells):  # stable ids: a rebuild gives the same file
        cell.id = f"cell-{number}"
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"
