"""Honest statistics for comparing ML systems evaluated on the same examples.

Every resampling method draws its rows from :func:`resample_indices`, so results are reproducible from the
seed and paired tests resample both systems on exactly the same examples. Point estimates and bootstrap
replicates go through the same vectorised code path, so they can never disagree about what the metric is.

Macro-F1 averages per-class F1 over the classes that occur in the examples scored, gold or predicted
(scikit-learn's and lm-evaluation-harness's definition), and a resample is scored by that same rule. Scoring
every label of a fixed set instead counts the classes a resample happens to miss as 0: with 151 labels and 50
examples the replicates then sat below the estimate, which fell outside its own interval (0.074 [0.030,
0.069]). Resampling within each gold label instead would keep the class set fixed but give a class with one
example no variance at all (a zero-width interval when every class is a singleton).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
from scipy import stats

METRICS: tuple[str, ...] = ("accuracy", "macro_f1")
# The significance level every test here is read at (after Holm's correction where there are several).
ALPHA = 0.05

# Caps the elements of per-chunk temporaries: materialising every confusion matrix of a
# 5000-resample x 77-class bootstrap at once would cost gigabytes for no speed gain.
_CHUNK_ELEMENTS = 1 << 24

RowFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class RowStatistic:
    """A metric over n examples as a function of an index matrix: one value per row (per resample)."""

    rows: RowFunction
    n: int
    point: float | None = None  # the estimate, where it is not the identity resample's value (a mean over seeds)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        return self.rows(idx)

    @property
    def estimate(self) -> float:
        """The metric on the examples themselves (the identity resample); 0 where it is undefined (a precision
        with nothing predicted), as scikit-learn's zero_division=0 has it."""
        if self.point is not None:
            return self.point
        return float(np.nan_to_num(self.rows(np.arange(self.n)[None, :])[0], nan=0.0))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON reports."""
        return asdict(self)


@dataclass(frozen=True)
class PairedTest:
    """Result of a paired significance test of system A against system B."""

    test: str
    delta: float
    p_value: float
    n: int
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON reports (``detail`` is copied)."""
        return asdict(self)


