from __future__ import annotations

import json
import re

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.config import LlamalabError
from llamalab.evaluation.compare import compare
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord
from llamalab.tasks.task import load_task
from tests.records import eval_fields, sentiment_eval


def fake_eval(lab, system: str, correct: list[bool], fmt: str = "plain", status: str = "finished") -> RunRecord:
    """An eval run folder as `llamalab eval` writes it, with chosen per-example correctness."""
    record = RunRecord.create(lab.runs_dir, "eval", system, {"system": system},
                              **eval_fields(label=system, n=len(correct), fmt=fmt))
    rows = []
    for i, ok in enumerate(correct):
        gold = "positive" if i % 2 else "negative"
        other = "negative" if gold == "positive" else "positive"
        rows.append({"id": f"x:{i}", "prompt": f"Review: x{i}\nSentiment:", "gold": gold,
                     "prediction": gold if ok else other, "correct": bool(ok),
                     "scores": {"negative": 0.0, "positive": 0.0}})
    append_jsonl(record.folder / "predictions.jsonl", rows)
    record.update(status=status)
    return record


def test_ranks_systems_and_tests_against_the_best(lab):
    rng = np.random.default_rng(0)
    strong_correct = list(rng.random(400) < 0.9)
    twin_correct = list(strong_correct)
    wrong = [i for i, ok in enumerate(strong_correct) if not ok]
    right = [i for i, ok in enumerate(strong_correct) if ok]
    for i in right[:6]:
        twin_correct[i] = False
    for i in wrong[:4]:
        twin_correct[i] = True  # 6 vs 4 discordant pairs: indistinguishable from the strong system
    strong = fake_eval(lab, "strong", strong_correct)
    weak = fake_eval(lab, "weak", list(rng.random(400) < 0.6))
    twin = fake_eval(lab, "twin", twin_correct)
    fake_eval(lab, "crashed", [True] * 400, status="failed")  # unfinished runs are never compared

    result = compare(lab, "sentiment")
    names = [row.system for row in result.systems]
    assert set(names) == {"strong [plain]", "weak [plain]", "twin [plain]"}
    assert names[-1] == "weak [plain]"
    best, *others = result.systems
    assert best.vs_reference is None
    weak_row = next(r for r in others if r.run == weak.id)
    assert weak_row.vs_reference.test == "exact McNemar"
    assert weak_row.vs_reference.p_value < 1e-6
    assert weak_row.vs_reference.p_holm >= weak_row.vs_reference.p_value
    assert weak_row.vs_reference.delta < -0.2
    assert result.systems[0].run == strong.id
    twin_row = next(r for r in result.systems if r.run == twin.id)
    assert twin_row.vs_reference.p_value > 0.5
    assert twin_row.vs_reference.delta == pytest.approx(-2 / 400)
    acc = weak_row.metrics["accuracy"]
    assert acc.low < acc.estimate < acc.high and acc.n == 400

    f1 = compare(lab, "sentiment", metric="macro_f1")
    assert next(r for r in f1.systems if r.run == weak.id).vs_reference.test.startswith("paired bootstrap")


def test_significance_against_a_chosen_reference(lab):
    rng = np.random.default_rng(1)
    strong = fake_eval(lab, "strong", list(rng.random(300) < 0.9))
    base = fake_eval(lab, "base", list(rng.random(300) < 0.6))
    fake_eval(lab, "mid", list(rng.random(300) < 0.75))

    result = compare(lab, "sentiment", reference=base.id)
    assert result.reference == "base [plain]" and not result.reference_is_best
    rows = {r.system: r for r in result.systems}
    assert rows["base [plain]"].vs_reference is None
    assert rows["strong [plain]"].vs_reference.delta > 0.2  # other minus reference: better is positive
    assert rows["strong [plain]"].vs_reference.p_value < 1e-6
    assert [r.system for r in result.systems][0] == "strong [plain]"  # ranking is unchanged
    assert compare(lab, "sentiment", reference="base").reference == "base [plain]"  # a label prefix works
    default = compare(lab, "sentiment")
    assert default.reference == "strong [plain]" and default.reference_is_best
    assert default.systems[0].run == strong.id
    with pytest.raises(LlamalabError, match="matches no evaluated system.*strong \\[plain\\]"):
        compare(lab, "sentiment", reference="nothing-like-this")


def test_compare_cli_json_and_errors(lab):
    fake_eval(lab, "a", [True, False] * 50)
    fake_eval(lab, "b", [True] * 100)
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "--task", "sentiment", "--json", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["best"] == "b [plain]"
    assert [s["n"] for s in payload["systems"]] == [100, 100]

    table = runner.invoke(app, ["compare", "--task", "sentiment", "--lab", str(lab.root)])
    assert "exact McNemar" in table.stdout and "best" in table.stdout and "0.500 [" in table.stdout
    assert "b [plain]" in table.stdout  # the prompt format in a label is text, not rich markup

    with pytest.raises(Exception, match="no finished evaluations of task 'intent'"):
        compare(lab, "intent")


