"""Metrics from per-example prediction rows: scoring one answer, CIs, paired tests, and what the predictions
look like as a whole (their distribution, parse failures, and warnings when a scorer is degenerate).

Each answer type scores an example into plain fields of its prediction row (`correct`, `exact_strict`,
`rouge1`, `tp`/`fp`/`fn`, ...). Every corpus metric, its CI and every paired test are computed from those rows,
so `compare` needs nothing but the predictions.jsonl files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from llamalab.evaluation import answers, stats
from llamalab.evaluation.parsing import parse_label
from llamalab.tasks.task import NORMALIZATIONS, AnswerSpec

NO_ANSWER = "<no answer>"
# Metrics whose per-example value is a right/wrong flag (paired with an exact McNemar test), and that flag.
_BINARY = {"accuracy": "correct", "exact_match": "correct", "exact_match_strict": "exact_strict"}
_PER_EXAMPLE = ("rouge1", "rouge2", "rougeL")
# A label is flagged when its share of predictions exceeds its share of gold answers by this much.
DEGENERATE_EXCESS = 0.25
# Generation outputs that do not parse are flagged from this rate on.
PARSE_FAILURE_WARNING = 0.2
PARSED_AS = {"label": "one of the labels", "number": "a number", "entities": "a JSON entity list",
             "text": "a non-empty answer", "sql": "a SQL query"}


def score_generation(answer: AnswerSpec, gold: str, text: str) -> dict:
    """Parse a generated answer and score it against the gold answer: the fields of a prediction row.

    `parsed` says whether the output had the expected shape at all; an unparsed answer counts as wrong."""
    if answer.type == "label":
        prediction = parse_label(text, {label: answer.verbalize(label) for label in answer.labels})
        return {"prediction": prediction, "parsed": prediction is not None, "correct": prediction == gold}
    if answer.type == "number":
        prediction, expected = answers.extract_number(text), answers.extract_number(gold)
        return {"prediction": prediction, "parsed": prediction is not None, "gold_number": expected,
                "correct": prediction is not None and prediction == expected}
    if answer.type == "entities":
        predicted = answers.parse_entities(text)
        expected = answers.parse_entities(gold) or []  # the gold JSON, normalised exactly as predictions are
        counts = answers.entity_scores([expected], [predicted])["per_example"][0]
        return {"prediction": predicted, "parsed": predicted is not None, "valid_json": predicted is not None,
                **counts}
    references = answer.references(gold)
    if answer.type == "sql":
        query = answers.extract_sql(text)
        lenient = answers.normalize_sql(query)
        return {"prediction": query, "parsed": bool(query),
                "correct": bool(query) and any(answers.normalize_sql(r) == lenient for r in references),
                "exact_strict": bool(query) and any(answers.exact_match_strict(r, query) == 1.0 for r in references)}
    rouge = answers.rouge_scores([references], [text])
    return {"prediction": text.strip(), "parsed": bool(text.strip()),
            "correct": any(answers.exact_match(r, text) == 1.0 for r in references),
            "exact_strict": any(answers.exact_match_strict(r, text) == 1.0 for r in references),
            **{name: values[0] for name, values in rouge.items()}}


def label_score(logprob: float, n_tokens: int, n_chars: int, unconditional: float | None, normalize: str) -> float:
    """A label's score under `answer.normalize`: summed log-likelihood, per token, per character (lm-eval's
    acc_norm), or calibrated by the label's log-likelihood after a content-free prompt (`unconditional`)."""
    if normalize == "mean":
        return logprob / n_tokens
    if normalize == "chars":
        return logprob / max(n_chars, 1)
    if normalize == "calibrate":
        if unconditional is None:
            raise ValueError("calibrate needs the label's log-likelihood after the content-free prompt")
        return logprob - unconditional
    return logprob


def row_statistic(metric: str, rows: Sequence[dict], labels: Sequence[str] | None = None) -> stats.RowStatistic:
    """The metric as a row statistic (index matrix -> value per row) over these prediction rows."""
    if metric in _BINARY:
        return stats.mean_statistic([float(bool(r[_BINARY[metric]])) for r in rows])
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


def canonical_order(rows: Sequence[dict]) -> list[dict]:
    """Rows in one fixed order (by example id): wherever a run's metrics are computed, the bootstrap draws the
    same resamples, so the eval output, metrics.json, compare, the report and the site show one number."""
    return sorted(rows, key=lambda r: str(r["id"]))


def metric_intervals(metrics: Sequence[str], rows: Sequence[dict], labels=None, resamples: int = 5000) -> dict:
    """Each metric with its 95% interval: exact binomial (Clopper-Pearson) for right/wrong metrics, a percentile
    bootstrap for the others (examples resampled whole, for macro-F1 too)."""
    rows = canonical_order(rows)
    if not rows:
        raise ValueError("empty input: need at least one example")
    return {
        name: (stats.binomial_ci(sum(bool(r[_BINARY[name]]) for r in rows), len(rows)) if name in _BINARY
               else stats.statistic_ci(row_statistic(name, rows, labels), n_resamples=resamples)).to_dict()
        for name in metrics
    }


