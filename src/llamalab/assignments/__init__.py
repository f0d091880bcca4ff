"""Course assignments from a lab's tasks: a student handout, a Gradescope autograder and a reference solution.

    from llamalab.assignments import build_assignment, grade_submission, predict_inputs, write_predictions

    folder = build_assignment(lab, "sentiment")  # assignments/sentiment/{student,autograder,solution}

    # In the student folder (a lab): answer the test inputs, and check a submission on dev
    predict_inputs(lab, run_id, "data/test_inputs.jsonl", "submit/predictions.jsonl", task="sentiment")
    write_predictions(dev_eval_record, "dev-check/predictions.jsonl")
    results = grade_submission(Path("grading"), Path("dev-check"))  # Gradescope's results.json, on dev

Names are imported on first use: the grader runs inside Gradescope's image with only what grading needs
(no torch, no model), so importing this package must not pull in the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_assignment": "llamalab.assignments.build",
    "grade_submission": "llamalab.assignments.grade",
    "predict_inputs": "llamalab.assignments.predict",
    "write_predictions": "llamalab.assignments.predict",
}
__all__ = ["build_assignment", "grade_submission", "predict_inputs", "write_predictions"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llamalab.assignments' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