def _check_lengths(*seqs: Sequence[Any]) -> int:
    lengths = [len(s) for s in seqs]
    if len(set(lengths)) != 1:
        raise ValueError(f"length mismatch {lengths}: all sequences must cover the same examples")
    if lengths[0] == 0:
        raise ValueError("empty input: need at least one example")
    return lengths[0]


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _correct(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> np.ndarray:
    return np.fromiter((g == p for g, p in zip(gold, pred, strict=True)), dtype=bool, count=len(gold))


def _encode(
    gold: Sequence[Hashable], preds: Sequence[Sequence[Hashable]], labels: Sequence[Hashable] | None
) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Map labels to class indices 0..K-1; anything outside the label set maps to K."""
    if labels is None:
        # sklearn's convention: every label seen in gold or in any prediction is a class.
        classes = list(dict.fromkeys(itertools.chain(gold, *preds)))
    else:
        classes = list(labels)
        if not classes:
            raise ValueError("labels must not be empty")
        if len(set(classes)) != len(classes):
            raise ValueError("labels must not contain duplicates")
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)

    def encode(seq: Sequence[Hashable]) -> np.ndarray:
        return np.fromiter((index.get(v, k) for v in seq), dtype=np.int64, count=len(seq))

    return encode(gold), [encode(p) for p in preds], k


def _chunks(n_rows: int, row_cost: int) -> Iterator[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(row_cost, 1))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _mean_rows(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    out = np.empty(len(idx))
    for rows in _chunks(len(idx), idx.shape[1]):
        out[rows] = values[idx[rows]].mean(axis=1)
    return out


def _macro_f1_rows(gold_idx: np.ndarray, pred_idx: np.ndarray, k: int, idx: np.ndarray) -> np.ndarray:
    k1 = k + 1  # slot k collects labels outside the label set: they still count as fp / fn
    hit = (gold_idx == pred_idx).astype(float)
    out = np.empty(len(idx))
    for rows in _chunks(len(idx), max(idx.shape[1], k1)):
        block = idx[rows]
        n_block = len(block)
        offsets = np.arange(n_block)[:, None] * k1
        slots = {name: (offsets + values[block]).ravel() for name, values in (("gold", gold_idx), ("pred", pred_idx))}

        def per_class(slot: np.ndarray, weights: np.ndarray | None = None, n_block: int = n_block) -> np.ndarray:
            return np.bincount(slot, weights=weights, minlength=n_block * k1).reshape(n_block, k1)[:, :k]

        tp = per_class(slots["gold"], hit[block].ravel())
        # gold count + predicted count = 2tp + fp + fn, the F1 denominator
        denom = per_class(slots["gold"]) + per_class(slots["pred"])
        f1 = np.divide(2.0 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
        # A class is averaged where it occurs in this (re)sample; values outside the label set are errors only.
        present = np.count_nonzero(denom, axis=1)
        out[rows] = np.divide(f1.sum(axis=1), present, out=np.zeros(n_block), where=present > 0)
    return out


def _statistics(
    gold: Sequence[Hashable],
    preds: Sequence[Sequence[Hashable]],
    metric: str,
    labels: Sequence[Hashable] | None,
) -> list[RowStatistic]:
    """One row statistic per prediction sequence (all on the same examples)."""
    n = len(gold)
    if metric == "accuracy":
        return [RowStatistic(partial(_mean_rows, _correct(gold, p).astype(float)), n) for p in preds]
    if metric == "macro_f1":
        gold_idx, pred_idxs, k = _encode(gold, preds, labels)
        return [RowStatistic(partial(_macro_f1_rows, gold_idx, p, k), n) for p in pred_idxs]
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap index matrix of shape (n_resamples, n), deterministic in ``seed``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def _percentile_interval(stat: RowStatistic, n_resamples: int, confidence: float, seed: int) -> Interval:
    """A resample on which the metric is undefined (NaN: e.g. a precision over a resample with nothing
    predicted) is left out, and the method says how many were: scoring it 0 would drag the interval down to 0
    for a system that predicts rarely but always rightly."""
    _check_confidence(confidence)
    estimate = stat.estimate
    low, high, left_out = percentiles(stat(resample_indices(stat.n, n_resamples, seed)), estimate, confidence)
    method = f"percentile bootstrap, {n_resamples} resamples, seed {seed}{left_out}"
    return Interval(estimate, low, high, stat.n, method, confidence)


def percentiles(replicates: np.ndarray, estimate: float, confidence: float = 0.95) -> tuple[float, float, str]:
    """The percentile interval of bootstrap replicates, leaving out the undefined (NaN) ones, and what the
    method string adds about them ("" when none were); [estimate, estimate] when none is defined.

    A biased statistic can put its estimate outside that range (macro-F1 with one frequent class wrong and many
    rare ones right: resamples that miss a rare class score lower, so nearly all sit below the estimate). No
    interval may exclude its own estimate: the bound on that side is moved to the estimate, and the method says
    so."""
    defined = replicates[~np.isnan(replicates)]
    alpha = 1.0 - confidence
    low, high = np.quantile(defined, [alpha / 2, 1 - alpha / 2]) if defined.size else (estimate, estimate)
    undefined = replicates.size - defined.size
    note = f", {undefined} resamples where the metric is undefined left out" if undefined else ""
    if not low <= estimate <= high:
        note += (f", the {'lower' if estimate < low else 'upper'} bound moved to the estimate, which the resamples' "
                 f"{confidence:.0%} range left out (a biased statistic)")
        low, high = min(low, estimate), max(high, estimate)
    return float(low), float(high), note


def paired_bootstrap_statistic(
    stat_a: RowStatistic, stat_b: RowStatistic, metric: str, *, n_resamples: int = 5000, seed: int = 0
) -> PairedTest:
    """Paired bootstrap test for any metric given as row statistics over the same examples."""
    if stat_a.n != stat_b.n:
        raise ValueError(f"length mismatch [{stat_a.n}, {stat_b.n}]: both systems must cover the same examples")
    metric_a, metric_b = stat_a.estimate, stat_b.estimate
    delta = metric_a - metric_b
    idx = resample_indices(stat_a.n, n_resamples, seed)
    deltas = stat_a(idx) - stat_b(idx)
    deltas = deltas[~np.isnan(deltas)]  # resamples where either metric is undefined say nothing about Δ
    undefined = n_resamples - len(deltas)
    # Shift method: centring the bootstrap deltas on the observed delta approximates the null
    # distribution; the +1 correction keeps p > 0, as a finite number of resamples cannot prove p = 0.
    # Resampled deltas of accuracy-like metrics fall on a grid of k/n, so many tie the observed one exactly; float
    # rounding must not decide whether a tie counts (a metric's grid is far coarser than this tolerance).
    tolerance = 1e-9 * max(1.0, abs(delta))
    exceed = int(np.count_nonzero(np.abs(deltas - delta) >= abs(delta) - tolerance))
    p_value = (exceed + 1) / (len(deltas) + 1)
    detail = {
        "metric": metric,
        "metric_a": metric_a,
        "metric_b": metric_b,
        "n_resamples": n_resamples,
        "seed": seed,
        **({"undefined_resamples": undefined} if undefined else {}),
    }
    return PairedTest(f"paired bootstrap ({metric})", delta, p_value, stat_a.n, detail)


def statistic_ci(stat: RowStatistic, *, n_resamples: int = 5000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap CI for any metric given as a row statistic."""
    return _percentile_interval(stat, n_resamples, confidence, seed)


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The exact (Clopper-Pearson) interval of a proportion: its coverage is at least `confidence` for every true
    proportion. A percentile bootstrap of right/wrong flags is [1, 1] when every example is right and covered a
    true 0.98 two times in three with 50 examples (one or two errors); this one is never zero-width."""
    _check_confidence(confidence)
    if not 0 <= successes <= n or n < 1:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, n - successes + 1))
    high = 1.0 if successes == n else float(stats.beta.ppf(1 - alpha / 2, successes + 1, n - successes))
    return Interval(successes / n, low, high, n, "exact binomial (Clopper-Pearson)", confidence)


def interval_scheme(method: str | None) -> str:
    """How an interval was computed, as its recorded method names it without the details after the first comma:
    "exact binomial (Clopper-Pearson)", "percentile bootstrap" (what captions and methods sentences state)."""
    return str(method or "method not recorded").split(",")[0]


def mean_statistic(values: Sequence[float]) -> RowStatistic:
    """Row statistic: the mean of per-example values (accuracy, exact match, ROUGE)."""
    arr = np.asarray(values, dtype=float)
    return RowStatistic(partial(_mean_rows, arr), len(arr))


def label_statistic(
    gold: Sequence[Hashable], pred: Sequence[Hashable], metric: str, labels: Sequence[Hashable] | None = None
) -> RowStatistic:
    """Row statistic for a label metric ("accuracy" or "macro_f1") of one system's predictions."""
    _check_lengths(gold, pred)
    (stat,) = _statistics(gold, [pred], metric, labels)
    return stat


def ratio_statistic(hits: Sequence[float], misses: Sequence[float]) -> RowStatistic:
    """Row statistic: sum(hits) / (sum(hits) + sum(misses)), e.g. micro precision = tp / (tp + fp); NaN on a
    resample where both sums are 0 (undefined: nothing predicted, for a precision)."""
    hits_arr, misses_arr = np.asarray(hits, dtype=float), np.asarray(misses, dtype=float)

    def rows(idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for chunk in _chunks(len(idx), idx.shape[1] * 2):
            h, m = hits_arr[idx[chunk]].sum(axis=1), misses_arr[idx[chunk]].sum(axis=1)
            out[chunk] = np.divide(h, h + m, out=np.full(len(h), np.nan), where=(h + m) > 0)
        return out

    return RowStatistic(rows, len(hits_arr))


def micro_f1_statistic(tp: Sequence[int], fp: Sequence[int], fn: Sequence[int]) -> RowStatistic:
    """Row statistic: micro F1 from per-example true/false positive and false negative counts; NaN on a resample
    with no entity at all, gold or predicted (undefined)."""
    counts = np.stack([np.asarray(c, dtype=float) for c in (tp, fp, fn)])

    def rows(idx: np.ndarray) -> np.ndarray:
        out = np.empty(len(idx))
        for chunk in _chunks(len(idx), idx.shape[1] * 3):
            tp_, fp_, fn_ = (counts[k][idx[chunk]].sum(axis=1) for k in range(3))
            denom = 2 * tp_ + fp_ + fn_
            out[chunk] = np.divide(2 * tp_, denom, out=np.full(len(tp_), np.nan), where=denom > 0)
        return out

    return RowStatistic(rows, counts.shape[1])


def mcnemar(gold: Sequence[Hashable], pred_a: Sequence[Hashable], pred_b: Sequence[Hashable]) -> PairedTest:
    """Exact McNemar test: two-sided binomial test on the discordant pairs.

    ``b`` counts examples only A gets right, ``c`` those only B gets right; delta = acc(A) - acc(B).
    """
    n = _check_lengths(gold, pred_a, pred_b)
    correct_a, correct_b = _correct(gold, pred_a), _correct(gold, pred_b)
    b = int(np.count_nonzero(correct_a & ~correct_b))
    c = int(np.count_nonzero(~correct_a & correct_b))
    p_value = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return PairedTest("exact McNemar", (b - c) / n, p_value, n, {"b": b, "c": c})


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in input order."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if np.any(np.isnan(p) | (p < 0) | (p > 1)):
        raise ValueError("p_values must lie in [0, 1]")
    m = len(p)
    order = np.argsort(p, kind="stable")
    # The running maximum keeps adjusted p-values monotone in the raw ones, as step-down Holm requires.
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()
