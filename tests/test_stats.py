"""The statistics production uses, checked through the path eval, compare, the report and the site take: prediction
rows -> :func:`llamalab.evaluation.metrics.row_statistic` / :func:`metric_intervals` / :func:`paired_test` ->
:mod:`llamalab.evaluation.stats` (``statistic_ci``, ``paired_bootstrap_statistic``, ``mcnemar``, ``holm``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from llamalab.evaluation.metrics import NO_ANSWER, metric_intervals, paired_test, row_statistic
from llamalab.evaluation.stats import (
    Interval,
    PairedTest,
    holm,
    label_statistic,
    mcnemar,
    mean_statistic,
    paired_bootstrap_statistic,
    resample_indices,
    statistic_ci,
)


def _reference_macro_f1(gold: list, pred: list, labels: list | None = None) -> float:
    """Slow, independent per-class loop used to check the vectorised implementation.

    Classes: the labels (of `labels`, if given) occurring in gold or pred."""
    classes = sorted(c for c in set(gold) | set(pred) if labels is None or c in labels)
    scores = []
    for cls in classes:
        tp = sum(g == cls and p == cls for g, p in zip(gold, pred, strict=True))
        fp = sum(g != cls and p == cls for g, p in zip(gold, pred, strict=True))
        fn = sum(g == cls and p != cls for g, p in zip(gold, pred, strict=True))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)


def _label_rows(gold: list, pred: list) -> list[dict]:
    """Prediction rows as a label eval writes them (ids sort in row order, so canonical order keeps it)."""
    return [{"id": f"x{i:04d}", "gold": g, "prediction": p, "correct": p == g}
            for i, (g, p) in enumerate(zip(gold, pred, strict=True))]


def _generation_rows(rng: np.random.Generator, n: int, p_right: float, lam: np.ndarray) -> list[dict]:
    """Generation rows: a right/wrong flag, a zero-inflated ROUGE score and Poisson entity counts (tp, fp, fn)."""
    rows = []
    for i in range(n):
        tp, fp, fn = (int(c) for c in rng.poisson(lam))
        rouge = float(rng.beta(2.0, 5.0)) if rng.random() < 0.8 else 0.0
        rows.append({"id": f"x{i:04d}", "correct": bool(rng.random() < p_right), "rouge1": rouge,
                     "tp": tp, "fp": fp, "fn": fn})
    return rows


def _noisy_labels(rng: np.random.Generator, gold: list[str], labels: list[str], skill: float) -> list[str | None]:
    """Right with probability `skill`, else a random label or no answer at all (an unparsed output)."""
    return [g if rng.random() < skill else (labels[int(rng.integers(len(labels)))] if rng.random() < 0.7 else None)
            for g in gold]


# --- point estimates ----------------------------------------------------------------------------------------------


def test_accuracy_hand_computed() -> None:
    assert row_statistic("accuracy", _label_rows(["a", "b", "c", "a"], ["a", "b", "a", "b"])).estimate == 0.5
    assert row_statistic("accuracy", _label_rows([1, 2, 3], [1, 2, 3])).estimate == 1.0
    assert row_statistic("accuracy", _label_rows([1], [0])).estimate == 0.0
    # exact_match_strict reads its own flag, not `correct`.
    rows = [{"id": "a", "correct": True, "exact_strict": False}, {"id": "b", "correct": True, "exact_strict": True}]
    assert row_statistic("exact_match", rows).estimate == 1.0
    assert row_statistic("exact_match_strict", rows).estimate == 0.5


def test_macro_f1_hand_computed() -> None:
    rows = _label_rows(["a", "a", "b", "b", "c"], ["a", "b", "b", "b", "a"])
    # a: tp=1 fp=1 fn=1 -> 0.5; b: tp=2 fp=1 fn=0 -> 0.8; c: tp=0 -> 0
    assert row_statistic("macro_f1", rows).estimate == pytest.approx(1.3 / 3)
    # A vocabulary label that occurs nowhere in the sample is not averaged (scikit-learn's default).
    assert row_statistic("macro_f1", rows, ["a", "b", "c", "d"]).estimate == pytest.approx(1.3 / 3)
    # A label subset: "c" is not a class, but predicting "a" for it is still a false positive for "a".
    assert row_statistic("macro_f1", rows, ["a", "b"]).estimate == pytest.approx(1.3 / 2)


def test_macro_f1_counts_spurious_predicted_label_as_class() -> None:
    # a: tp=1 fn=1 -> 2/3; b: 1; z (predicted only): tp=0 -> 0
    assert row_statistic("macro_f1", _label_rows(["a", "a", "b"], ["a", "z", "b"])).estimate == \
        pytest.approx((2 / 3 + 1) / 3)


def test_macro_f1_unparsed_answer_is_an_error_but_not_a_class() -> None:
    rows = _label_rows(["a", "a", "b"], ["a", None, "b"])
    # With the task's labels, "no answer" is a false negative of "a" and nothing else: (2/3 + 1) / 2.
    assert row_statistic("macro_f1", rows, ["a", "b"]).estimate == pytest.approx((2 / 3 + 1) / 2)
    # Without a vocabulary every predicted value is a class, "no answer" included (F1 0).
    assert row_statistic("macro_f1", rows).estimate == pytest.approx((2 / 3 + 1) / 3)
    assert row_statistic("macro_f1", rows).estimate == pytest.approx(
        _reference_macro_f1(["a", "a", "b"], ["a", NO_ANSWER, "b"]))


def test_entity_statistics_hand_computed() -> None:
    rows = [{"id": "a", "tp": 1, "fp": 1, "fn": 1}, {"id": "b", "tp": 0, "fp": 0, "fn": 1},
            {"id": "c", "tp": 2, "fp": 1, "fn": 0}, {"id": "d", "tp": 0, "fp": 1, "fn": 0}]
    # Micro metrics pool the counts: tp 3, fp 3, fn 2 (not the mean of per-example scores).
    assert row_statistic("entity_precision", rows).estimate == pytest.approx(3 / 6)
    assert row_statistic("entity_recall", rows).estimate == pytest.approx(3 / 5)
    assert row_statistic("entity_f1", rows).estimate == pytest.approx(6 / 11)
    nothing = [{"id": "a", "tp": 0, "fp": 0, "fn": 0}]
    assert [row_statistic(m, nothing).estimate for m in ("entity_precision", "entity_recall", "entity_f1")] == \
        [0.0, 0.0, 0.0]  # undefined -> 0, never NaN
    with pytest.raises(ValueError, match="unknown metric"):
        row_statistic("f2", rows)


# --- resampling and intervals --------------------------------------------------------------------------------------


def test_resample_indices_deterministic() -> None:
    idx = resample_indices(50, 7, seed=3)
    assert idx.shape == (7, 50)
    assert idx.min() >= 0
    assert idx.max() < 50
    np.testing.assert_array_equal(idx, resample_indices(50, 7, seed=3))
    assert not np.array_equal(idx, resample_indices(50, 7, seed=4))


@pytest.mark.parametrize("labels", [None, [f"l{i}" for i in range(6)]])
def test_vectorised_macro_f1_matches_loop(labels: list | None) -> None:
    rng = np.random.default_rng(11)
    n = 40
    names = [f"l{i}" for i in range(5)]
    # Class 4 is rare so that some resamples lose it from gold, predictions, or both.
    gold = [names[i] for i in rng.choice(5, size=n, p=[0.4, 0.3, 0.2, 0.07, 0.03])]
    pred = [g if rng.random() < 0.6 else names[int(rng.integers(0, 5))] for g in gold]
    rows = _label_rows(gold, pred)
    n_resamples, seed = 30, 5
    stat = row_statistic("macro_f1", rows, labels)
    # Each resample is scored by the same rule as the sample: the classes occurring in it.
    slow = [
        _reference_macro_f1([gold[i] for i in row], [pred[i] for i in row], labels)
        for row in resample_indices(n, n_resamples, seed)
    ]
    np.testing.assert_allclose(stat(resample_indices(n, n_resamples, seed)), slow, rtol=0, atol=1e-12)
    ci = statistic_ci(stat, n_resamples=n_resamples, seed=seed)
    assert ci.estimate == pytest.approx(_reference_macro_f1(gold, pred, labels))
    assert ci.low == pytest.approx(np.quantile(slow, 0.025))
    assert ci.high == pytest.approx(np.quantile(slow, 0.975))


def test_metric_intervals_is_the_percentile_bootstrap_of_the_rows() -> None:
    """The interval eval reports for a mean score equals a naive percentile bootstrap of the per-example values,
    seed 0."""
    rng = np.random.default_rng(5)
    values = rng.random(60).round(3).tolist()
    rows = [{"id": f"x{i:04d}", "rouge1": v} for i, v in enumerate(values)]
    m = metric_intervals(["rouge1"], rows, resamples=400)["rouge1"]
    naive = np.asarray(values)[resample_indices(60, 400, 0)].mean(axis=1)
    assert m["estimate"] == pytest.approx(np.mean(values))
    assert (m["low"], m["high"]) == pytest.approx(tuple(np.quantile(naive, [0.025, 0.975])))
    assert m["method"] == "percentile bootstrap, 400 resamples, seed 0"


def test_interval_fields_and_dict() -> None:
    rows = _label_rows([0, 1, 1, 0], [0, 1, 0, 0])
    ci = statistic_ci(row_statistic("accuracy", rows), n_resamples=200, seed=7)
    assert isinstance(ci, Interval)
    assert ci.estimate == pytest.approx(0.75)
    assert ci.n == 4
    assert ci.method == "percentile bootstrap, 200 resamples, seed 7"
    assert ci.to_dict() == {
        "estimate": ci.estimate,
        "low": ci.low,
        "high": ci.high,
        "n": 4,
        "method": ci.method,
        "confidence": 0.95,
    }
    assert metric_intervals(["macro_f1"], rows, resamples=200)["macro_f1"] == \
        statistic_ci(row_statistic("macro_f1", rows), n_resamples=200, seed=0).to_dict()
    with pytest.raises(ValueError, match="confidence"):
        statistic_ci(row_statistic("accuracy", rows), confidence=1.0)


def test_interval_coverage_on_simulated_data() -> None:
    """Seeded simulation: 95% intervals of a proportion, a mean score and the micro entity metrics cover the
    population value in about 95% of samples (200 samples of 100 examples; ±3 standard errors)."""
    rng = np.random.default_rng(2024)
    lam = np.array([1.5, 0.5, 1.0])  # per-example mean tp, fp, fn
    truth = {
        "accuracy": 0.7,
        "rouge1": 0.8 * 2 / 7,  # zero with probability 0.2, else Beta(2, 5)
        "entity_precision": 1.5 / 2.0,
        "entity_recall": 1.5 / 2.5,
        "entity_f1": 2 * 1.5 / (2 * 1.5 + 0.5 + 1.0),
    }
    trials, covered = 200, dict.fromkeys(truth, 0)
    for trial in range(trials):
        intervals = metric_intervals(list(truth), _generation_rows(rng, 100, 0.7, lam), resamples=500)
        for name, m in intervals.items():
            assert m["low"] <= m["estimate"] <= m["high"], (name, trial, m)
            covered[name] += m["low"] <= truth[name] <= m["high"]
    rates = {name: c / trials for name, c in covered.items()}
    assert all(0.90 <= rate <= 0.99 for rate in rates.values()), rates


@pytest.mark.parametrize("metric", ["accuracy", "exact_match", "exact_match_strict"])
def test_right_wrong_intervals_are_scipys_exact_binomial_interval(metric: str) -> None:
    """Property: a right/wrong metric's interval is the Clopper-Pearson interval of its count (scipy's
    binomtest "exact"), all right and all wrong included, and holds its estimate."""
    rng = np.random.default_rng(17)
    flag = "exact_strict" if metric == "exact_match_strict" else "correct"
    for _ in range(200):
        n = int(rng.integers(1, 300))
        k = int(rng.choice([0, n, rng.integers(0, n + 1)]))
        rows = [{"id": f"x{i:04d}", flag: bool(c)} for i, c in enumerate(rng.permutation([1] * k + [0] * (n - k)))]
        m = metric_intervals([metric], rows)[metric]
        exact = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert m["estimate"] == k / n and m["n"] == n
        assert (m["low"], m["high"]) == pytest.approx((exact.low, exact.high), abs=1e-9)
        assert m["low"] <= k / n <= m["high"] and m["low"] < m["high"]
        assert m["method"] == "exact binomial (Clopper-Pearson)"


def test_right_wrong_intervals_cover_at_least_95_percent_for_every_proportion() -> None:
    """Property, computed exactly (no simulation): over every count k of n examples, the probability that the
    interval holds the true proportion p is at least 95%, for random n and p, near 0 and 1 too (a percentile
    bootstrap covered p = 0.98 with 50 examples two times in three: [1, 1] when all are right)."""
    from scipy.stats import binom

    from llamalab.evaluation.stats import binomial_ci

    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(1, 120))
        bounds = [binomial_ci(k, n) for k in range(n + 1)]
        for p in [*rng.random(5), 1 - 1 / (n + 1), 0.98, 0.02, 0.5]:
            covered = sum(binom.pmf(k, n, p) for k, ci in enumerate(bounds) if ci.low <= p <= ci.high)
            assert covered >= 0.95 - 1e-9, (n, p, covered)
    right = metric_intervals(["accuracy"], [{"id": f"x{i}", "correct": True} for i in range(20)])["accuracy"]
    assert right["high"] == 1.0 and right["low"] == pytest.approx(0.025 ** (1 / 20))  # not [1, 1]


# --- paired tests ---------------------------------------------------------------------------------------------------


def test_mcnemar_known_case() -> None:
    gold = [1] * 20
    # 10 only A right, 2 only B right, 5 both right, 3 both wrong
    pred_a = [1] * 10 + [0] * 2 + [1] * 5 + [0] * 3
    pred_b = [0] * 10 + [1] * 2 + [1] * 5 + [0] * 3
    result = mcnemar(gold, pred_a, pred_b)
    assert isinstance(result, PairedTest)
    assert result.detail == {"b": 10, "c": 2}
    # 2 * P(X <= 2 | Bin(12, 0.5)) = 2 * 79 / 4096
    assert result.p_value == pytest.approx(158 / 4096)
    assert result.p_value == pytest.approx(0.03857, abs=1e-5)
    assert result.delta == pytest.approx(15 / 20 - 7 / 20)
    assert result.n == 20
    # paired_test sends right/wrong metrics to McNemar on the rows' flags.
    rows_a = [{"id": f"x{i}", "correct": bool(p)} for i, p in enumerate(pred_a)]
    rows_b = [{"id": f"x{i}", "correct": bool(p)} for i, p in enumerate(pred_b)]
    assert paired_test("accuracy", rows_a, rows_b) == result


def test_mcnemar_balanced_and_no_discordance() -> None:
    gold = [1] * 8
    assert mcnemar(gold, [1, 1, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]).p_value == pytest.approx(1.0)
    same = mcnemar(gold, [1, 0] * 4, [1, 0] * 4)
    assert same.p_value == 1.0
    assert same.delta == 0.0
    assert same.detail == {"b": 0, "c": 0}


@pytest.mark.parametrize("metric", ["macro_f1", "rouge1", "entity_f1"])
def test_paired_bootstrap_identical_predictions(metric: str) -> None:
    rng = np.random.default_rng(0)
    labels = ["l0", "l1", "l2"]
    gold = [labels[i] for i in rng.integers(0, 3, 100)]
    rows = [{**row, **gen} for row, gen in zip(_label_rows(gold, _noisy_labels(rng, gold, labels, 0.5)),
                                              _generation_rows(rng, 100, 0.5, np.ones(3)), strict=True)]
    result = paired_test(metric, rows, [dict(r) for r in rows], labels, resamples=500)
    assert result.test == f"paired bootstrap ({metric})"
    assert result.delta == 0.0
    assert result.p_value == 1.0


def test_paired_tests_find_a_clear_winner() -> None:
    rng = np.random.default_rng(1)
    n = 300
    labels = ["l0", "l1", "l2", "l3"]
    gold = [labels[i] for i in rng.integers(0, 4, n)]
    good = _label_rows(gold, _noisy_labels(rng, gold, labels, 0.9))
    bad = _label_rows(gold, _noisy_labels(rng, gold, labels, 0.6))
    for metric in ("accuracy", "macro_f1"):
        result = paired_test(metric, good, bad, labels, resamples=2000)
        assert result.p_value < 0.01, metric
        assert result.delta > 0.2, metric
    boot = paired_test("macro_f1", good, bad, labels, resamples=2000)
    assert boot.delta == pytest.approx(boot.detail["metric_a"] - boot.detail["metric_b"])
    assert boot.detail["metric_a"] == pytest.approx(row_statistic("macro_f1", good, labels).estimate)
    assert boot.detail["metric_b"] == pytest.approx(row_statistic("macro_f1", bad, labels).estimate)


def test_paired_tests_type_one_error_and_power() -> None:
    """Seeded simulation: two equally good systems are called different at p < 0.05 in at most about 5% of
    samples (McNemar for accuracy, the paired bootstrap for ROUGE, entity F1 and macro-F1); a clearly better
    system is found in most samples."""
    rng = np.random.default_rng(7)
    labels = ["l0", "l1", "l2", "l3"]
    lam = np.array([1.5, 0.5, 1.0])
    trials, n = 150, 100
    null = dict.fromkeys(("accuracy", "rouge1", "entity_f1", "macro_f1"), 0)
    power = dict.fromkeys(null, 0)
    for _ in range(trials):
        gold = [labels[i] for i in rng.integers(0, 4, n)]
        a, b = _generation_rows(rng, n, 0.7, lam), _generation_rows(rng, n, 0.7, lam)
        a_labels, b_labels = (_label_rows(gold, _noisy_labels(rng, gold, labels, 0.7)) for _ in range(2))
        better = _generation_rows(rng, n, 0.9, np.array([2.5, 0.3, 0.3]))
        for row in better:
            row["rouge1"] = min(1.0, row["rouge1"] + 0.2)
        better_labels = _label_rows(gold, _noisy_labels(rng, gold, labels, 0.95))
        for metric in null:
            pair, stronger = ((a_labels, b_labels), better_labels) if metric == "macro_f1" else ((a, b), better)
            null[metric] += paired_test(metric, *pair, labels, resamples=300).p_value < 0.05
            power[metric] += paired_test(metric, stronger, pair[1], labels, resamples=300).p_value < 0.05
    assert all(count / trials <= 0.10 for count in null.values()), null
    assert all(count / trials >= 0.8 for count in power.values()), power


def test_paired_bootstrap_smallest_p_value_has_plus_one_correction() -> None:
    ones = [{"id": f"x{i}", "rouge1": 1.0} for i in range(50)]
    zeros = [{"id": f"x{i}", "rouge1": 0.0} for i in range(50)]
    result = paired_test("rouge1", ones, zeros, resamples=99)
    assert result.delta == 1.0
    assert result.p_value == pytest.approx(1 / 100)
    assert result.to_dict()["detail"]["n_resamples"] == 99


def test_holm_known_example() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


# --- bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: label_statistic([1, 2], [1], "macro_f1"),
        lambda: paired_test("accuracy", [{"correct": True}] * 2, [{"correct": True}]),
        lambda: paired_test("rouge1", [{"rouge1": 0.5}] * 2, [{"rouge1": 0.5}]),
        lambda: paired_bootstrap_statistic(row_statistic("entity_f1", [{"tp": 1, "fp": 0, "fn": 0}] * 3),
                                           row_statistic("entity_f1", [{"tp": 1, "fp": 0, "fn": 0}] * 2), "f1"),
        lambda: mcnemar([1, 2], [1], [1, 2]),
    ],
)
def test_length_mismatch_raises(call) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: label_statistic([], [], "macro_f1"),
        lambda: metric_intervals(["macro_f1"], [], ["a", "b"]),
        lambda: paired_test("accuracy", [], []),
        lambda: mcnemar([], [], []),
    ],
)
def test_empty_input_raises(call) -> None:
    with pytest.raises(ValueError, match="empty"):
        call()


def test_empty_mean_metric_raises_rather_than_nan() -> None:
    with pytest.raises(ValueError, match="empty"):
        metric_intervals(["accuracy", "rouge1"], [])


def test_macro_f1_matches_the_reference_on_random_samples() -> None:
    """Property: the vectorised estimate and every bootstrap replicate equal the per-class loop, with and without
    a label vocabulary, many or few labels, and predictions outside the vocabulary (unparsed answers)."""
    rng = np.random.default_rng(2026)
    for case in range(300):
        k = int(rng.choice([2, 3, 10, 77]))
        n = int(rng.integers(1, 40))
        gold = [f"l{i}" for i in rng.integers(0, k, size=n)]
        # l{k}: outside the vocabulary; None: no answer parsed
        pred = [g if rng.random() < 0.5 else rng.choice([f"l{int(rng.integers(0, k + 1))}", None]) for g in gold]
        labels = [f"l{i}" for i in range(k)] if case % 2 else None
        stat = row_statistic("macro_f1", _label_rows(gold, pred), labels)
        seen = [NO_ANSWER if p is None else p for p in pred]
        assert stat.estimate == pytest.approx(_reference_macro_f1(gold, seen, labels), abs=1e-12)
        slow = [_reference_macro_f1([gold[i] for i in row], [seen[i] for i in row], labels)
                for row in resample_indices(n, 5, case)]
        np.testing.assert_allclose(stat(resample_indices(n, 5, case)), slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_paired_bootstrap_counts_ties_as_integer_counting_does(seed: int) -> None:
    """Resampled accuracy differences fall on a grid of k/n and often tie the observed one: the p-value equals the
    one counted exactly in whole examples, whatever float rounding does to the means."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    a = (rng.random(n) < rng.uniform(0.3, 0.95)).astype(float)
    b = (rng.random(n) < rng.uniform(0.3, 0.95)).astype(float)
    result = paired_bootstrap_statistic(mean_statistic(a), mean_statistic(b), "accuracy", n_resamples=2000, seed=seed)
    idx = resample_indices(n, 2000, seed)
    counts = a[idx].sum(axis=1) - b[idx].sum(axis=1)  # whole numbers: exact
    observed = a.sum() - b.sum()
    exceed = int(np.count_nonzero(np.abs(counts - observed) >= abs(observed)))
    assert result.p_value == (exceed + 1) / 2001


