"""Property tests of the methods the scaling and quantization studies' captions state: on random study states
(sizes, seeds, comparators or systems and types, runs missing, metric accuracy or macro-F1, intervals recorded with
different methods or none), each test and interval method the caption names is the one that ran or that the records
show, and every one of them is named.

Records are made by hand (no model, no training), as in tests/test_studies.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from llamalab.evaluation import stats
from llamalab.evaluation.metrics import row_statistic
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord, read_predictions
from llamalab.studies.spec import load_study
from tests.conftest import write_experiment
from tests.records import eval_fields, train_fields
from tests.test_studies import write_study

LABELS = ["negative", "positive"]
# Recorded interval methods (None: an older record naming none) and the scheme a caption must name for each.
METHODS = {
    "exact binomial (Clopper-Pearson)": "exact binomial (Clopper-Pearson)",
    "percentile bootstrap, 200 resamples, seed 0": "percentile bootstrap",
    "percentile bootstrap, 5000 resamples, seed 2": "percentile bootstrap",
    "BCa bootstrap, 1000 resamples, seed 0": "BCa bootstrap",
    None: "method not recorded",
}
RECORDED = list(METHODS)


def _eval(runs_dir, rng: np.random.Generator, name: str, ids: list[str], p: float,
          method: str | None = "unset") -> RunRecord:
    """A finished eval of the sentiment task with random answers on `ids`, each right with probability `p`, and
    its intervals recorded with `method` (random by default; None: no method recorded)."""
    record = RunRecord.create(runs_dir, "eval", name, {"system": name}, **eval_fields(label=name, n=len(ids)))
    rows = []
    for i in ids:
        gold = LABELS[int(rng.integers(2))]
        ok = bool(rng.random() < p)
        rows.append({"id": i, "gold": gold, "prediction": gold if ok else LABELS[1 - LABELS.index(gold)],
                     "correct": ok})
    append_jsonl(record.folder / "predictions.jsonl", rows)
    if method == "unset":
        method = RECORDED[int(rng.integers(len(RECORDED)))]
    metrics = {}
    for metric in ("accuracy", "macro_f1"):
        estimate = float(row_statistic(metric, rows, LABELS).estimate)
        metrics[metric] = {"estimate": estimate, "low": max(0.0, estimate - 0.1), "high": min(1.0, estimate + 0.1),
                           "n": len(ids), **({"method": method} if method is not None else {})}
    record.update(status="finished", metrics=metrics)
    return record


def _note_schemes(note: str) -> list[str]:
    """The schemes an `interval_note` names ("95% CIs: A." or "95% CIs: A (metric); B (metric).")."""
    assert note.startswith("95% CIs: ") and note.endswith("."), note
    parts = note.removeprefix("95% CIs: ").removesuffix(".").split("; ")
    return [re.sub(r" \((accuracy|macro_f1)\b.*\)$", "", p) if len(parts) > 1 else p for p in parts]


def _scheme(method: str | None) -> str:
    return METHODS[method] if method in METHODS else str(method).split(",")[0]


STUDY = "kind: scaling\nexperiment: tiny\ngrid:\n  train_examples: [8, 16]\nseeds: [0, 1]\neval: {limit: 12}\n"


@pytest.mark.parametrize("seed", range(25))
def test_the_scaling_captions_band_test_and_comparator_intervals_are_the_ones_the_records_show(seed, lab):
    """The band named is the method of every curve point's interval; the comparator test named (paired bootstrap)
    is the test whose Δ and p the table shows (recomputed here); the comparators' CI methods named are exactly the
    schemes their evaluations recorded, each once."""
    from llamalab.publish.results import StudyBoard
    from llamalab.publish.tables import study_caption
    from llamalab.studies.run import CellState
    from llamalab.studies.scaling import scaling_result
    from llamalab.studies.spec import Cell

    write_experiment(lab, "tiny", "task: sentiment\nbase_model: tiny\nmax_steps: 2\n")
    study = load_study(lab, write_study(lab, "s", STUDY))
    rng = np.random.default_rng(seed)
    metric = str(rng.choice(["accuracy", "macro_f1"]))
    n = int(rng.integers(15, 50))
    ids = [f"x{i}" for i in range(n)]
    sizes = sorted(int(s) for s in rng.choice([10, 20, 40, 80, 160], size=int(rng.integers(1, 4)), replace=False))
    states = []
    for size in sizes:
        for s in range(int(rng.integers(1, 4))):
            record = _eval(lab.runs_dir, rng, f"c{size}-{s}", ids, min(0.95, 0.4 + size / 250))
            train = RunRecord.create(lab.runs_dir, "train", f"t{size}-{s}", {"n": size}, **train_fields())
            train.update(status="finished", data_used={"train_examples": size})
            states.append(CellState(Cell({"train_examples": size, "seed": s}, {}, f"{size}-{s}"), "finished", train,
                                    record))
    comparators = [(f"comparator {k}", _eval(lab.runs_dir, rng, f"cmp{k}", ids, float(rng.uniform(0.4, 0.9))))
                   for k in range(int(rng.integers(0, 4)))]
    resamples = 200
    result = scaling_result(states, comparators, metric, LABELS, resamples=resamples)
    board = StudyBoard(study, states, result)
    caption = study_caption(board)
    context = (seed, metric, caption)

    # the band: the curve's intervals' method, as each point records it
    assert "95% percentile-bootstrap band over examples and seeds" in caption, context
    assert all(p.interval.method.startswith("percentile bootstrap over examples and ") for p in result.curve), \
        context
    # the comparator test named is the one behind the table's Δ and p
    assert "(paired bootstrap)" in caption and "McNemar" not in caption, context
    predictions = {r.id: read_predictions(r.folder) for _, r in comparators}
    shared = sorted(ids)  # the examples all saw, in the order the study resamples them
    for c, (label, record) in enumerate(comparators):
        for i, point in enumerate(result.curve):
            rows = [read_predictions(state.eval.folder) for state in states if state.eval.id in point.runs]
            seeds = [row_statistic(metric, [r[x] for x in shared], LABELS) for r in rows]
            mean = stats.RowStatistic(lambda idx, seeds=seeds: np.mean([s(idx) for s in seeds], axis=0), n,
                                      float(np.mean([s.estimate for s in seeds])))
            other = row_statistic(metric, [predictions[record.id][x] for x in shared], LABELS)
            test = stats.paired_bootstrap_statistic(mean, other, metric, n_resamples=resamples)
            assert test.test.startswith("paired bootstrap"), context
            shown = result.crossovers[c].tests[i]
            assert shown.delta == pytest.approx(test.delta) and shown.p_value == pytest.approx(test.p_value), \
                (label, point.size, context)
    # the comparators' intervals: the schemes their records show, each once, no more, no less
    if not comparators:
        assert "No comparator has finished evaluations." in caption and "CIs" not in caption, context
        return
    note = re.search(r"\((95% CIs: .*)\)\.$", caption)
    assert note, context
    named = _note_schemes(note[1] + ".")
    recorded = {_scheme(record.run.metrics[metric].method) for _, record in comparators}
    assert len(named) == len(set(named)) and set(named) == recorded, (recorded, context)
    for label, _ in comparators:
        assert label in caption, context


QUANT = "kind: quantization\nquantize: {systems: [a, b, c], types: [f16, q8_0, q4_0]}\neval: {task: TASK}\n"


@pytest.mark.parametrize("seed", range(25))
def test_the_quantization_captions_test_and_ci_methods_are_the_ones_the_records_show(seed, lab):
    """The tests named are exactly those run against each system's f16 evaluation (exact McNemar for accuracy, a
    paired bootstrap for macro-F1: recomputed here), "no test yet" where none ran; the family counted is the tests
    that ran; the CI methods named are exactly the schemes the rows' evaluations recorded, each once."""
    from llamalab.publish.results import QuantBoard
    from llamalab.publish.tables import quant_caption
    from llamalab.studies.quantization import quant_rows

    rng = np.random.default_rng(seed)
    metric = str(rng.choice(["accuracy", "macro_f1"]))
    task = "sentiment"
    if metric == "macro_f1":  # a copy of the task whose first metric (the one the study tests) is macro-F1
        text = (lab.root / "tasks" / "sentiment.yaml").read_text().replace("name: sentiment", "name: sentiment-f1")
        (lab.root / "tasks" / "sentiment-f1.yaml").write_text(text.replace("metrics: [accuracy, macro_f1]",
                                                                           "metrics: [macro_f1, accuracy]"))
        task = "sentiment-f1"
    study = load_study(lab, write_study(lab, "q", QUANT.replace("TASK", task)))
    records = {}
    for system in ("a", "b", "c"):
        n = int(rng.integers(10, 40))
        for quant in ("f16", "q8_0", "q4_0"):
            if rng.random() < 0.25:  # not evaluated (yet)
                continue
            ids = [f"x{i}" for i in rng.permutation(n)[: n - int(rng.integers(0, 3))]]
            records[(system, quant)] = _eval(lab.runs_dir, rng, f"{system}-{quant}", ids,
                                             float(rng.uniform(0.4, 0.9)))
    rows = quant_rows(lab, study, records)
    caption = quant_caption(QuantBoard(study, rows, metric)) if rows else ""
    context = (seed, metric, caption)

    expected_tests = []
    for (system, quant), record in records.items():
        reference = records.get((system, "f16"))
        if quant == "f16" or reference is None:
            continue
        mine, theirs = read_predictions(record.folder), read_predictions(reference.folder)
        shared = sorted(mine.keys() & theirs.keys())
        if not shared:
            continue
        if metric == "accuracy":
            test = stats.mcnemar([True] * len(shared), [mine[i]["correct"] for i in shared],
                                 [theirs[i]["correct"] for i in shared])
        else:
            test = stats.paired_bootstrap_statistic(row_statistic(metric, [mine[i] for i in shared], LABELS),
                                                    row_statistic(metric, [theirs[i] for i in shared], LABELS),
                                                    metric, n_resamples=200)
        expected_tests.append(test.test)
    if not rows:
        assert not records
        return
    named = re.search(r"on the examples both saw \((.+?); Holm-corrected for the (\d+) such tests? in the table",
                      caption)
    assert named, context
    if expected_tests:
        assert named[1].split(", ") == sorted(set(expected_tests)), (expected_tests, context)
    else:
        assert named[1] == "no test yet", context
    assert int(named[2]) == len(expected_tests), (expected_tests, context)
    note = re.search(r"(95% CIs: .*\.)$", caption)
    assert note, context
    schemes = _note_schemes(note[1])
    recorded = {_scheme(record.run.metrics[metric].method) for record in records.values()}
    assert len(schemes) == len(set(schemes)) and set(schemes) == recorded, (recorded, context)