def test_compare_shows_each_runs_own_recorded_interval(lab):
    from llamalab.evaluation.metrics import metric_intervals
    from llamalab.runs.files import read_jsonl

    run = fake_eval(lab, "a", [True, False, True, True] * 25)
    rows = read_jsonl(run.folder / "predictions.jsonl")
    recorded = metric_intervals(["accuracy", "macro_f1"], rows, ["negative", "positive"])
    run.update(metrics=recorded)
    # Prediction rows in another order (as a resumed eval appends them) change nothing: one number per run.
    assert metric_intervals(["accuracy", "macro_f1"], rows[::-1], ["negative", "positive"]) == recorded
    [row] = compare(lab, "sentiment").systems
    assert {name: m.model_dump() for name, m in row.metrics.items()} == recorded


def test_a_comparison_on_a_paired_subset_says_so(lab):
    from llamalab.evaluation.compare import comparison_table, format_delta

    fake_eval(lab, "full", [True] * 80 + [False] * 20)
    fake_eval(lab, "subset", [True, False] * 25)  # examples x:0 .. x:49 only
    result = compare(lab, "sentiment")
    subset = next(r for r in result.systems if r.system == "subset [plain]")
    assert subset.n == 50 and subset.vs_reference.n == 50 and subset.vs_reference.paired_subset
    assert format_delta(subset.vs_reference).endswith("(n=50)")
    console = Console(width=250, record=True)
    console.print(comparison_table(result))
    assert "(n=50)" in console.export_text()


def test_compare_reports_prediction_distributions_and_warnings(lab):
    from llamalab.evaluation.compare import comparison_warnings

    fake_eval(lab, "always-positive", [i % 2 == 1 for i in range(60)])  # right exactly on the positives
    result = compare(lab, "sentiment")
    [row] = result.systems
    assert row.predictions.predicted == {"positive": 60}
    assert any("'positive' takes 100% of predictions" in w for w in comparison_warnings(result))


def test_interval_note_states_the_recorded_methods():
    from llamalab.evaluation.compare import interval_note
    from llamalab.runs.schema import Interval

    plain = Interval(estimate=0.5, low=0.4, high=0.6, n=10, method="percentile bootstrap, 5000 resamples, seed 0")
    other = plain.model_copy(update={"method": "BCa bootstrap, 2000 resamples, seed 1"})
    assert interval_note([{"accuracy": plain, "macro_f1": plain}]) == "95% CIs: percentile bootstrap."
    assert interval_note([{"accuracy": plain}, {"accuracy": other, "macro_f1": other}]) == (
        "95% CIs: percentile bootstrap (accuracy); BCa bootstrap (accuracy, macro_f1).")
    unrecorded = plain.model_copy(update={"method": None})
    assert interval_note([{"accuracy": unrecorded}]) == "95% CIs: method not recorded."
    assert interval_note([{"accuracy": plain}, {"accuracy": other, "macro_f1": other}], ["a", "b"]) == (
        "95% CIs: percentile bootstrap (accuracy of a); BCa bootstrap (accuracy of b, macro_f1).")
    assert interval_note([{"accuracy": plain}, {"accuracy": other}, {"accuracy": other}], ["a", "b", "c"]) == (
        "95% CIs: percentile bootstrap (accuracy of a); BCa bootstrap (accuracy of b and c).")


@pytest.mark.parametrize("seed", range(40))
def test_the_interval_note_gives_every_row_the_method_its_record_shows(seed):
    """Random rows, metrics and recorded methods (records of several llamalab versions side by side): the note
    names each method once, and where one metric's intervals were computed in several ways, it names under each
    method exactly the rows whose record says so."""
    from llamalab.evaluation.compare import interval_note
    from llamalab.evaluation.stats import interval_scheme
    from llamalab.runs.schema import Interval

    rng = np.random.default_rng(seed)
    methods = ["exact binomial (Clopper-Pearson), two-sided", "percentile bootstrap, 5000 resamples, seed 0",
               "percentile bootstrap, 1000 resamples, seed 3", "BCa bootstrap, 2000 resamples, seed 1", None]
    labels = ["alpha", "beta", "gamma", "delta", "epsilon"][:int(rng.integers(1, 6))]
    rows = [{metric: Interval(estimate=0.5, low=0.4, high=0.6, n=10, method=methods[int(rng.integers(0, 5))])
             for metric in ("accuracy", "macro_f1") if rng.random() < 0.7} for _ in labels]
    truth = {(metric, label): interval_scheme(m.method)
             for label, row in zip(labels, rows, strict=True) for metric, m in row.items()}
    note = interval_note(rows, labels)
    schemes = set(truth.values())
    assert note.startswith("95% CIs: ") and note.endswith(".")
    if len(schemes) <= 1:
        assert note == f"95% CIs: {schemes.pop() if schemes else 'method not recorded'}." or not truth
        return
    named: dict[tuple[str, str], list[str]] = {}
    groups = note.removeprefix("95% CIs: ").removesuffix(".").split("; ")
    assert len(groups) == len(schemes), note  # each method once
    for group in groups:
        scheme, body = re.fullmatch(r"(.*?) \(((?:accuracy|macro_f1)\b.*)\)", group).groups()
        for token in body.split(", "):  # metrics parted by commas, a metric's rows by "and"
            metric, _, listed = token.partition(" of ")
            assert metric in ("accuracy", "macro_f1"), (token, note)
            named[metric, scheme] = listed.split(" and ") if listed else []
    for (metric, scheme), listed in named.items():
        holders = [label for label in labels if truth.get((metric, label)) == scheme]
        assert holders, (metric, scheme, note)
        if len({s for (m, _), s in truth.items() if m == metric}) > 1:  # mixed: the rows are named
            assert listed == holders, (metric, scheme, note)
        else:
            assert listed == [], note
    assert {(m, s) for (m, _), s in truth.items()} == set(named), note