def test_paired_bootstrap_tie_case_found_in_review() -> None:
    a = [1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1]
    b = [0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 0]
    result = paired_bootstrap_statistic(mean_statistic(a), mean_statistic(b), "accuracy")
    idx = resample_indices(24, 5000, 0)
    counts = np.asarray(a)[idx].sum(axis=1) - np.asarray(b)[idx].sum(axis=1)
    assert result.p_value == (np.count_nonzero(np.abs(counts - 5) >= 5) + 1) / 5001


def test_a_resample_where_precision_is_undefined_is_left_out_not_scored_zero() -> None:
    """A system that predicts entities rarely but always rightly: precision 1.0, and every resample where it is
    defined is 1.0, so the interval is [1, 1] (scoring the undefined ones 0 gave [0, 1]); the method says how
    many were left out, and the paired test leaves them out as well."""
    from llamalab.evaluation import stats as S

    rare = S.ratio_statistic([3, 3, 2] + [0] * 47, [0] * 50)
    interval = S.statistic_ci(rare, n_resamples=2000)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)
    left_out = int(interval.method.split(", ")[-1].split()[0])
    assert 0 < left_out < 2000 and interval.method.endswith("resamples where the metric is undefined left out")
    nothing = S.statistic_ci(S.ratio_statistic([0] * 10, [0] * 10), n_resamples=100)
    assert (nothing.estimate, nothing.low, nothing.high) == (0.0, 0.0, 0.0)  # never defined: 0, as sklearn's
    test = S.paired_bootstrap_statistic(rare, S.ratio_statistic([1] * 50, [1] * 50), "entity_precision",
                                        n_resamples=2000)
    assert test.delta == 0.5 and test.detail["undefined_resamples"] == left_out
    assert test.p_value == 1 / (2000 - left_out + 1)
