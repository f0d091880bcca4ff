"""Metrics from per-example prediction rows: scoring one answer, CIs, and paired tests between systems.

Each answer type scores an example into plain fields of its prediction row (`correct`, `rouge1`,
`tp`/`fp`/`fn`, ...). Every corpus metric, its CI and every paired test are computed from those rows,
so `compare` needs nothing but the predictions.jsonl files.
"""

from __future__ import annotations

from collections.abc import Sequence

from llamalab.evaluate import answers, stats
from llamalab.evaluate.generation import parse_label
from llamalab.tasks.task import AnswerSpec

NO_ANSWER = "<no answer>"
# Metrics whose per-example value is a right/wrong flag: paired with an exact McNemar test.
_BINARY = ("accuracy", "exact_match")
_PER_EXAMPLE = ("exact_match", "rouge1", "rouge2", "rougeL")


def score_generation(answer: AnswerSpec, gold: str, text: str) -> dict:
    """Parse a generated answer and score it against the gold answer: the fields of a prediction row."""
    if answer.type == "label":
        prediction = parse_label(text, {label: answer.verbalize(label) for label in answer.labels})
        return {"prediction": prediction, "correct": prediction == gold}
    if answer.type == "number":
        prediction, expected = answers.extract_number(text), answers.extract_number(gold)
        return {"prediction": prediction, "gold_number": expected,
                "correct": prediction is not None and prediction == expected}
    if answer.type == "entities":
        predicted = answers.parse_entities(text)
        expected = answers.parse_entities(gold) or []  # the gold JSON, normalised exactly as predictions are
        counts = answers.entity_scores([expected], [predicted])["per_example"][0]
        return {"prediction": predicted, "valid_json": predicted is not None, **counts}
    references = answer.references(gold)
    rouge = answers.rouge_scores([references], [text])
    return {"prediction": text.strip(), "correct": any(answers.exact_match(r, text) == 1.0 for r in references),
            **{name: values[0] for name, values in rouge.items()}}


def row_statistic(metric: str, rows: Sequence[dict], labels: Sequence[str] | None = None):
    """The metric as a row statistic (index matrix -> value per row) over these prediction rows."""
    if metric in _BINARY:
        return stats.mean_statistic([float(bool(r["correct"])) for r in rows])
    if metric in _PER_EXAMPLE:
        return stats.mean_statistic([float(r[metric]) for r in rows])
    if metric == "macro_f1":
        gold = [r["gold"] for r in rows]
        pred = [NO_ANSWER if r["prediction"] is None else r["prediction"] for r in rows]
        return stats.label_statistic(gold, pred, "macro_f1", labels)
    if metric.startswith("entity_"):
        tp, fp, fn = ([r[k] for r in rows] for k in ("tp", "fp", "fn"))
        if metric == "entity_f1":
            return stats.micro_f1_statistic(tp, fp, fn)
        return stats.ratio_statistic(tp, fp if metric == "entity_precision" else fn)
    raise ValueError(f"unknown metric {metric!r}")


def metric_intervals(metrics: Sequence[str], rows: Sequence[dict], labels=None, resamples: int = 5000) -> dict:
    """Each metric with its 95% percentile-bootstrap interval."""
    return {
        name: stats.statistic_ci(row_statistic(name, rows, labels), len(rows), n_resamples=resamples).to_dict()
        for name in metrics
    }


def paired_test(metric: str, rows_a: Sequence[dict], rows_b: Sequence[dict], labels=None, resamples: int = 5000):
    """System A vs B on the same examples (rows aligned): exact McNemar for right/wrong metrics,
    a paired bootstrap for everything else."""
    if metric in _BINARY:
        truth = [True] * len(rows_a)
        return stats.mcnemar(truth, [bool(r["correct"]) for r in rows_a], [bool(r["correct"]) for r in rows_b])
    return stats.paired_bootstrap_statistic(
        row_statistic(metric, rows_a, labels), row_statistic(metric, rows_b, labels), len(rows_a), metric,
        n_resamples=resamples,
    )
