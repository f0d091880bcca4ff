from __future__ import annotations

import numpy as np
import pytest

from llamalab.evaluate.stats import (
    Interval,
    PairedTest,
    accuracy,
    bootstrap_ci,
    bootstrap_mean_ci,
    bootstrap_replicates,
    holm,
    macro_f1,
    mcnemar,
    paired_bootstrap,
    resample_indices,
    wilson_ci,
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


def test_accuracy_hand_computed() -> None:
    assert accuracy(["a", "b", "c", "a"], ["a", "b", "a", "b"]) == pytest.approx(0.5)
    assert accuracy([1, 2, 3], [1, 2, 3]) == 1.0
    assert accuracy([1], [0]) == 0.0


def test_macro_f1_hand_computed() -> None:
    gold = ["a", "a", "b", "b", "c"]
    pred = ["a", "b", "b", "b", "a"]
    # a: tp=1 fp=1 fn=1 -> 0.5; b: tp=2 fp=1 fn=0 -> 0.8; c: tp=0 -> 0
    assert macro_f1(gold, pred) == pytest.approx(1.3 / 3)
    # A vocabulary label that occurs nowhere in the sample is not averaged (scikit-learn's default).
    assert macro_f1(gold, pred, labels=["a", "b", "c", "d"]) == pytest.approx(1.3 / 3)
    # A label subset: "c" is not a class, but predicting "a" for it is still a false positive for "a".
    assert macro_f1(gold, pred, labels=["a", "b"]) == pytest.approx(1.3 / 2)


def test_macro_f1_counts_spurious_predicted_label_as_class() -> None:
    # a: tp=1 fn=1 -> 2/3; b: 1; z (predicted only): tp=0 -> 0
    assert macro_f1(["a", "a", "b"], ["a", "z", "b"]) == pytest.approx((2 / 3 + 1) / 3)


def test_resample_indices_deterministic() -> None:
    idx = resample_indices(50, 7, seed=3)
    assert idx.shape == (7, 50)
    assert idx.min() >= 0
    assert idx.max() < 50
    np.testing.assert_array_equal(idx, resample_indices(50, 7, seed=3))
    assert not np.array_equal(idx, resample_indices(50, 7, seed=4))


@pytest.mark.parametrize("labels", [None, [0, 1, 2, 3, 4, 5]])
def test_vectorised_macro_f1_matches_loop(labels: list | None) -> None:
    rng = np.random.default_rng(11)
    n = 40
    # Class 4 is rare so that some resamples lose it from gold, predictions, or both.
    gold = rng.choice(5, size=n, p=[0.4, 0.3, 0.2, 0.07, 0.03]).tolist()
    pred = [g if rng.random() < 0.6 else int(rng.integers(0, 5)) for g in gold]
    n_resamples, seed = 30, 5
    fast = bootstrap_replicates(gold, pred, "macro_f1", labels=labels, n_resamples=n_resamples, seed=seed)
    # Each resample is scored by the same rule as the sample: the classes occurring in it.
    slow = [
        _reference_macro_f1([gold[i] for i in row], [pred[i] for i in row], labels)
        for row in resample_indices(n, n_resamples, seed)
    ]
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
    ci = bootstrap_ci(gold, pred, "macro_f1", labels=labels, n_resamples=n_resamples, seed=seed)
    assert ci.estimate == pytest.approx(_reference_macro_f1(gold, pred, labels))
    assert ci.low == pytest.approx(np.quantile(slow, 0.025))
    assert ci.high == pytest.approx(np.quantile(slow, 0.975))


def test_bootstrap_accuracy_ci_coverage() -> None:
    rng = np.random.default_rng(2024)
    true_p, n, trials = 0.7, 200, 200
    covered = 0
    for seed in range(trials):
        correct = rng.random(n) < true_p
        gold = [1] * n
        pred = correct.astype(int).tolist()
        ci = bootstrap_ci(gold, pred, "accuracy", n_resamples=1000, seed=seed)
        assert ci.low <= ci.estimate <= ci.high
        covered += ci.low <= true_p <= ci.high
    assert 0.91 <= covered / trials <= 0.99


def test_bootstrap_ci_fields_and_dict() -> None:
    ci = bootstrap_ci([0, 1, 1, 0], [0, 1, 0, 0], "accuracy", n_resamples=200, seed=7)
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
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap_ci([0], [0], "f2")


def test_bootstrap_mean_ci_matches_accuracy_bootstrap() -> None:
    gold = [0, 1, 2, 0, 1, 2, 0, 1]
    pred = [0, 1, 0, 0, 2, 2, 1, 1]
    scores = [float(g == p) for g, p in zip(gold, pred, strict=True)]
    by_mean = bootstrap_mean_ci(scores, n_resamples=500, seed=1)
    by_metric = bootstrap_ci(gold, pred, "accuracy", n_resamples=500, seed=1)
    assert (by_mean.estimate, by_mean.low, by_mean.high) == (
        by_metric.estimate,
        by_metric.low,
        by_metric.high,
    )
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_ci([0.5, float("nan")])


def test_wilson_known_value() -> None:
    ci = wilson_ci(7, 10)
    assert ci.estimate == pytest.approx(0.7)
    assert ci.low == pytest.approx(0.39678, abs=1e-5)
    assert ci.high == pytest.approx(0.89221, abs=1e-5)
    assert wilson_ci(0, 20).low == 0.0


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


def test_mcnemar_balanced_and_no_discordance() -> None:
    gold = [1] * 8
    assert mcnemar(gold, [1, 1, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1, 1]).p_value == pytest.approx(1.0)
    same = mcnemar(gold, [1, 0] * 4, [1, 0] * 4)
    assert same.p_value == 1.0
    assert same.delta == 0.0
    assert same.detail == {"b": 0, "c": 0}


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_paired_bootstrap_identical_predictions(metric: str) -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 100).tolist()
    pred = rng.integers(0, 3, 100).tolist()
    result = paired_bootstrap(gold, pred, list(pred), metric, n_resamples=500)
    assert result.delta == 0.0
    assert result.p_value == 1.0