def test_p_values_deltas_and_significance_never_print_on_the_wrong_side():
    """On random values (many near the 5% level and near zero): a printed p is on the same side of the level as
    the p itself and close to it; a printed Δ is the rounded Δ and never -0.000; a system is marked worse or
    better only with Holm p < 0.05 and a Δ of that sign."""
    from llamalab.evaluation.compare import PairedResult, format_p, signed

    rng = np.random.default_rng(21)
    for _ in range(5000):
        p = float(rng.choice([rng.uniform(0, 1), rng.uniform(0.049, 0.051), 0.05 + rng.uniform(-1e-7, 1e-7),
                              rng.uniform(0, 1e-3), rng.uniform(0.0099, 0.0101)]))
        for alpha in (0.05, 0.01):
            text = format_p(p, alpha)
            if p < 1e-4:
                assert text == "<1e-4"
                continue
            assert (float(text) < alpha) == (p < alpha), (p, text)
            assert float(text) == pytest.approx(p, rel=0.05)
        delta = float(rng.choice([rng.uniform(-1, 1), rng.uniform(-6e-4, 6e-4), 0.0, -0.0]))
        assert signed(delta) != "-0.000" and float(signed(delta)) == pytest.approx(round(delta, 3), abs=1e-12)
        p_holm = min(1.0, p * float(rng.uniform(1, 3)))
        result = PairedResult(test="paired bootstrap", delta=delta, p_value=p, n=10, p_holm=p_holm)
        expected = None if p_holm >= 0.05 or delta == 0 else "worse" if delta < 0 else "better"
        assert result.significance == expected


def test_a_row_written_twice_counts_once_everywhere_the_first(lab):
    """A resumed evaluation can hold an example's row twice: its metrics (`_ordered`), the paired tests, the studies
    and the assignments all read the first, so no two places count it differently."""
    from llamalab.evaluation.compare import latest_evals
    from llamalab.evaluation.evaluate import _ordered
    from llamalab.runs.files import read_jsonl
    from llamalab.runs.record import list_runs, read_predictions
    from llamalab.tasks.data import Example

    rng = np.random.default_rng(5)
    for k in range(20):
        n = int(rng.integers(5, 40))
        record = fake_eval(lab, f"s{k}", list(rng.random(n) < 0.5))
        rows = read_jsonl(record.folder / "predictions.jsonl")
        again = [dict(r, correct=not r["correct"]) for r in rng.choice(rows, int(rng.integers(1, n)), replace=False)]
        append_jsonl(record.folder / "predictions.jsonl", again)  # the same examples again, judged otherwise
        first = read_predictions(record.folder)
        assert list(first.values()) == rows
        examples = [Example(r["id"], {}, r["gold"], "test") for r in rows]
        assert _ordered(read_jsonl(record.folder / "predictions.jsonl"), examples) == rows
    task = load_task(lab.task_path("sentiment"), lab.root)
    entries = {e.record.id: e.predictions for e in latest_evals(lab, task, "test").entries}  # compare's reading
    assert all(entries[r.id] == read_predictions(r.folder) for r in list_runs(lab.runs_dir, "eval"))