def paired_test(metric: str, rows_a: Sequence[dict], rows_b: Sequence[dict], labels=None, resamples: int = 5000):
    """System A vs B on the same examples (rows aligned): exact McNemar for right/wrong metrics,
    a paired bootstrap for everything else."""
    if metric in _BINARY:
        flag = _BINARY[metric]
        truth = [True] * len(rows_a)
        return stats.mcnemar(truth, [bool(r[flag]) for r in rows_a], [bool(r[flag]) for r in rows_b])
    return stats.paired_bootstrap_statistic(
        row_statistic(metric, rows_a, labels), row_statistic(metric, rows_b, labels), metric, n_resamples=resamples,
    )


def is_parsed(answer_type: str, row: dict) -> bool:
    """Whether a prediction row's output had the expected shape (rows written before `parsed` existed too)."""
    if "parsed" in row:
        return bool(row["parsed"])
    if answer_type == "entities":
        return bool(row.get("valid_json", True))
    return row.get("prediction") not in (None, "")


TRUNCATION_WARNING = 0.05  # share of generations cut off by the budget that earns a warning


def prediction_summary(answer: AnswerSpec, rows: Sequence[dict], protocol: str) -> dict:
    """How the predictions fall: parse failures and outputs cut off by the budget (generation), the predicted and
    gold label distributions (label tasks), and warnings when one label takes a share of predictions far above
    its share of gold answers."""
    n = len(rows)
    summary: dict = {"n": n, "warnings": []}
    if protocol == "generate":
        failures = sum(1 for r in rows if not is_parsed(answer.type, r))
        summary["parse_failures"] = failures
        if n and failures / n >= PARSE_FAILURE_WARNING:
            summary["warnings"].append(
                f"{failures} of {n} outputs ({failures / n:.0%}) did not parse as {PARSED_AS[answer.type]} and "
                "count as wrong: check the prompt asks for that format (llamalab data show), or raise "
                "--max-new-tokens if answers are cut off"
            )
        known = sum(1 for r in rows if "truncated" in r)  # rows whose backend said whether the budget ran out
        if known:
            cut = sum(1 for r in rows if r.get("truncated"))
            # a count only when every row says: rows from before it was kept (a resumed run, a cache) may be cut too
            summary["truncated"] = cut if known == n else None
            if cut / n >= TRUNCATION_WARNING:
                summary["warnings"].append(
                    f"{'' if known == n else 'at least '}{cut} of {n} outputs ({cut / n:.0%}) were cut off by "
                    "--max-new-tokens (the budget spent without an end token) and scored as they stand: raise "
                    "--max-new-tokens")
    if answer.type == "label":
        predicted = Counter(NO_ANSWER if r["prediction"] is None else r["prediction"] for r in rows)
        gold = Counter(r["gold"] for r in rows)
        summary["predicted"] = dict(predicted.most_common())
        summary["gold"] = dict(gold.most_common())
        summary["warnings"].extend(_degenerate(predicted, gold, n, protocol, answer.normalize))
    return summary


def _degenerate(predicted: Counter, gold: Counter, n: int, protocol: str, normalize: str) -> list[str]:
    warnings = []
    others = ", ".join(how for how in NORMALIZATIONS if how != normalize)
    remedy = (f"compare answer.normalize {others} on the dev split (README: Label scoring)"
              if protocol == "loglikelihood" else "check the prompt lists the labels clearly")
    for label, count in predicted.most_common():
        share, gold_share = count / n, gold.get(label, 0) / n
        # The excess from counts, not from two rounded shares: exactly 25 points must count as 25 points.
        if label != NO_ANSWER and count >= 5 and (count - gold.get(label, 0)) / n >= DEGENERATE_EXCESS:
            warnings.append(
                f"label {label!r} takes {share:.0%} of predictions ({count} of {n}) but {gold_share:.0%} of gold "
                f"answers: the scorer may be degenerate; {remedy}"
            )
    return warnings


def normalization_accuracies(
    rows: Sequence[dict], labels: Sequence[str], n_chars: Mapping[str, int], unconditional: Mapping[str, float],
) -> dict[str, float]:
    """Accuracy the same log-likelihoods would give under each label normalisation (for choosing one on dev)."""
    result = {}
    for how in NORMALIZATIONS:
        correct = 0
        for r in rows:
            scores = {label: label_score(r["logprobs"][label], r["tokens"][label], n_chars[label],
                                         unconditional.get(label), how) for label in labels}
            correct += max(labels, key=lambda label: scores[label]) == r["gold"]
        result[how] = correct / len(rows) if rows else 0.0
    return result