def test_paired_bootstrap_clear_winner_and_null() -> None:
    rng = np.random.default_rng(1)
    n = 300
    gold = rng.integers(0, 4, n).tolist()

    def noisy(acc: float) -> list[int]:
        return [g if rng.random() < acc else (g + 1) % 4 for g in gold]

    good, bad = noisy(0.9), noisy(0.6)
    for metric in ("accuracy", "macro_f1"):
        result = paired_bootstrap(gold, good, bad, metric, n_resamples=2000, seed=0)
        assert result.p_value < 0.01
        assert result.delta > 0.2
        assert result.delta == pytest.approx(result.detail["metric_a"] - result.detail["metric_b"])
    assert paired_bootstrap(gold, good, bad, "macro_f1").detail["metric_a"] == pytest.approx(
        macro_f1(gold, good)
    )
    # Two equally good systems should usually not look significantly different.
    other = noisy(0.9)
    assert paired_bootstrap(gold, good, other, "accuracy", n_resamples=2000).p_value > 0.05


def test_paired_bootstrap_smallest_p_value_has_plus_one_correction() -> None:
    gold = [1] * 50
    result = paired_bootstrap(gold, [1] * 50, [0] * 50, "accuracy", n_resamples=99)
    assert result.delta == 1.0
    assert result.p_value == pytest.approx(1 / 100)
    assert result.to_dict()["detail"]["n_resamples"] == 99


def test_holm_known_example() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])


@pytest.mark.parametrize(
    "call",
    [
        lambda: accuracy([1, 2], [1]),
        lambda: macro_f1([1], [1, 2]),
        lambda: bootstrap_ci([1, 2, 3], [1, 2], "accuracy"),
        lambda: paired_bootstrap([1, 2], [1, 2], [1], "accuracy"),
        lambda: mcnemar([1, 2], [1], [1, 2]),
    ],
)
def test_length_mismatch_raises(call) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: accuracy([], []),
        lambda: macro_f1([], []),
        lambda: bootstrap_ci([], [], "macro_f1"),
        lambda: bootstrap_mean_ci([]),
        lambda: paired_bootstrap([], [], [], "accuracy"),
        lambda: mcnemar([], [], []),
    ],
)
def test_empty_input_raises(call) -> None:
    with pytest.raises(ValueError, match="empty"):
        call()


def test_macro_f1_matches_the_reference_on_random_samples() -> None:
    """Property: the vectorised estimate and every bootstrap replicate equal the per-class loop, with and without
    a label vocabulary, many or few labels, and predictions outside the vocabulary (unparsed answers)."""
    rng = np.random.default_rng(2026)
    for case in range(300):
        k = int(rng.choice([2, 3, 10, 77]))
        n = int(rng.integers(1, 40))
        gold = rng.integers(0, k, size=n).tolist()
        pred = [g if rng.random() < 0.5 else int(rng.integers(0, k + 2)) for g in gold]  # k, k+1: outside
        labels = list(range(k)) if case % 2 else None
        assert macro_f1(gold, pred, labels) == pytest.approx(_reference_macro_f1(gold, pred, labels), abs=1e-12)
        fast = bootstrap_replicates(gold, pred, "macro_f1", labels=labels, n_resamples=5, seed=case)
        slow = [_reference_macro_f1([gold[i] for i in row], [pred[i] for i in row], labels)
                for row in resample_indices(n, 5, case)]
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)