def test_time_per_thousand_and_example_counts_on_random_records(lab):
    """Time per 1,000 examples is the recorded prediction time over the examples it timed (all of them for a run
    that never resumed, or one from before `predict_examples`); a local cost is that time at the lab's rate; the
    n shown for several systems is one count or the range of them."""
    from llamalab.evaluation.compare import SystemRow, cost_and_time, format_seconds, n_range
    from llamalab.publish.figures import _seed_counts

    rng = np.random.default_rng(31)
    for k in range(40):
        n = int(rng.integers(1, 5000))
        record = RunRecord.create(lab.runs_dir, "eval", f"t{k}", {"k": k}, **eval_fields(n=n))
        seconds, timed = round(float(rng.uniform(0.01, 5000)), 2), int(rng.integers(1, n + 1))
        timings = {"predict_s": seconds} | ({"predict_examples": timed} if rng.random() < 0.7 else {})
        record.update(timings=timings)
        rate = float(rng.uniform(0.1, 5)) if rng.random() < 0.5 else None
        got = cost_and_time(record, rate)
        per_1k = 1000 * seconds / timings.get("predict_examples", n)
        assert got["seconds_per_1k"] == pytest.approx(per_1k, rel=1e-12)
        assert format_seconds(got["seconds_per_1k"]) == (f"{per_1k:,.0f} s" if per_1k >= 10 else f"{per_1k:.1f} s")
        assert got["cost_per_1k_usd"] == (None if rate is None else round(rate * per_1k / 3600, 6))
        counts = [int(c) for c in rng.integers(1, 3000, size=int(rng.integers(1, 5)))]
        rows = [SystemRow.model_construct(n=c) for c in counts]
        assert n_range(rows) == (f"{counts[0]:,}" if len(set(counts)) == 1 else f"{min(counts):,}–{max(counts):,}")
        assert _seed_counts(counts) == (str(counts[0]) if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)}")


def test_a_system_with_no_examples_in_common_is_not_counted_in_holm(lab):
    """It was not tested: it gets no p, and the systems that were are corrected only for each other."""
    fake_eval(lab, "best", [True] * 90 + [False] * 10)
    fake_eval(lab, "other", [True] * 60 + [False] * 40)
    apart = RunRecord.create(lab.runs_dir, "eval", "apart", {"system": "apart"}, **eval_fields(label="apart", n=20))
    append_jsonl(apart.folder / "predictions.jsonl", [
        {"id": f"y:{i}", "prompt": f"Review: y{i}\nSentiment:", "gold": "positive", "prediction": "negative",
         "correct": False} for i in range(20)])
    apart.update(status="finished")
    result = compare(lab, "sentiment")
    by_name = {r.system.split(" ")[0]: r.vs_reference for r in result.systems}
    assert by_name["apart"].delta is None and by_name["apart"].p_holm is None and by_name["apart"].significance is None
    assert by_name["other"].p_holm == by_name["other"].p_value  # a family of one
    # The site says it was not tested, and its p cell sorts as empty (not as the text "None")
    from llamalab.publish.site import build_site

    site = build_site(lab, lab.root / "site-out")
    home = " ".join((site / "index.html").read_text().split())
    assert "not tested: no examples in common with best" in home
    assert home.count("not significantly different from best") == 0  # "other" is significantly worse
    board = (site / "tasks" / "sentiment" / "index.html").read_text()
    assert 'data-value="None"' not in board


@pytest.mark.parametrize("seed", range(30))
def test_api_usage_median_and_a_cost_that_is_only_a_lower_bound(lab, seed):
    """The median latency is the middle of the requests sent (the mean of the two middle ones for an even count);
    a cost with content-filtered answers the API sent no token counts for is shown as a lower bound (≥)
    everywhere the cost appears."""
    from llamalab.evaluation.compare import SystemRow, cost_and_time, cost_note, format_cost
    from llamalab.evaluation.evaluate import _usage

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(int(rng.integers(1, 12))):
        cached, filtered = bool(rng.random() < 0.3), bool(rng.random() < 0.3)
        unmetered = filtered and rng.random() < 0.5
        rows.append({"cost_usd": 0.0 if unmetered else float(rng.uniform(0, 0.01)), "cached": cached,
                     "latency_s": float(rng.uniform(0.1, 5)), "input_tokens": 0 if unmetered else 50,
                     "output_tokens": 0 if unmetered else 5, "content_filtered": filtered})
    usage = _usage(rows)
    sent = [r["latency_s"] for r in rows if not r["cached"]]
    assert usage["latency_s_median"] == (pytest.approx(float(np.median(sent))) if sent else None)
    unmetered = sum(1 for r in rows if r["content_filtered"] and not r["input_tokens"])
    assert usage["content_filtered_unmetered"] == unmetered

    record = RunRecord.create(lab.runs_dir, "eval", f"api{seed}", {"s": seed}, **eval_fields(n=len(rows)))
    record.update(usage=usage, system={**record.run.system.model_dump(), "kind": "api", "api": {
        "base_url": "http://127.0.0.1:9/v1", "model": "m", "input_price_per_mtok": 0.15, "output_price_per_mtok": 0.6}})
    got = cost_and_time(record)
    shown = format_cost(got["cost_per_1k_usd"], got["cost_basis"])
    assert shown.startswith("≥$") == (unmetered > 0) and shown.endswith(f"{usage['cost_per_1k_examples_usd']:.4f}")
    row = SystemRow.model_construct(cost_basis=got["cost_basis"])
    assert ("≥: a lower bound" in cost_note([row])) == (unmetered > 0)


