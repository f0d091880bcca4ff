"""Property test of the assignment solution report's sentence naming how its intervals were computed: on random
mixes of run records whose intervals were recorded with different methods (exact binomial, percentile bootstrap
with various settings, BCa bootstrap, older records that name no method), the sentence names exactly the schemes of
the intervals the report shows (the baseline's, scored again on the hidden examples; the fine-tuned run's and each
listed ablation's, as recorded), each once: no more, no less.

Runs are records made by hand (no model), as in tests/test_assignment_safety.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from llamalab.assignments.build import build_assignment
from llamalab.evaluation.metrics import metric_intervals
from llamalab.lab import Lab
from llamalab.runs.record import RunRecord, find_run, read_predictions
from tests.test_assignment_safety import _examples, _trained
from tests.test_assignments import _scored_eval

# Recorded methods (None: an older record that names none) and the scheme a reader must be told for each.
METHODS = {
    "exact binomial (Clopper-Pearson)": "exact binomial (Clopper-Pearson)",
    "percentile bootstrap, 200 resamples, seed 0": "percentile bootstrap",
    "percentile bootstrap, 5000 resamples, seed 3": "percentile bootstrap",
    "BCa bootstrap, 2000 resamples, seed 1": "BCa bootstrap",
    None: "method not recorded",
}
RECORDED = list(METHODS)

SENTENCE = re.compile(r"Intervals are 95% confidence intervals over the examples \((.+?)\)\. ## Data check")
FINETUNED = re.compile(r"The fine-tuned model \(`[^`]*`, run `([^`]+)`\) scores")
ABLATION = re.compile(r"\(run `([^`]+)`\): [\d.]+ \[[\d.]+, [\d.]+\], n = ")


def _recorded_with(record: RunRecord, method: str | None) -> None:
    """Rewrite the record's intervals as recorded with `method` (an older record: no method at all)."""
    metrics = {}
    for name, m in record.run.metrics.items():
        interval = m.model_dump(mode="json", exclude_none=True)
        interval.pop("method", None)
        if method is not None:
            interval["method"] = method
        metrics[name] = interval
    record.update(metrics=metrics)


@pytest.mark.parametrize("seed", range(12))
def test_the_reports_interval_sentence_names_exactly_the_shown_intervals_methods(seed, lab: Lab) -> None:
    rng = np.random.default_rng(seed)
    examples = _examples(lab)
    trained = _trained(lab)
    evals = []

    def scored(label: str, p_right: float, train_run: str | None) -> RunRecord:
        right = rng.random(len(examples)) < p_right
        record = _scored_eval(lab, label, {ex.id: (ex.answer, bool(ok)) for ex, ok in zip(examples, right,
                                                                                           strict=True)},
                              train_run=train_run)
        _recorded_with(record, RECORDED[int(rng.integers(len(RECORDED)))])
        evals.append(record)
        return record

    scored("tuned", 0.95, trained.id)
    scored("base", 0.5, None)
    for k in range(int(rng.integers(0, 4))):  # other fine-tuned evaluations: the report's ablations
        scored(f"ablation{k}", float(rng.uniform(0.6, 0.9)), trained.id)

    build_assignment(lab, "sentiment")
    report = " ".join((lab.root / "assignments" / "sentiment" / "solution" / "report.md").read_text().split())
    sentence = SENTENCE.search(report)
    assert sentence, report[:800]
    named = sentence[1].split("; ")

    # the intervals the report shows, and how each was computed
    metric = "accuracy"
    finetuned = find_run(lab.runs_dir, FINETUNED.search(report)[1], "eval")
    ablations = [find_run(lab.runs_dir, ident, "eval") for ident in ABLATION.findall(report)]
    assert finetuned.id not in {r.id for r in ablations}
    assert {r.id for r in ablations} == {r.id for r in evals if r.run.system.kind == "finetuned"} - {finetuned.id}
    # the baseline's interval is scored again on the examples the fine-tuned run answered (whichever baseline won)
    hidden = list(read_predictions(finetuned.folder))
    base = [r for r in evals if r.run.system.kind == "base"]
    rescored = metric_intervals([metric], [read_predictions(base[0].folder)[i] for i in hidden],
                                ["negative", "positive"])[metric]["method"]
    shown = [rescored, finetuned.run.metrics[metric].method, *(r.run.metrics[metric].method for r in ablations)]
    expected = {METHODS[m] if m in METHODS else m.split(",")[0] for m in shown}
    context = (seed, shown, sentence[0])
    assert len(named) == len(set(named)), context  # each once
    assert set(named) == expected, context  # no more, no less