def test_evaluations_on_the_tasks_earlier_data_are_left_out_and_named(lab):
    """An evaluation whose recorded data hashes differ from the task's files now saw other examples under the same
    ids: the leaderboard (compare, report, site) leaves it out, takes the system's newest evaluation on the current
    data instead, and names a system evaluated only on earlier data; records without hashes stay (cannot tell)."""
    from llamalab.evaluation.compare import comparison_table
    from llamalab.publish.results import task_boards
    from llamalab.publish.tables import caption
    from llamalab.runs.record import list_runs
    from llamalab.tasks.data import current_file_hashes

    now = current_file_hashes(load_task(lab.task_path("sentiment"), lab.root))
    before = {path: "0" * 64 for path in now}

    def evaluation(label: str, hashes: dict | None, correct: list[bool]) -> RunRecord:
        return sentiment_eval(lab, label, correct, hashes)

    current = evaluation("kept", now, [True] * 8 + [False] * 2)
    evaluation("kept", before, [True] * 10)  # newer, but on the earlier data: not the system's row
    evaluation("gone", before, [False] * 10)
    unknown = evaluation("old record", None, [True] * 5 + [False] * 5)

    result = compare(lab, "sentiment")
    assert sorted(row.run for row in result.systems) == sorted([current.id, unknown.id])
    assert next(r for r in result.systems if r.run == current.id).metrics["accuracy"].estimate == 0.8
    assert result.earlier_data == ["gone [plain]"]
    console = Console(record=True, width=400)
    console.print(comparison_table(result))
    assert "Not shown: gone [plain], evaluated on this split only before the task's data files changed" in (
        " ".join(console.export_text().split()))
    board = task_boards(lab)[0]
    assert board.comparison.earlier_data == ["gone [plain]"] and "Not shown: gone [plain]" in caption(board)

    earlier_only = {r.id for r in list_runs(lab.runs_dir, "eval")} - {current.id, unknown.id}
    with pytest.raises(LlamalabError, match="only on earlier data: gone \\[plain\\], kept \\[plain\\]"):
        compare(lab, "sentiment", only=earlier_only)


def test_data_that_no_longer_matches_its_split_leaves_its_evaluations_out_everywhere(lab, tmp_path):
    """A data file edited so that the pinned split no longer matches: the data cannot be loaded, and compare and
    the report took every evaluation for a current one (the site build failed instead). Now the files are hashed
    as they lie: the evaluation is named as one of earlier data, and the site says why the data card is empty."""
    from llamalab.publish.site import build_site
    from llamalab.tasks.data import current_file_hashes

    now = current_file_hashes(load_task(lab.task_path("sentiment"), lab.root))
    sentiment_eval(lab, "before the edit", [True] * 6 + [False] * 4, now)
    assert [row.system for row in compare(lab, "sentiment").systems] == ["before the edit [plain]"]
    with (lab.root / "data" / "rt_polarity" / "rt-polarity.pos").open("a") as handle:
        handle.write("a review added after the split was drawn .\n")
    with pytest.raises(LlamalabError, match="only on earlier data: before the edit"):
        compare(lab, "sentiment")
    site = build_site(lab, tmp_path / "site")
    import html
    import re

    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "tasks" / "sentiment" / "index.html").read_text()))
    assert "the data cannot be read now: data/splits/sentiment.json: the recorded split no longer matches" in page
    assert "made before the task's data files changed (before the edit [plain]), so none is shown" in page
    (lab.root / "data" / "rt_polarity" / "rt-polarity.pos").unlink()  # a file gone: its path is the lab's own
    page = (build_site(lab, tmp_path / "site") / "tasks" / "sentiment" / "index.html").read_text()
    assert "data file data/rt_polarity/rt-polarity.pos not found (looked at data/rt_polarity/rt-polarity.pos)" in page
    assert str(lab.root) not in page and str(lab.root.resolve()) not in page
    assert "not counted: the data cannot be read now" in page


def test_a_systems_widest_evaluation_is_its_row_not_a_later_quick_check(lab):
    """A `--limit` check made after a full evaluation of the same system does not replace it on the board; among
    evaluations of the same size the newest is taken."""
    full = fake_eval(lab, "model", [True] * 30 + [False] * 10)
    quick = fake_eval(lab, "model", [False] * 5)
    assert [row.run for row in compare(lab, "sentiment").systems] == [full.id]
    again = fake_eval(lab, "model", [True] * 20 + [False] * 20)
    assert [row.run for row in compare(lab, "sentiment").systems] == [again.id]
    assert compare(lab, "sentiment", only={quick.id}).systems[0].run == quick.id


@pytest.mark.parametrize("seed", range(12))
def test_the_cli_shows_the_cost_and_time_the_report_and_site_show(lab, seed):
    """`compare` printed the sum of request latencies and no local cost; the report and site, the wall time and
    the local cost: one number per run everywhere now (random timings, sizes, API usage and local rates)."""
    import re

    from llamalab.evaluation.compare import comparison_table, cost_note, format_cost, format_seconds
    from llamalab.evaluation.evaluate import _usage
    from llamalab.lab import find_lab
    from llamalab.publish.results import task_boards
    from llamalab.publish.tables import leaderboard_cells

    rng = np.random.default_rng(seed)
    rate = round(float(rng.uniform(0.05, 5)), 3) if rng.random() < 0.7 else "null"
    config = lab.root / "lab.yaml"
    config.write_text(re.sub(r"(?m)^local_compute_usd_per_hour:.*$", f"local_compute_usd_per_hour: {rate}",
                             config.read_text()))
    lab = find_lab(lab.root)
    names = ["alpha", "bravo", "charlie", "delta"][: int(rng.integers(1, 5))]
    priced: dict[str, bool] = {}  # API models: whether lab.yaml gave them prices
    for name in names:
        n = int(rng.integers(10, 400))
        record = fake_eval(lab, name, list(rng.random(n) < rng.uniform(0.2, 0.9)))
        timings = {"predict_s": round(float(rng.uniform(0.05, 3000)), 2)}
        if rng.random() < 0.5:
            timings["predict_examples"] = int(rng.integers(1, n + 1))  # resumed: part of the examples timed
        record.update(timings=timings)
        if rng.random() < 0.4:  # an API model: its list-price cost, maybe only a lower bound, maybe unpriced
            unmetered = rng.random(n) < 0.1
            prices = [0.0, 0.0] if rng.random() < 0.3 else [float(rng.uniform(0, 20)), float(rng.uniform(0.01, 60))]
            priced[name] = any(prices)
            record.update(system={**record.run.system.model_dump(), "kind": "api", "api": {
                "base_url": "http://127.0.0.1:9/v1", "model": name, "input_price_per_mtok": prices[0],
                "output_price_per_mtok": prices[1]}})
            record.update(usage=_usage([
                {"cost_usd": 0.0 if u else float(rng.uniform(0, 0.01)), "cached": bool(rng.random() < 0.3),
                 "latency_s": float(rng.uniform(0.1, 5)), "input_tokens": 0 if u else 50,
                 "output_tokens": 0 if u else 5, "content_filtered": bool(u)} for u in unmetered]))
    result = compare(lab, "sentiment")
    console = Console(record=True, width=400)
    console.print(comparison_table(result))
    shown = {line.split("│")[1].strip().split(" ")[0]: line for line in console.export_text().splitlines()
             if line.count("│") > 2}
    _, body = leaderboard_cells(task_boards(lab)[0])
    assert len(body) == len(names) == len(result.systems)
    for row in result.systems:
        name = row.system.split(" ")[0]
        cost, seconds = format_cost(row.cost_per_1k_usd, row.cost_basis), format_seconds(row.seconds_per_1k)
        assert f" {cost} " in shown[name] and f" {seconds} " in shown[name]
        [cells] = [cells for cells in body if cells[0] == row.system]
        assert cells[-2:] == [cost, seconds]  # the report's and site's cells
        if name in priced:  # no prices: no known cost (it read $0.0000, as if free); never a local estimate
            assert (row.cost_per_1k_usd is None) == (not priced[name]) and cost != "$0.0000"
    assert ("gives no prices" in cost_note(result.systems)) == (False in priced.values())


def test_the_post_marks_subsets_escapes_labels_and_reports_a_best_from_before_a_data_change(lab):
    """The post writes Δ as the tables do (n=… on a paired subset), labels as literal Markdown, the "Not shown"
    note, and after the task's data changed, the last post's best marked as evaluated before the change (it said
    "first results on this task")."""
    import datetime

    import yaml

    from llamalab.publish.posts import new_post
    from llamalab.tasks.data import current_file_hashes

    now = current_file_hashes(load_task(lab.task_path("sentiment"), lab.root))

    def evaluation(label: str, hashes: dict, correct: list[bool]) -> RunRecord:
        return sentiment_eval(lab, label, correct, hashes)

    old = evaluation("alpha", now, [True] * 9 + [False])
    first = new_post(lab, "Week one", ["A"], today=datetime.date(2026, 11, 1))
    assert "**Best on accuracy:** alpha" in first.read_text()
    # then the task's data changed: alpha's evaluation read the files as they were
    old.update(task=old.run.task.model_copy(update={"data_sha256": {p: "0" * 64 for p in now}}).model_dump())
    evaluation("*beta* [x](http://e.com)", now, [True] * 6 + [False] * 4)
    evaluation("gamma", now, [True] * 5)  # saw half the examples: a paired subset
    text = new_post(lab, "Week two", ["A"], today=datetime.date(2026, 11, 8)).read_text()
    body = text.split("---\n", 2)[2]
    assert "first results on this task" not in body
    assert "the best was alpha [plain], " in body and "(evaluated before the task's data changed)" in body
    assert old.id in body
    assert r"\*beta\* \[x\](http://e.com)" in body and "*beta*" not in body.replace(r"\*beta\*", "")
    assert "(n=5)" in body
    assert "Not shown: alpha [plain]" in body
    assert yaml.safe_load(text.split("---\n")[1])["title"] == "Week two"


def test_a_fine_tuned_system_is_named_as_reference_by_its_train_run(lab):
    """README: a run is named anywhere (eval, export, --reference) by its id; a fine-tune's train run id named
    "no evaluated system"."""
    rng = np.random.default_rng(2)
    fake_eval(lab, "strong", list(rng.random(100) < 0.9))
    fields = eval_fields(label="exp@ab12", n=100, kind="finetuned", train_run="20261129-000000-train-exp-ab12")
    record = RunRecord.create(lab.runs_dir, "eval", "tuned", {"system": "tuned"}, **fields)
    append_jsonl(record.folder / "predictions.jsonl", [
        {"id": f"x:{i}", "gold": "positive", "prediction": "positive", "correct": bool(ok)}
        for i, ok in enumerate(rng.random(100) < 0.6)])
    record.update(status="finished")
    for name in ("20261129-000000-train-exp-ab12", "train-exp-ab12"):
        result = compare(lab, "sentiment", reference=name)
        assert result.reference == "exp@ab12 [plain]" and not result.reference_is_best


def test_a_system_sharing_no_example_is_named_untested_not_listed_as_a_test(lab):
    from llamalab.evaluation.compare import comparison_table
    from llamalab.publish.methods import _comparison
    from llamalab.publish.results import task_boards
    from llamalab.publish.tables import caption

    fake_eval(lab, "a", [True] * 8 + [False] * 2)
    fake_eval(lab, "b", [True] * 5 + [False] * 5)
    apart = RunRecord.create(lab.runs_dir, "eval", "c", {"system": "c"}, **eval_fields(label="c", n=4))
    append_jsonl(apart.folder / "predictions.jsonl", [
        {"id": f"y:{i}", "gold": "positive", "prediction": "negative", "correct": False} for i in range(4)])
    apart.update(status="finished")
    board = task_boards(lab)[0]
    assert "none: no shared examples" not in caption(board) and "exact McNemar" in caption(board)
    console = Console(record=True, width=400)
    console.print(comparison_table(compare(lab, "sentiment")))
    assert "none: no shared examples on" not in console.export_text()
    text = _comparison(board)
    assert "(exact McNemar)" in text and text.endswith("c [plain] shares no example with it and is not tested.")


def test_a_system_whose_rows_cannot_give_the_ranking_metric_is_untested_not_a_crash(lab):
    """An evaluation whose rows predate the metric's per-example field has an empty cell and no test (the paired
    test raised a KeyError and compare, the report and the site stopped); one whose metric is undefined on every
    resample (an entity precision of a system that predicts no entity) has no Δ, not Δ 1.0 at p 1."""
    from llamalab.evaluation.compare import _paired, tests_label
    from llamalab.publish.methods import _comparison
    from llamalab.publish.results import task_boards

    fake_eval(lab, "a", [True] * 8 + [False] * 2)
    old = RunRecord.create(lab.runs_dir, "eval", "old", {"system": "old"}, **eval_fields(label="old", n=10))
    append_jsonl(old.folder / "predictions.jsonl", [
        {"id": f"x:{i}", "gold": "positive", "prediction": "positive"} for i in range(10)])  # no `correct`
    old.update(status="finished")
    result = compare(lab, "sentiment")
    untested = result.systems[-1]
    assert untested.system == "old [plain]" and "accuracy" not in untested.metrics
    assert untested.vs_reference.delta is None and untested.vs_reference.p_holm is None
    assert tests_label(result.systems) == "none (accuracy not recorded per example)"
    board = task_boards(lab)[0]
    assert _comparison(board).endswith("old [plain] is not tested (accuracy not recorded per example).")

    class Entry:  # the two fields _paired reads
        def __init__(self, rows):
            self.predictions = {r["id"]: r for r in rows}

    right = Entry([{"id": f"e{i}", "tp": 1, "fp": 0, "fn": 0} for i in range(6)])
    silent = Entry([{"id": f"e{i}", "tp": 0, "fp": 0, "fn": 1} for i in range(6)])
    vs = _paired(right, silent, "entity_precision", None, 200)
    assert vs.delta is None and vs.test == "none: entity_precision undefined for one of them"
    assert _paired(right, silent, "entity_recall", None, 200).delta == pytest.approx(-1.0)


def test_each_systems_row_is_its_widest_evaluation_on_current_data_on_random_records(lab):
    """Property: for random sequences of evaluations of a few systems, some on the task's earlier data, each row is
    the system's evaluation on current data with the most examples (the newest of those), and the systems left
    out are exactly those with evaluations only on earlier data."""
    from llamalab.evaluation.compare import latest_evals
    from llamalab.tasks.data import current_file_hashes

    task = load_task(lab.task_path("sentiment"), lab.root)
    now = current_file_hashes(task)
    before = {path: "0" * 64 for path in now}
    rng = np.random.default_rng(17)
    for case in range(6):
        made: dict[str, list[tuple[int, bool, str]]] = {}
        for _ in range(int(rng.integers(3, 12))):
            system = f"s{case}-{int(rng.integers(0, 4))}"
            n, current = int(rng.choice([3, 5, 8])), bool(rng.random() < 0.6)
            fields = eval_fields(label=system, n=n)
            fields["task"]["data_sha256"] = now if current else before
            record = RunRecord.create(lab.runs_dir, "eval", system, {"system": system}, **fields)
            append_jsonl(record.folder / "predictions.jsonl", [
                {"id": f"x:{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(n)])
            record.update(status="finished")
            made.setdefault(system, []).append((n, current, record.id))
        only = {rid for runs in made.values() for _, _, rid in runs}
        entries, earlier = latest_evals(lab, task, "test", only)
        expected = {}
        for system, runs in made.items():
            on_now = [(n, i, rid) for i, (n, current, rid) in enumerate(runs) if current]
            if on_now:
                expected[system] = max(on_now)[2]  # most examples, then the latest made
        assert {e.run.system.label: e.record.id for e in entries} == expected
        assert earlier == sorted(f"{s} [plain]" for s in made if s not in expected)


def test_a_narrow_table_folds_cells_and_never_cuts_a_name_or_a_number(lab):
    """At 140 columns (a log, a pipe) rich cut every system name to `sentiment-l… [plain]`: rows could not be
    told apart; a cell is folded onto more lines instead."""
    from llamalab.evaluation.compare import comparison_table

    for suffix in ("alpha", "beta"):
        sentiment_eval(lab, f"sentiment-lora-with-a-long-experiment-name-{suffix}", [True, False] * 5)
    for width in (80, 140):
        console = Console(record=True, width=width)
        console.print(comparison_table(compare(lab, "sentiment")))
        text = console.export_text()
        cells = [line for line in text.splitlines() if "│" in line]  # the rows (the caption says "n=…")
        assert cells and not any("…" in line for line in cells), text
        assert "alpha" in text and "beta" in text


def test_a_tie_is_a_delta_of_plus_zero_everywhere(lab):
    """A system as good as the reference on the shared examples: Δ 0.0 in Python and --json (it was -0.0, while
    the tables print +0.000)."""
    import math

    fake_eval(lab, "alpha", [True, False] * 10)
    fake_eval(lab, "bravo", [True, False] * 10)
    result = compare(lab, "sentiment")
    [other] = [row for row in result.systems if row.vs_reference is not None]
    assert other.vs_reference.delta == 0.0 and math.copysign(1, other.vs_reference.delta) == 1.0


def test_evaluations_that_differ_in_budget_precision_or_shots_drawn_are_rows_of_their_own(lab, tiny_model_dir):
    """A quick 1-token re-run replaced the full one in the table (the widest, newest of one system), and a bfloat16
    run a float32 one, with nothing in the label to say so."""
    from llamalab.evaluation.evaluate import evaluate

    model = str(tiny_model_dir)
    full = evaluate(lab, model, task="gsm8k", split="dev", limit=3, max_new_tokens=3)
    quick = evaluate(lab, model, task="gsm8k", split="dev", limit=3, max_new_tokens=1)
    rows = {row.run: row.system for row in compare(lab, "gsm8k", split="dev").systems}
    label = full.run.display_label
    assert rows == {full.id: f"{label} ({full.id[-4:]})", quick.id: f"{label} ({quick.id[-4:]})"}

    wide = evaluate(lab, model, task="sentiment", split="dev", limit=4)
    reduced = evaluate(lab, model, task="sentiment", split="dev", limit=4, precision="bfloat16")
    seeded = evaluate(lab, model, task="sentiment", split="dev", limit=4, shots=1, shot_seed=1)
    reseeded = evaluate(lab, model, task="sentiment", split="dev", limit=4, shots=1, shot_seed=2)
    assert seeded.run.prompt.shots != reseeded.run.prompt.shots
    rows = {row.run: row.system for row in compare(lab, "sentiment", split="dev").systems}
    assert set(rows) == {wide.id, reduced.id, seeded.id, reseeded.id}
    name = wide.run.system.label
    assert rows[wide.id] == f"{name} [plain]" and rows[reduced.id] == f"{name} [plain, bfloat16]"
