"""Studies: the study file, cells identified by their settings, resumable runs read from the records, and the
scaling study's learning curve and crossover."""

from __future__ import annotations

import os

import numpy as np
import pytest

from llamalab.config import LlamalabError
from llamalab.evaluation import stats
from llamalab.evaluation.compare import format_interval
from llamalab.publish.tables import md_escape
from llamalab.runs.record import list_runs
from llamalab.runs.schema import Interval
from llamalab.studies.run import cell_states, run_study
from llamalab.studies.scaling import Crossover, SizeTest, _seed_interval, scaling_result
from llamalab.studies.spec import load_study
from tests.conftest import write_experiment

STUDY = """kind: scaling
experiment: tiny
grid:
  train_examples: [8, 16]
seeds: [0, 1]
eval: {limit: 12}
comparators: {dev_limit: 8}
"""


def write_study(lab, name: str, text: str) -> str:
    (lab.root / "studies").mkdir(exist_ok=True)
    (lab.root / "studies" / f"{name}.yaml").write_text(text)
    return name


@pytest.fixture
def study_lab(lab, tiny_model_dir):
    write_experiment(lab, "tiny", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 2\n"
                                  "lora: {r: 4, alpha: 8}\n")
    write_study(lab, "tiny-scaling", STUDY)
    return lab


def test_study_file_errors_name_the_file_and_the_key(lab):
    write_experiment(lab, "exp", "task: sentiment\n")
    write_study(lab, "both", "experiment: exp\ngrid: {learning_rate: [1e-4]}\ncells: [{learning_rate: 1e-3}]\n")
    with pytest.raises(LlamalabError, match="both.yaml.*`grid` or `cells`"):
        load_study(lab, "both")
    write_study(lab, "curve", "kind: scaling\nexperiment: exp\ngrid: {learning_rate: [1e-4]}\n")
    with pytest.raises(LlamalabError, match="varies `train_examples`"):
        load_study(lab, "curve")
    # a scaling curve averages a size's cells over seeds: a second varied setting would be averaged in silently
    write_study(lab, "mixed", "kind: scaling\nexperiment: exp\n"
                              "grid: {train_examples: [8, 16], learning_rate: [1e-4, 1e-2], lora: [{r: 8}]}\n")
    with pytest.raises(LlamalabError, match="mixed.yaml.*also varies learning_rate: .*kind: sweep"):
        load_study(lab, "mixed")
    write_study(lab, "typo", "experiment: exp\nseed: [1, 2]\n")
    with pytest.raises(LlamalabError, match=r"typo.yaml:2: unknown key 'seed': did you mean 'seeds'"):
        load_study(lab, "typo")
    write_study(lab, "bad-cell", "experiment: exp\ngrid: {learning_rat: [1e-4]}\n")
    with pytest.raises(LlamalabError, match="bad-cell.yaml: cell .*learning_rat.*did you mean 'learning_rate'"):
        load_study(lab, "bad-cell")
    with pytest.raises(LlamalabError, match="no study 'nothing'"):
        load_study(lab, "nothing")


def test_cells_are_the_grid_times_the_seeds_identified_by_their_settings(lab):
    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 5\n")
    write_study(lab, "grid", "experiment: exp\ngrid: {train_examples: [8, 16], learning_rate: [1e-4, 2e-4]}\n"
                             "seeds: [0, 1]\n")
    study = load_study(lab, "grid")
    assert len(study.cells) == 8 and len({c.key for c in study.cells}) == 8
    assert study.cells[0].label == "train_examples=8 learning_rate=1e-4 seed=0"  # as written
    assert study.cells[0].config["max_steps"] == 5 and study.cells[0].config["seed"] == 0
    # The key is the hash of the resolved settings: listing a default explicitly is the same cell.
    write_study(lab, "explicit", "experiment: exp\ncells: [{train_examples: 8, learning_rate: 1e-4, lora: {r: 16}}]\n")
    assert load_study(lab, "explicit").cells[0].key == study.cells[0].key
    assert [s.status for s in cell_states(lab, study)] == ["pending"] * 8


def test_a_study_naming_its_experiment_by_path_finds_its_cells(lab):
    """`experiment: experiments/exp.yaml` (read from the lab root) trains runs named `exp`, as `llamalab train`
    names them: those are the cells' runs."""
    from llamalab.runs.record import RunRecord
    from tests.records import train_fields

    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    write_study(lab, "bypath", "experiment: experiments/exp.yaml\ngrid: {learning_rate: [1e-4, 1e-3]}\n")
    study = load_study(lab, "bypath")
    assert study.experiment_name == "exp" and study.experiment_file == lab.root / "experiments" / "exp.yaml"
    for cell in study.cells:
        RunRecord.create(lab.runs_dir, "train", "exp", cell.config, **train_fields(experiment="exp")).update(
            status="finished")
    assert [s.status for s in cell_states(lab, study)] == ["trained", "trained"]


def test_an_unfinished_comparator_run_is_refused_naming_it(lab):
    from rich.console import Console

    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import comparator_evals
    from tests.records import eval_fields

    partial = RunRecord.create(lab.runs_dir, "eval", "half", {"s": 1}, **eval_fields(n=20))
    partial.update(status="failed")
    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    write_study(lab, "cmp", f"kind: scaling\nexperiment: exp\ngrid: {{train_examples: [8]}}\n"
                            f"comparators: {{baselines: false, runs: [{partial.id}]}}\n")
    with pytest.raises(LlamalabError, match=f"comparator run {partial.id} is failed, not finished"):
        comparator_evals(lab, load_study(lab, "cmp"), Console(stderr=True))


@pytest.mark.parametrize(("text", "message"), [
    ("kind: scaling\nexperiment: exp\ngrid: {train_examples: [8, null]}\n", "are whole numbers"),
    ("kind: scaling\nexperiment: exp\ngrid: {train_examples: [8, true]}\n", "are whole numbers"),
    ("experiment: exp\ngrid: {task: [sentiment, intent]}\n", "the cells train on several tasks (intent, sentiment)"),
    ("experiment: exp\ngrid: {learning_rate: [1e-4]}\nseeds: [0, 1, 1]\n", "bad.yaml:3: key 'seeds': `seeds` repeats"),
    ("experiment: exp\ngrid:\n  learning_rate: []\n",
     "bad.yaml:2: key 'grid': every `grid` setting needs at least one value (learning_rate"),
    ("experiment: nope\ngrid: {learning_rate: [1e-4]}\n", "bad.yaml: key 'experiment': no experiment"),
    ("kind: scaling\nexperiment: exp\ngrid:\n  train_examples: [8]\n  learning_rate: [1e-4, 1e-3]\n",
     "bad.yaml:3: key 'grid': a scaling study varies only"),
    ("kind: scaling\nexperiment: exp\ngrid:\n  train_exmples: [8]\n",
     "put it in `grid` (or in every cell) (is 'train_exmples' meant to be train_examples?)"),
    # checked when the study is read, not after every cell has trained (and then again by every `study status`)
    ("experiment: exp\ngrid: {learning_rate: [1e-4]}\neval: {task: gsm8k, protocol: loglikelihood}\n",
     "bad.yaml: key 'eval': task 'gsm8k' has number answers: set `eval: {protocol: generate}`"),
])
def test_a_study_its_results_could_not_mean_is_refused_before_it_runs(lab, text, message):
    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    write_study(lab, "bad", text)
    with pytest.raises(LlamalabError) as error:
        load_study(lab, "bad")
    assert message in str(error.value)


def test_a_named_comparator_is_the_same_run_for_study_run_and_the_report(lab):
    """`study run` and the report (and `study status`) take `comparators.runs` by one rule: the report took the
    latest run whose id held the name, which could be another evaluation than the one `study run` tested."""
    from rich.console import Console

    from llamalab.studies.run import comparator_evals, comparators_left_out, recorded_comparators
    from tests.records import sentiment_eval

    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    first = sentiment_eval(lab, "cmpsys", [True, False, True])
    write_study(lab, "named", "kind: scaling\nexperiment: exp\ngrid: {train_examples: [8]}\n"
                              "comparators: {baselines: false, runs: [cmpsys]}\n")
    study = load_study(lab, "named")
    assert [r.id for r in comparator_evals(lab, study, Console(stderr=True))] == [first.id]
    assert [r.id for r in recorded_comparators(lab, study)] == [first.id]
    sentiment_eval(lab, "cmpsys", [True, True, True])  # a second run the name fits: neither picks one
    with pytest.raises(LlamalabError, match="'cmpsys' is ambiguous"):
        comparator_evals(lab, study, Console(stderr=True))
    with pytest.raises(LlamalabError, match="'cmpsys' is ambiguous"):  # said before any cell trains
        run_study(lab, study, Console(stderr=True))
    assert list_runs(lab.runs_dir, "train") == []
    assert recorded_comparators(lab, study) == []  # status and the report leave it out, and status says why
    from typer.testing import CliRunner

    from llamalab.cli import app

    status = CliRunner().invoke(app, ["study", "status", "named", "--lab", str(lab.root)], terminal_width=400)
    assert status.exit_code == 0, status.output
    assert "comparator left out: eval run 'cmpsys' is ambiguous" in " ".join(status.output.split())
    write_study(lab, "named", "kind: scaling\nexperiment: exp\ngrid: {train_examples: [8]}\n"
                              f"comparators: {{baselines: false, runs: [{first.id}], api: [gpt-x]}}\n")
    assert comparators_left_out(lab, load_study(lab, "named")) == [
        f"{lab.root / 'studies' / 'named.yaml'}: key 'comparators.api': 'gpt-x' is not an API model of lab.yaml's "
        "api_models (it has: none yet); add it there or leave it out"]


def test_a_sweep_over_base_models_runs_no_comparators(lab, tiny_model_dir, monkeypatch):
    """A sweep has no comparators (its settings are tested against the best of them): one over base models is
    not refused for the baselines it would not show, and `study run` evaluates no baseline."""
    from rich.console import Console

    from llamalab.studies import run as study_run

    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    write_study(lab, "models", f"experiment: exp\ngrid: {{base_model: [smollm2-135m-instruct, '{tiny_model_dir}']}}\n")
    study = load_study(lab, "models")
    assert len(study.cells) == 2
    real_cells_to_run = study_run._cells_to_run
    monkeypatch.setattr(study_run, "_cells_to_run", lambda *args, **kwargs: real_cells_to_run(*args, **kwargs) and [])
    assert run_study(lab, study, Console(stderr=True))[1] == [] and list_runs(lab.runs_dir, "eval") == []
    # Comparators asked of a sweep (evaluated and shown nowhere before) are refused by `study run`, before any
    # cell trains; status and the report read the study as before.
    write_study(lab, "asks", "kind: sweep\nexperiment: exp\ngrid: {learning_rate: [1e-4]}\ncomparators: {api: [x]}\n")
    study = load_study(lab, "asks")
    with pytest.raises(LlamalabError, match="asks.yaml: key 'comparators': a sweep study compares its own systems"):
        run_study(lab, study, Console(stderr=True))
    assert [s.status for s in cell_states(lab, study)] == ["pending"] and list_runs(lab.runs_dir) == []


def test_a_cells_evaluation_is_the_one_the_study_runs_not_a_later_one_with_other_settings(lab):
    """Cells and comparators are found by the settings the study evaluates with (as `evaluate(reuse=True)` finds
    them): a later evaluation of the same train run or base model, 4-shot or by generation, is not taken for
    theirs, nor a named run of another task."""
    from llamalab.evaluation.evaluate import EvalSettings, complete_settings
    from llamalab.evaluation.systems import system_outline
    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import recorded_comparators
    from llamalab.tasks.task import load_task
    from tests.records import eval_fields, train_fields

    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 2\n")
    write_study(lab, "sw", "kind: scaling\nexperiment: exp\ngrid: {train_examples: [8, 16]}\neval: {limit: 30}\n"
                           "comparators: {baselines: true}\n")
    study, task = load_study(lab, "sw"), load_task(lab.task_path("sentiment"), lab.root)

    def evaluation(system: str, score: float = 0.5, **options) -> RunRecord:
        outline = system_outline(lab, system)
        settings = complete_settings(EvalSettings(system=system, task="sentiment", **options), task, outline)
        record = RunRecord.create(lab.runs_dir, "eval", system[-8:], settings.model_dump(),
                                  **eval_fields(n=30, split=settings.split, kind=outline.kind,
                                                    train_run=outline.train_run))
        record.update(status="finished", metrics={"accuracy": {"estimate": score, "low": 0.0, "high": 1.0, "n": 30}})
        return record

    theirs = {}
    for cell in study.cells:
        train = RunRecord.create(lab.runs_dir, "train", "exp", cell.config, **train_fields(experiment="exp"))
        train.update(status="finished")
        theirs[cell.key] = evaluation(train.id, limit=30)
        evaluation(train.id, limit=30, shots=4)  # later, by hand: not the cell's
        evaluation(train.id, limit=30, protocol="generate")
    assert [s.eval.id for s in cell_states(lab, study)] == [theirs[c.key].id for c in study.cells]
    # Runs made before the task's data changed are not the cells' any more: the cell runs again
    from llamalab.tasks.data import load_task_data

    now = load_task_data(task).file_hashes
    stale = {path: "0" * 64 for path in now}
    first, second = study.cells
    train = cell_states(lab, study)[0].train
    train.update(task={**train.run.task.model_dump(), "data_sha256": stale})
    theirs[second.key].update(task={**theirs[second.key].run.task.model_dump(), "data_sha256": stale})
    assert [s.status for s in cell_states(lab, study)] == ["pending", "trained"]
    theirs[second.key].update(task={**theirs[second.key].run.task.model_dump(), "data_sha256": now})
    assert [s.status for s in cell_states(lab, study)] == ["pending", "finished"]
    train.update(task={**train.run.task.model_dump(), "data_sha256": now})

    model = study.cells[0].config["base_model"]
    for fmt, shots, score in (("plain", 0, 0.6), ("chat", 0, 0.5), ("plain", 4, 0.7)):  # 4-shot is best on dev
        evaluation(model, score, split="dev", format=fmt, shots=shots, limit=500)
    baseline = evaluation(model, limit=30, format="plain", shots=4)  # the baseline the study would run ...
    evaluation(model, limit=30, format="plain", shots=4, protocol="generate")  # ... not this later one
    evaluation(model, limit=30, format="plain", shots=4, shot_seed=1)  # ... nor this one
    assert [r.id for r in recorded_comparators(lab, study)] == [baseline.id]


def test_seed_band_contains_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    for case in range(200):
        n, k = int(rng.integers(5, 60)), int(rng.integers(1, 4))
        seeds = [stats.mean_statistic(rng.random(n) < rng.uniform(0.2, 0.9)) for _ in range(k)]
        band = _seed_interval(seeds, 300, seed=case)
        assert band.low <= band.estimate <= band.high, (case, band)
        assert band.estimate == pytest.approx(np.mean([s.estimate for s in seeds]))
    same = [stats.mean_statistic(np.arange(40) % 2 == 0)] * 2
    apart = [stats.mean_statistic(np.arange(40) % 10 == 0), stats.mean_statistic(np.arange(40) % 10 != 0)]
    assert _seed_interval(apart, 500).high - _seed_interval(apart, 500).low > \
        _seed_interval(same, 500).high - _seed_interval(same, 500).low


def test_crossover_is_the_smallest_size_better_after_correction():
    base = Interval(estimate=0.7, low=0.6, high=0.8, n=100)
    tests = (SizeTest(25, -0.10, 0.01, 0.03, 100), SizeTest(50, 0.02, 0.4, 0.8, 100),
             SizeTest(100, 0.08, 0.01, 0.02, 100), SizeTest(200, 0.12, 0.001, 0.004, 100))
    crossover = Crossover("base [plain]", "r", base, tests)
    assert crossover.size == 100  # 25 is significant but worse; 50 is better but not significantly
    assert "first significantly better than base [plain] at 100 training examples, between 50 (not significantly " \
        "better) and 100" in crossover.sentence()
    assert "Larger sizes" not in crossover.sentence()
    never = Crossover("api [chat]", "r", base, tuple(SizeTest(s, -0.1, 0.5, 1.0, 100) for s in (25, 50)))
    assert never.size is None and never.sentence() == (
        "No training-set size tried is significantly better than api [chat] (Holm-corrected, up to 50 examples).")
    first = Crossover("x", "r", base, (SizeTest(25, 0.2, 0.001, 0.002, 100), SizeTest(50, 0.01, 0.3, 0.3, 100),
                                       SizeTest(100, 0.2, 0.001, 0.002, 100)))
    assert "already at the smallest size tried (25)" in first.sentence()
    assert first.sentence().endswith("Larger sizes not significantly better: 50.")


def test_crossover_sentence_says_what_random_tests_show():
    """Across random tests: the sentence names the smallest size that is better (Δ > 0, Holm p < 0.05) with its own
    Δ, p and n, the largest size below it (none: the smallest tried), and exactly the larger sizes that are not."""
    import re

    from llamalab.evaluation.compare import format_p, signed

    rng = np.random.default_rng(11)
    base = Interval(estimate=0.7, low=0.6, high=0.8, n=100)
    for _ in range(300):
        sizes = sorted({int(s) for s in rng.integers(1, 5000, size=int(rng.integers(1, 7)))})
        tests = []
        for size in sizes:
            p = float(rng.choice([rng.uniform(0, 0.05), rng.uniform(0.05, 1), 0.05]))
            tests.append(SizeTest(size, float(rng.choice([-1, 0, 1]) * rng.uniform(0, 0.3)), p / 2, p,
                                  int(rng.integers(1, 3000))))
        sentence = Crossover("c", "r", base, tuple(tests)).sentence()
        better = [t for t in tests if t.delta > 0 and t.p_holm < 0.05]
        if not better:
            assert sentence.startswith("No training-set size tried") and f"up to {sizes[-1]:,} examples" in sentence
            continue
        first = better[0]
        assert sentence.startswith(f"Fine-tuning is first significantly better than c at {first.size:,} training ")
        assert f"(Δ {signed(first.delta)}, Holm-corrected p {format_p(first.p_holm)}, n = {first.n:,})" in sentence
        below = [s for s in sizes if s < first.size]
        if below:
            assert f", between {below[-1]:,} (not significantly better) and {first.size:,} (Δ" in sentence
        assert ("already at the smallest size tried" in sentence) == (not below)
        listed = re.search(r"Larger sizes not significantly better: ([\d, ]+)\.$", sentence)
        expected = [t.size for t in tests if t.size > first.size and t not in better]
        assert (listed.group(1).split(", ") if listed else []) == [f"{s:,}" for s in expected]


@pytest.mark.slow
def test_scaling_study_runs_resumes_and_finds_the_curve(study_lab):
    lab = study_lab
    study = load_study(lab, "tiny-scaling")
    from rich.console import Console

    console = Console(stderr=True)
    states, comparators = run_study(lab, study, console)
    assert [s.status for s in states] == ["finished"] * 4
    runs = {r.id for r in list_runs(lab.runs_dir)}
    assert len(runs) == 4 + 4 + 3 + 1  # cells: train + eval; baselines: 3 on dev, the best on test
    assert len(comparators) == 1 and comparators[0].run.task.split == "test"

    # Again: every cell and comparator is found in the records; nothing runs twice.
    again, _ = run_study(lab, study, console)
    assert {r.id for r in list_runs(lab.runs_dir)} == runs
    assert [(s.train.id, s.eval.id) for s in again] == [(s.train.id, s.eval.id) for s in states]

    # A cell whose evaluation is lost (a kill before it finished) is evaluated again, and only it.
    import shutil

    shutil.rmtree(states[1].eval.folder)
    assert [s.status for s in cell_states(lab, study)] == ["finished", "trained", "finished", "finished"]
    resumed, _ = run_study(lab, study, console)
    assert len({r.id for r in list_runs(lab.runs_dir)} - runs) == 1
    assert resumed[1].eval.run.metrics == states[1].eval.run.metrics  # same settings, same numbers

    result = scaling_result(resumed, [(c.run.display_label, c) for c in comparators], "accuracy")
    assert [p.size for p in result.curve] == [8, 16] and all(p.seeds == 2 for p in result.curve)
    for point in result.curve:
        assert point.interval.low <= point.interval.estimate <= point.interval.high
        estimates = [s.eval.run.metrics["accuracy"].estimate for s in resumed
                      if s.cell.overrides["train_examples"] == point.size]
        assert point.interval.estimate == pytest.approx(np.mean(estimates))
    [crossover] = result.crossovers
    assert [t.size for t in crossover.tests] == [8, 16] and all(t.n == 12 for t in crossover.tests)
    assert crossover.sentence().startswith(("Fine-tuning is first significantly better", "No training-set size"))

    # The command line shows the same: every cell finished; the curve and the crossover sentence.
    from typer.testing import CliRunner

    from llamalab.cli import app

    before = {r.id for r in list_runs(lab.runs_dir)}
    status = CliRunner().invoke(app, ["study", "status", "tiny-scaling", "--lab", str(lab.root)])
    assert status.exit_code == 0, status.output
    assert "4 finished" in status.stdout and resumed[1].eval.id in status.stdout
    rerun = CliRunner().invoke(app, ["study", "run", "tiny-scaling", "--lab", str(lab.root)])
    assert rerun.exit_code == 0, rerun.output
    assert "4 finished (skipped), 0 to run" in rerun.output
    assert " ".join(crossover.sentence().split()) in " ".join(rerun.stdout.split())
    assert {r.id for r in list_runs(lab.runs_dir)} == before

    # Published from the records alone: a report section and a site page, with the same sentence and numbers.
    from llamalab.publish.report import build_report
    from llamalab.publish.site import build_site

    report = build_report(lab, "study")
    markdown = (report / "README.md").read_text()
    assert "## Study: tiny-scaling" in markdown and md_escape(crossover.sentence()) in markdown  # as literal text
    table = (report / "tables" / "study-tiny-scaling.md").read_text()
    for point in result.curve:
        m = point.interval
        assert f"| {point.size:,} | 2 | {m.estimate:.3f} | [{m.low:.3f}, {m.high:.3f}] |" in table
    assert (report / "figures" / "study-tiny-scaling.png").is_file()
    assert all(s.eval.id in markdown for s in resumed)
    comparator = crossover.interval  # its own evaluation's interval, with the method that evaluation recorded
    assert f"{crossover.comparator} {format_interval(comparator)} (95% CIs: {comparator.method.split(',')[0]})" \
        in " ".join(table.split())
    site = build_site(lab)
    page = (site / "studies" / "tiny-scaling" / "index.html").read_text()
    assert (site / "studies" / "tiny-scaling" / "curve.svg").is_file() and "curve.svg" in page
    import html

    assert html.escape(crossover.sentence(), quote=False) in page
    assert "studies/tiny-scaling/index.html" in (site / "tasks" / "sentiment" / "index.html").read_text()
    from llamalab.publish.posts import new_post

    post_file = new_post(lab, "Scaling week")
    post = post_file.read_text()
    assert "## Studies" in post and crossover.sentence() in post and "4 of 4 cells finished." in post
    # its study link works on GitHub (the study file) and on the site (the study's page)
    assert "[study](../studies/tiny-scaling.yaml)" in post
    assert (post_file.parent / "../studies/tiny-scaling.yaml").resolve().is_file()
    from tests.site_pages import broken_links

    site = build_site(lab)
    assert any("../studies/tiny-scaling/index.html" in page.read_text() for page in (site / "posts").glob("*.html"))
    assert broken_links(site) == []


@pytest.mark.slow
def test_quantization_study_exports_evaluates_and_tests_against_f16(lab, tiny_model_dir, tmp_path):
    from rich.console import Console

    from llamalab.lab import find_lab
    from llamalab.studies.quantization import gguf_file, recorded_quantization, run_quantization

    write_study(lab, "quant", f"kind: quantization\nquantize: {{systems: ['{tiny_model_dir}'], "
                              "types: [f16, q8_0, q4_0]}\neval: {task: sentiment, limit: 10}\n")
    study = load_study(lab, "quant")
    rows = run_quantization(lab, study, Console(stderr=True))
    assert [r.type for r in rows] == ["f16", "q8_0", "q4_0"]
    sizes = {r.type: r.size_mib for r in rows}
    assert sizes["f16"] > sizes["q8_0"] >= sizes["q4_0"] > 0
    for row in rows:
        assert row.eval.run.backend.backend == "llama.cpp" and row.eval.run.task.n == 10
        in_lab = gguf_file(lab, str(tiny_model_dir), row.type).relative_to(lab.root).as_posix()
        assert row.eval.config["system"] == row.eval.run.system.model.name == in_lab
        # named by the model it was made from (its file's path said little), as a fine-tune's exports by their run
        assert row.eval.run.system.label == f"{tiny_model_dir.name} {row.type}"
        assert (row.eval.run.system.kind, row.eval.run.system.quantized) == ("base", row.type)
        assert in_lab.startswith("runs/.gguf/") and str(lab.root) not in (row.eval.folder / "run.json").read_text()
        assert (row.delta is None) == (row.type == "f16")
        if row.delta is not None:
            f16 = rows[0].interval.estimate
            assert row.delta == pytest.approx(row.interval.estimate - f16)  # same 10 examples
            assert 0 < row.p_value <= 1
    # Again: nothing exported or evaluated twice; the records alone give the same rows.
    before = {r.id for r in list_runs(lab.runs_dir)}
    again = run_quantization(lab, study, Console(stderr=True))
    assert {r.id for r in list_runs(lab.runs_dir)} == before
    assert [(r.eval.id, r.delta) for r in again] == [(r.eval.id, r.delta) for r in rows]
    assert [(r.eval.id, r.delta) for r in recorded_quantization(lab, study)] == [(r.eval.id, r.delta) for r in rows]
    # A clone elsewhere (CI building the site, a colleague's checkout) has the same rows: the evaluations name
    # their files by their path in the lab (an absolute path was not found in the clone, and published).
    import shutil

    moved = find_lab(shutil.copytree(lab.root, tmp_path / "elsewhere", symlinks=True))
    assert [(r.eval.id, r.delta) for r in recorded_quantization(moved, load_study(moved, "quant"))] == [
        (r.eval.id, r.delta) for r in rows]

    # The command line, the report, the site and the weekly post show the same table and sentences.
    import html

    from typer.testing import CliRunner

    from llamalab.cli import app
    from llamalab.publish.posts import new_post
    from llamalab.publish.report import build_report
    from llamalab.publish.results import QuantBoard
    from llamalab.publish.site import build_site
    from llamalab.publish.tables import quant_cells

    board = QuantBoard(study, rows, "accuracy")
    status = CliRunner().invoke(app, ["study", "status", "quant", "--lab", str(lab.root)], terminal_width=400)
    assert status.exit_code == 0, status.output
    assert " ".join(board.summary().split()) in " ".join(status.stdout.split())
    markdown = (build_report(lab, "quant") / "README.md").read_text()
    assert "## Study: quant" in markdown and md_escape(board.summary()) in markdown
    for cells in quant_cells(board)[1]:
        assert "| " + " | ".join(cells) + " |" in markdown
        assert f"{cells[1]}: eval " in markdown
    page = (build_site(lab) / "studies" / "quant" / "index.html").read_text()
    assert "tradeoff.svg" in page and html.escape(board.summary(), quote=False) in page
    assert all(f"<td class=\"r\">{html.escape(cells[3])}</td>" in page for cells in quant_cells(board)[1])
    assert "## Studies" in new_post(lab, "Quantization week").read_text()

    # A file exported again in place (here: other weights at the q4_0 path) keeps its path, so every setting: its
    # old evaluation is no longer its row, and the study evaluates the new file.
    shutil.copyfile(gguf_file(lab, str(tiny_model_dir), "q8_0"), gguf_file(lab, str(tiny_model_dir), "q4_0"))
    assert [r.type for r in recorded_quantization(lab, study)] == ["f16", "q8_0"]
    redone = run_quantization(lab, study, Console(stderr=True))
    assert [r.eval.id == old.eval.id for r, old in zip(redone, rows, strict=True)] == [True, True, False]
    assert redone[2].eval.run.system.model.revision == redone[1].eval.run.system.model.revision


def test_a_model_changed_in_place_is_exported_and_evaluated_again(lab, tiny_model_dir, tmp_path):
    """A base model folder re-downloaded (or retrained) in place keeps its name, so its GGUF file's name: the
    study notices the weights changed, exports them again and evaluates the new file."""
    import shutil

    import torch
    from rich.console import Console
    from safetensors.torch import load_file, save_file

    from llamalab.studies.quantization import run_quantization

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_study(lab, "quant2", f"kind: quantization\nquantize: {{systems: ['{model}'], types: [f16, q8_0]}}\n"
                               "eval: {task: sentiment, limit: 6}\n")
    study = load_study(lab, "quant2")
    first = run_quantization(lab, study, Console(stderr=True))
    assert [r.eval.id for r in run_quantization(lab, study, Console(stderr=True))] == [r.eval.id for r in first]
    weights = model / "model.safetensors"
    save_file({k: v + 0.05 * torch.randn_like(v) for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    again = run_quantization(lab, study, Console(stderr=True))
    assert all(new.eval.id != old.eval.id for new, old in zip(again, first, strict=True))
    assert all(new.eval.run.system.model.revision != old.eval.run.system.model.revision
               for new, old in zip(again, first, strict=True))


KILL_SCRIPT = """
import os, signal, sys
from rich.console import Console
from transformers import TrainerCallback
from llamalab.lab import find_lab
from llamalab.studies import run as study_run
from llamalab.studies.spec import load_study
from llamalab.training import trainer

original, calls = trainer.train, []

class KillAtCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind, like a lost machine

def train(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # the third cell dies at its first checkpoint
        kwargs["callbacks"] = [KillAtCheckpoint()]
    return original(*args, **kwargs)

trainer.train = train
lab = find_lab(sys.argv[1])
study_run.run_study(lab, load_study(lab, sys.argv[2]), Console(stderr=True))
"""


@pytest.mark.slow
def test_a_killed_study_continues_and_ends_as_an_uninterrupted_one(tmp_path, tiny_model_dir):
    import subprocess
    import sys

    from rich.console import Console

    from llamalab.lab import init_lab

    study_text = STUDY.replace("comparators: {dev_limit: 8}", "comparators: {baselines: false}")
    labs = []
    for name in ("killed", "clean"):
        lab = init_lab(tmp_path / name)
        write_experiment(lab, "tiny", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 4\nsave_steps: 2\n"
                                      "lora: {r: 4, alpha: 8}\n")
        write_study(lab, "tiny-scaling", study_text)
        labs.append(lab)
    killed, clean = labs

    child = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(killed.root), "tiny-scaling"],
                           capture_output=True, timeout=600)
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    study = load_study(killed, "tiny-scaling")
    assert [s.status for s in cell_states(killed, study)] == ["finished", "finished", "interrupted", "pending"]

    # The two cells left run at once, each in a process of its own (`study run --max-parallel 2`).
    console = Console(stderr=True, record=True, width=200)
    states, _ = run_study(killed, study, console, max_parallel=2)
    said = console.export_text()
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert "2 finished (skipped), 2 to run" in said and f"2 cells at once, {threads} thread(s) each" in said
    logs = killed.runs_dir / ".jobs" / "tiny-scaling"
    assert {p.stem for p in logs.glob("*.log")} == {s.cell.key for s in states[2:]}
    interrupted = states[2].train
    assert interrupted.run.resumed, "the killed training continued from its checkpoint, in the same run"
    reference, _ = run_study(clean, load_study(clean, "tiny-scaling"), Console(stderr=True))
    assert [s.cell.key for s in states] == [s.cell.key for s in reference]
    assert [s.eval.run.metrics for s in states] == [s.eval.run.metrics for s in reference]
    ours, theirs = scaling_result(states, [], "accuracy"), scaling_result(reference, [], "accuracy")
    assert [p.interval for p in ours.curve] == [p.interval for p in theirs.curve]


def test_scaling_numbers_match_an_independent_computation_on_random_records(tmp_path):
    """Curve points sit at the mean over seeds of the examples trained on, at the mean over seeds of each eval's
    accuracy on the shared examples; every band holds its point; each crossover test's Δ is that mean minus the
    comparator's accuracy; Holm never lowers a p-value; the crossover is the first size that is better after
    correction."""
    from llamalab.runs.files import append_jsonl, read_jsonl
    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import CellState
    from llamalab.studies.spec import Cell
    from tests.records import eval_fields, train_fields

    rng = np.random.default_rng(11)

    def fake_eval(name: str, n: int, p: float) -> RunRecord:
        record = RunRecord.create(tmp_path / "runs", "eval", name, {"system": name}, **eval_fields(label=name, n=n))
        correct = rng.random(n) < p
        append_jsonl(record.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive" if ok else "negative", "correct": bool(ok)}
            for i, ok in enumerate(correct)])
        record.update(status="finished")
        return record

    for case in range(6):
        n, seeds = int(rng.integers(20, 80)), int(rng.integers(1, 4))
        sizes = sorted(rng.choice([10, 20, 40, 80, 160], size=int(rng.integers(2, 5)), replace=False).tolist())
        states, accuracy, trained = [], {}, {}
        for size in sizes:
            used = []
            for seed in range(seeds):
                record = fake_eval(f"c{case}-{size}-{seed}", n, min(0.95, 0.4 + size / 200))
                cell = Cell({"train_examples": size, "seed": seed}, {}, f"{case}-{size}-{seed}")
                train = None
                if rng.random() < 0.7:  # else an older record that does not say: the size asked
                    train = RunRecord.create(tmp_path / "runs", "train", f"t{case}-{size}-{seed}", {"n": size},
                                             **train_fields())
                    train.update(status="finished", data_used={"train_examples": size - int(rng.integers(0, 3))})
                used.append(train.run.data_used.train_examples if train else size)
                states.append(CellState(cell, "finished", train, record))
                rows = read_jsonl(record.folder / "predictions.jsonl")
                accuracy.setdefault(size, []).append(np.mean([r["correct"] for r in rows]))
            trained[size] = round(float(np.mean(used)))  # the point sits at the examples trained on
        accuracy = {trained[size]: values for size, values in accuracy.items()}
        sizes = [trained[size] for size in sizes]
        comparator = fake_eval(f"base{case}", n, 0.6)
        comparator.update(metrics={"accuracy": {"estimate": 0.6, "low": 0.5, "high": 0.7, "n": n}})
        theirs = np.mean([r["correct"] for r in read_jsonl(comparator.folder / "predictions.jsonl")])
        result = scaling_result(states, [("base", comparator)], "accuracy", resamples=300)
        assert [p.size for p in result.curve] == sizes
        for point in result.curve:
            assert point.seeds == seeds and point.interval.n == n
            assert point.interval.estimate == pytest.approx(np.mean(accuracy[point.size]))
            assert point.interval.low <= point.interval.estimate <= point.interval.high
        [crossover] = result.crossovers
        for test in crossover.tests:
            assert test.delta == pytest.approx(np.mean(accuracy[test.size]) - theirs)
            assert test.p_holm >= test.p_value and test.n == n
        better = [t.size for t in crossover.tests if t.delta > 0 and t.p_holm < 0.05]
        assert crossover.size == (better[0] if better else None)
        # A comparator evaluated on other examples altogether is not compared, and says so
        apart = fake_eval(f"apart{case}", n, 0.6)
        rows = read_jsonl(apart.folder / "predictions.jsonl")
        (apart.folder / "predictions.jsonl").unlink()
        append_jsonl(apart.folder / "predictions.jsonl", [{**r, "id": "y" + r["id"]} for r in rows])
        apart.update(metrics={"accuracy": {"estimate": 0.6, "low": 0.5, "high": 0.7, "n": n}})
        again = scaling_result(states, [("base", comparator), ("apart", apart)], "accuracy", resamples=300)
        assert [c.comparator for c in again.crossovers] == ["base"] and again.crossovers[0] == crossover
        [untested] = again.untested
        assert (untested.comparator, untested.run, untested.sizes) == ("apart", apart.id, tuple(sizes))
        assert untested.sentence().startswith(f"apart (eval {apart.id}) shares no test example with the fine-tunes")


def test_quantization_rows_match_an_independent_computation_on_random_records(lab):
    """Each type's Δ is its accuracy minus the same system's f16 accuracy on the examples both saw; the interval is
    the run's own; f16 is the reference; a file that is gone has no size (never a made-up one)."""
    from llamalab.evaluation.compare import format_p
    from llamalab.publish.results import QuantBoard
    from llamalab.publish.tables import quant_caption, quant_cells
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from llamalab.studies.quantization import gguf_file, quant_rows
    from tests.records import eval_fields

    write_study(lab, "q", "kind: quantization\nquantize: {systems: [a, b], types: [f16, q8_0, q4_0]}\n"
                          "eval: {task: sentiment}\n")
    study = load_study(lab, "q")
    rng = np.random.default_rng(5)
    for _ in range(5):
        records, accuracy = {}, {}
        for system in ("a", "b"):
            n = int(rng.integers(10, 60))
            for quant in ("f16", "q8_0", "q4_0"):
                record = RunRecord.create(lab.runs_dir, "eval", f"{system}-{quant}", {"q": quant},
                                          **eval_fields(label=system, n=n))
                ids = rng.permutation(n)[: n - int(rng.integers(0, 3))]  # a type may miss a few examples
                correct = {f"x{i}": bool(rng.random() < rng.uniform(0.4, 0.9)) for i in ids}
                append_jsonl(record.folder / "predictions.jsonl", [
                    {"id": i, "gold": "positive", "prediction": "positive" if ok else "negative", "correct": ok}
                    for i, ok in correct.items()])
                record.update(status="finished", metrics={"accuracy": {
                    "estimate": float(np.mean(list(correct.values()))), "low": 0.0, "high": 1.0, "n": len(ids)}})
                records[(system, quant)], accuracy[(system, quant)] = record, correct
        gguf_file(lab, "a", "q8_0").parent.mkdir(parents=True, exist_ok=True)
        gguf_file(lab, "a", "q8_0").write_bytes(b"\0" * 3 * 2**20)
        gguf_file(lab, "a", "f16").write_bytes(b"\0" * 6 * 2**20)
        rows = quant_rows(lab, study, records)
        summary = QuantBoard(study, rows, "accuracy").summary()  # the sentence the report, site and post show
        for row in rows:
            if row.delta is not None:
                size = " at 50% of its size" if (row.system, row.type) == ("a", "q8_0") else ""
                subset = f" (n={row.n_paired:,})" if row.paired_subset else ""
                assert f"{row.system} {row.type}: {row.delta:+.3f}{subset} accuracy against f16{size} (p " in summary
        for row in rows:
            mine = accuracy[(row.system, row.type)]
            assert row.interval == records[(row.system, row.type)].run.metrics["accuracy"]
            assert row.size_mib == {("a", "q8_0"): 3.0, ("a", "f16"): 6.0}.get((row.system, row.type))
            if row.type == "f16":
                assert row.delta is None and row.p_value is None
                continue
            f16 = accuracy[(row.system, "f16")]
            shared = sorted(mine.keys() & f16.keys())
            assert row.delta == pytest.approx(np.mean([mine[i] for i in shared]) - np.mean([f16[i] for i in shared]))
            assert 0 < row.p_value <= 1 and row.test == "exact McNemar"
            assert row.n_paired == len(shared) and row.paired_subset == (len(shared) < max(len(mine), len(f16)))
            cell = next(c for c in quant_cells(QuantBoard(study, rows, "accuracy"))[1] if c[:2] == [row.system,
                                                                                                   row.type])
            assert cell[4].endswith(f" (n={len(shared):,})") == row.paired_subset
        # Holm over the study's four type-against-f16 tests, recomputed step-down by hand
        tested = sorted((r for r in rows if r.p_value is not None), key=lambda r: r.p_value)
        assert len(tested) == 4
        running = 0.0
        for k, row in enumerate(tested):
            running = max(running, min(1.0, (4 - k) * row.p_value))
            assert row.p_holm == pytest.approx(running) and row.p_holm >= row.p_value
            assert f"{row.system} {row.type}: {row.delta:+.3f}" in summary
            assert f"(p {format_p(row.p_holm)}, Holm)" in summary
        caption = quant_caption(QuantBoard(study, rows, "accuracy"))
        assert "Holm-corrected for the 4 such tests" in caption
        methods = {str(r.interval.method or "method not recorded").split(",")[0] for r in rows}  # as recorded
        assert len(methods) == 1 and caption.endswith(f"95% CIs: {methods.pop()}.")
    # Interrupted before b's f16 was evaluated: b's types have no Δ yet, and only an f16 row is the reference
    del records[("b", "f16")]
    cells = {(c[0], c[1]): c for c in quant_cells(QuantBoard(study, quant_rows(lab, study, records), "accuracy"))[1]}
    assert cells[("a", "f16")][4] == "reference" and cells[("a", "q8_0")][4].startswith(("+", "−", "-", "0"))
    assert cells[("b", "q8_0")][4] == cells[("b", "q4_0")][4] == "–" and cells[("b", "q8_0")][5] == ""


def test_sweep_numbers_match_an_independent_computation_on_random_records(tmp_path):
    """Each setting's point is the mean over its seeds of accuracy on the examples all its seeds saw (its band
    holds it); settings are best first; each Δ is (mean over seeds) minus the best's on the examples both saw;
    Holm never lowers a p-value; a setting is worse only with Δ < 0 and Holm p < 0.05; the sentence counts them."""
    from llamalab.publish.results import SweepBoard
    from llamalab.publish.tables import sweep_cells
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import CellState
    from llamalab.studies.spec import Cell
    from llamalab.studies.sweep import AS_WRITTEN, sweep_result
    from tests.records import eval_fields

    rng = np.random.default_rng(12)
    for case in range(8):
        n, seeds = int(rng.integers(30, 90)), int(rng.integers(1, 4))
        rates = sorted(rng.choice([1e-4, 2e-4, 5e-4, 1e-3], size=int(rng.integers(1, 5)), replace=False).tolist())
        states, correct = [], {}
        for k, rate in enumerate(rates):
            quality = float(rng.uniform(0.3, 0.9))
            prefix = "y" if k and rng.random() < 0.25 else "x"  # a setting evaluated on other examples altogether
            for seed in range(seeds):
                ids = [i for i in range(n) if rng.random() > 0.1]  # a few examples missing, as after a crash
                name = f"c{case}-{rate}-{seed}"
                record = RunRecord.create(tmp_path / "runs", "eval", name, {"s": name}, **eval_fields(n=len(ids)))
                hits = {f"{prefix}{i}": bool(rng.random() < quality) for i in ids}
                append_jsonl(record.folder / "predictions.jsonl", [
                    {"id": i, "gold": "positive", "prediction": "positive" if ok else "negative", "correct": ok}
                    for i, ok in hits.items()])
                record.update(status="finished")
                overrides = {"learning_rate": rate, "seed": seed} if case else {"seed": seed}
                states.append(CellState(Cell(overrides, {}, name), "finished", None, record))
                correct.setdefault(f"learning_rate={rate}" if case else AS_WRITTEN, []).append(hits)
            if not case:
                break  # the experiment as written, seeds only
        result = sweep_result(states, "accuracy", resamples=300)

        def mean_on(setting: str, ids: set[str], correct=correct) -> float:
            return float(np.mean([np.mean([seed[i] for i in sorted(ids)]) for seed in correct[setting]]))

        def seen(setting: str, correct=correct) -> set[str]:
            return set.intersection(*(set(seed) for seed in correct[setting]))

        assert sorted(p.setting for p in result.points) == sorted(correct)
        estimates = [p.interval.estimate for p in result.points]
        assert estimates == sorted(estimates, reverse=True)
        best = result.best
        assert best.delta is None and best.p_value is None
        for point in result.points:
            assert point.seeds == seeds and point.interval.n == len(seen(point.setting))
            assert point.interval.estimate == pytest.approx(mean_on(point.setting, seen(point.setting)))
            assert point.interval.low <= point.interval.estimate <= point.interval.high
        tested = [p for p in result.points[1:] if seen(p.setting) & seen(best.setting)]
        for point in result.points[1:]:
            both = seen(point.setting) & seen(best.setting)
            if not both:  # nothing to test on: no Δ, no p, and not in Holm's family
                assert point.delta is None and point.p_holm is None and not point.tested
                continue
            assert point.n_shared == len(both)
            assert point.delta == pytest.approx(mean_on(point.setting, both) - mean_on(best.setting, both))
            assert point.p_holm >= point.p_value
            assert point.p_holm <= min(1.0, len(tested) * point.p_value) + 1e-12  # a family of the tests that ran
            assert point.worse == (point.delta < 0 and point.p_holm < 0.05)
            assert point.better == (point.delta > 0 and point.p_holm < 0.05)
        worse = sum(p.worse for p in result.points[1:])
        if len(result.points) > 1:
            assert f" {worse} of the {len(result.points) - 1} other setting(s) are worse" in result.sentence()
            untested = len(result.points) - 1 - len(tested)
            assert (f"; {untested} share no test examples" in result.sentence()) == (untested > 0)
        _, body = sweep_cells(SweepBoard(None, states, result))  # the table the report and the site show
        for i, (row, point) in enumerate(zip(body, result.points, strict=True)):
            assert row[2] == f"{point.interval.estimate:.3f}" and row[6] == f"{point.interval.n:,}"
            if point.delta is not None:
                fewer = point.n_shared != point.interval.n or point.n_shared != result.points[0].interval.n
                shared = f" (n={point.n_shared:,})" if fewer else ""  # fewer than this setting or the best saw
                assert row[4] == f"{round(point.delta, 3) + 0.0:+.3f}{shared}"
                assert row[5].endswith(" *") == (point.worse or point.better)
            else:
                assert row[4] == ("best" if i == 0 else "not tested: no examples in common")


@pytest.mark.parametrize("seed", range(200))
def test_the_sweep_sentence_counts_every_other_setting_once(seed):
    """Worse, better on the examples both saw, untested and not told apart add up to the other settings, and the
    sentence never says "cannot be told apart" of a setting the test did tell apart."""
    import random as stdlib_random

    from llamalab.studies.sweep import SweepPoint, SweepResult

    rng = stdlib_random.Random(seed)
    m = Interval(estimate=0.8, low=0.7, high=0.9, n=100, method="t")
    points = [SweepPoint("best", 1, m, ("r",))]
    kinds = [rng.choice(["worse", "better", "apart", "untested"]) for _ in range(rng.randint(0, 6))]
    for k, kind in enumerate(kinds):
        delta, p = {"worse": (-0.1, 0.01), "better": (0.05, 0.02), "apart": (rng.choice([-0.02, 0.0, 0.02]), 0.3),
                    "untested": (None, None)}[kind]
        points.append(SweepPoint(f"s{k}", 1, m, ("r",), delta, p, p, None if p is None else 100))
    text = SweepResult("accuracy", tuple(points)).sentence()
    count = {kind: kinds.count(kind) for kind in ("worse", "better", "apart", "untested")}
    if not kinds:
        assert "other setting" not in text
        return
    assert f" {count['worse']} of the {len(kinds)} other setting(s) are worse at Holm-corrected p < 0.05" in text
    assert (f"; {count['better']} are better on the examples both saw" in text) == (count["better"] > 0)
    assert (f"; {count['untested']} share no test examples with it" in text) == (count["untested"] > 0)
    assert (f"; {count['apart']} cannot be told apart from it." in text) == (count["apart"] > 0)


@pytest.mark.slow
def test_sweep_study_is_in_status_the_report_and_the_site(study_lab):
    """A sweep over two learning rates, two seeds each: `study status`, the report and the site show the same
    table (the report's and the site's numbers come from one function) and the same sentence."""
    lab = study_lab
    write_study(lab, "tiny-sweep", "kind: sweep\nexperiment: tiny\ngrid:\n  learning_rate: [0.0001, 0.001]\n"
                                   "seeds: [0, 1]\neval: {limit: 12}\ncomparators: {baselines: false}\n")
    study = load_study(lab, "tiny-sweep")
    from rich.console import Console

    states, _ = run_study(lab, study, Console(stderr=True))
    assert [s.status for s in states] == ["finished"] * 4
    from llamalab.publish.results import study_boards
    from llamalab.publish.tables import sweep_cells

    [board] = [b for b in study_boards(lab) if b.name == "tiny-sweep"]
    result = board.result
    assert sorted(p.setting for p in result.points) == ["learning_rate=0.0001", "learning_rate=0.001"]
    for point in result.points:
        estimates = [s.eval.run.metrics["accuracy"].estimate for s in states
                     if f"learning_rate={s.cell.overrides['learning_rate']}" == point.setting]
        assert point.seeds == 2 and point.interval.estimate == pytest.approx(np.mean(estimates))
    header, body = sweep_cells(board)
    assert body[0][:2] == [result.best.setting, "2"] and body[0][4] == "best"

    from typer.testing import CliRunner

    from llamalab.cli import app

    status = CliRunner().invoke(app, ["study", "status", "tiny-sweep", "--lab", str(lab.root)])
    assert status.exit_code == 0, status.output
    flat = " ".join(status.stdout.split())
    assert " ".join(result.sentence().split()) in flat and "optimistic" in flat  # evaluated on test

    from llamalab.publish.report import build_report
    from llamalab.publish.site import build_site

    report = build_report(lab, "sweep")
    markdown = (report / "README.md").read_text()
    assert "## Study: tiny-sweep" in markdown and md_escape(result.sentence()) in markdown
    table = (report / "tables" / "study-tiny-sweep.md").read_text()
    for cells in body:
        assert "| " + " | ".join(cells) + " |" in table
    assert (report / "figures" / "study-tiny-sweep.png").is_file() and all(s.eval.id in markdown for s in states)
    site = build_site(lab)
    page = (site / "studies" / "tiny-sweep" / "index.html").read_text()
    assert (site / "studies" / "tiny-sweep" / "settings.svg").is_file() and "settings.svg" in page
    import html

    assert html.escape(result.sentence(), quote=False) in page
    for cells in body:
        assert all(html.escape(c, quote=False) in page for c in cells)


def test_systems_whose_names_slug_alike_get_export_files_of_their_own(lab):
    from llamalab.studies.quantization import gguf_file

    names = ["org/model", "org-model", "/data/a b", "data/a-b", "x" * 90 + "1", "x" * 90 + "2"]
    files = {gguf_file(lab, name, "q8_0") for name in names}
    assert len(files) == len(names)
    assert gguf_file(lab, "org/model", "q8_0") == gguf_file(lab, "org/model", "q8_0")  # the same name, reused



def test_an_export_file_name_gives_back_its_type_for_random_system_names(lab):
    """One rule names an export's file and reads its type back (the study, the systems of the report and records
    from before schema 9 all read it): random names, with dashes, slashes, spaces and hex-looking parts."""
    import random

    from llamalab.runs.schema import EvalRun, SystemInfo, gguf_export_type
    from llamalab.studies.quantization import gguf_file, lab_name
    from tests.records import eval_fields

    def export_type(system):
        return EvalRun.model_construct(system=SystemInfo.model_validate(system)).export_type

    rng = random.Random(7)
    alphabet = "ab-/_. 0f9Zé"
    for _ in range(300):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        quant = rng.choice(["f16", "q8_0", "q4_0", "q4_k_m", "q5_k_s", "iq2_xxs"])
        path = gguf_file(lab, name, quant)
        assert path.parent == lab.runs_dir / ".gguf" and gguf_export_type(path.name) == quant, name
        system = eval_fields(model=lab_name(lab, path))["system"]  # a record from before schema 9
        assert SystemInfo.model_validate(system).quantized is None
        assert export_type(system) == quant, name
    assert gguf_export_type("my-model.gguf") is None and gguf_export_type("a-0123abcd-q8_0.bin") is None


def test_a_scaling_point_sits_at_the_examples_trained_on_and_a_size_past_the_split_is_refused(lab, tmp_path):
    """Asked 40, trained on 38 (two rows too long): the point is at 38, as the task page puts that run. Two sizes
    that trained on the same examples are not two points; a size past the train split is refused before training."""
    from rich.console import Console

    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import CellState
    from llamalab.studies.spec import Cell
    from tests.records import eval_fields, train_fields

    def cell(asked: int, used: int, seed: int = 0) -> CellState:
        trained = RunRecord.create(tmp_path / "runs", "train", f"t{asked}", {"n": asked}, **train_fields())
        trained.update(status="finished", data_used={"train_examples": used})
        evaluated = RunRecord.create(tmp_path / "runs", "eval", f"e{asked}", {"n": asked}, **eval_fields(n=4))
        append_jsonl(evaluated.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive", "correct": i % 2 == 0} for i in range(4)])
        evaluated.update(status="finished")
        return CellState(Cell({"train_examples": asked, "seed": seed}, {}, f"{asked}-{seed}"), "finished", trained,
                         evaluated)

    result = scaling_result([cell(40, 38), cell(80, 80)], [], "accuracy", resamples=100)
    assert [p.size for p in result.curve] == [38, 80]
    with pytest.raises(LlamalabError, match="train_examples 9,000 and 20,000 both trained on 8,530 examples"):
        scaling_result([cell(9000, 8530), cell(20000, 8530)], [], "accuracy", resamples=100)

    write_experiment(lab, "exp", "task: sentiment\nmax_steps: 1\n")
    write_study(lab, "big", "kind: scaling\nexperiment: exp\ngrid: {train_examples: [100, 10000000]}\n")
    with pytest.raises(LlamalabError, match=r"train_examples 10,000,000 is more than task 'sentiment'.s train split"):
        run_study(lab, load_study(lab, "big"), Console(quiet=True))
    assert not list_runs(lab.runs_dir)  # nothing trained


def test_a_cells_run_on_weights_changed_since_is_not_the_cells(lab, tiny_model_dir, tmp_path):
    """A base model folder rewritten in place (same name, same settings hash): the cells trained on the old weights
    are pending again, as `train(reuse=True)` would train them again."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from llamalab.models import resolve_model
    from llamalab.runs.record import RunRecord
    from tests.records import train_fields

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    write_experiment(lab, "exp", f"task: sentiment\nbase_model: {model}\nmax_steps: 2\n")
    write_study(lab, "weights", "experiment: exp\ngrid: {learning_rate: [1e-4, 1e-3]}\n")
    study = load_study(lab, "weights")
    fields = {**train_fields(experiment="exp"), "model": {"name": str(model), "revision": resolve_model(
        str(model)).revision}}
    for cell in study.cells:
        RunRecord.create(lab.runs_dir, "train", "exp", cell.config, **fields).update(status="finished")
    assert [s.status for s in cell_states(lab, study)] == ["trained", "trained"]
    weights = model / "model.safetensors"
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in load_file(weights).items()}, weights,
              metadata={"format": "pt"})
    assert [s.status for s in cell_states(lab, study)] == ["pending", "pending"]


def test_a_quantization_row_evaluated_before_the_tasks_data_changed_is_not_the_rows(lab):
    """As the leaderboard leaves out an evaluation on the task's earlier data, the study does not take it as its
    f16 reference (it did: the table compared q8_0 on today's data with f16 on yesterday's)."""
    from llamalab.config import parse_model
    from llamalab.evaluation.evaluate import EvalSettings, complete_settings
    from llamalab.evaluation.systems import system_outline
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from llamalab.studies.quantization import gguf_file, lab_name, recorded_quantization
    from llamalab.tasks.data import current_file_hashes
    from llamalab.tasks.task import load_task
    from tests.records import eval_fields

    name = "smollm2-135m-instruct"
    write_study(lab, "q", f"kind: quantization\nquantize: {{systems: [{name}], types: [f16, q8_0]}}\n"
                          "eval: {task: sentiment, limit: 20}\n")
    task = load_task(lab.task_path("sentiment"), lab.root)
    now = current_file_hashes(task)
    made = {}
    for quant, hashes in (("f16", {path: "0" * 64 for path in now}), ("q8_0", now)):
        path = gguf_file(lab, name, quant)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF" + bytes(64))
        # as the study evaluates it; q8_0 as earlier versions did, by its absolute path (still the file's row)
        system = lab_name(lab, path) if quant == "f16" else str(path)
        settings = parse_model(EvalSettings, {"system": system, "task": "sentiment", "split": "test",
                                              "limit": 20, "backend": "llama.cpp"}, "test")
        config = complete_settings(settings, task, system_outline(lab, system)).model_dump()
        fields = eval_fields(label=system, n=20, backend="llama.cpp")
        fields["task"]["data_sha256"] = hashes
        record = RunRecord.create(lab.runs_dir, "eval", system, config, **fields)
        append_jsonl(record.folder / "predictions.jsonl", [
            {"id": f"x:{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(20)])
        record.update(status="finished", metrics={"accuracy": {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 20}})
        made[quant] = record.id
    rows = recorded_quantization(lab, load_study(lab, "q"))
    assert [(r.type, r.eval.id) for r in rows] == [("q8_0", made["q8_0"])]
    assert rows[0].delta is None  # no f16 on today's data to test against yet


def test_a_cells_time_counts_its_evaluations_model_loading(tmp_path):
    """The study table said 6 s where the progress line said 12 s: an evaluation's total_s leaves out the loading
    of its model, which the cell's time now adds."""
    from llamalab.runs.record import RunRecord
    from llamalab.studies.run import CellState
    from llamalab.studies.spec import Cell
    from tests.records import eval_fields, train_fields

    trained = RunRecord.create(tmp_path, "train", "x", {}, **train_fields())
    trained.update(timings={"total_s": 4.0})
    evaluated = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
    evaluated.update(timings={"total_s": 2.0, "load_model_s": 5.5})
    cell = Cell("k", {}, "x")
    assert CellState(cell, "finished", trained, evaluated).seconds == 11.5
    assert CellState(cell, "trained", trained).seconds == 4.0


def test_a_cell_that_fails_before_its_train_record_is_failed_not_pending(lab, tiny_model_dir):
    """A cell whose base model is not there fails before it writes a record: it showed as pending, and a plain
    rerun tried it again instead of leaving it to --retry-failed."""
    from rich.console import Console

    write_experiment(lab, "exp", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\ntrain_examples: 8\n"
                                 "lora: {r: 4, alpha: 8}\n")
    write_study(lab, "fails", "kind: sweep\nexperiment: exp\ncells: [{base_model: ./no-such-model}]\n"
                              "eval: {split: test, limit: 4}\ncomparators: {baselines: false}\n")
    study = load_study(lab, "fails")
    with pytest.raises(LlamalabError, match="1 of 1 cell"):
        run_study(lab, study, Console(stderr=True))
    assert [s.status for s in cell_states(lab, study)] == ["failed"]
    console = Console(record=True, width=200)
    with pytest.raises(LlamalabError, match="1 of 1 cell"):
        run_study(lab, study, console, retry_failed=True)  # tried again only when asked
    run_study(lab, study, Console(record=True, width=200))  # a plain rerun leaves it alone
    assert [s.status for s in cell_states(lab, study)] == ["failed"]


def test_a_cell_whose_evaluation_fails_before_its_record_is_failed_not_trained(lab, tiny_model_dir):
    """Trained, but its evaluation failed before it wrote a record (here: the run's weights are gone): the cell
    showed as trained, so every plain rerun tried it again and the summary did not count it as failed."""
    import shutil

    from rich.console import Console

    from llamalab.training.trainer import train

    write_experiment(lab, "exp", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\ntrain_examples: 8\n"
                                 "lora: {r: 4, alpha: 8}\n")
    write_study(lab, "evalfails", "experiment: exp\ngrid: {learning_rate: [1e-3]}\neval: {limit: 4}\n")
    study = load_study(lab, "evalfails")
    [cell] = study.cells
    record = train(lab, str(study.experiment_file), **cell.overrides)
    assert [s.status for s in cell_states(lab, study)] == ["trained"]
    # an earlier training failure's note says nothing of the run trained since (by hand, here)
    from llamalab.studies.run import _failed_marker

    marker = _failed_marker(lab, study, cell)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("training: LlamalabError: base model not found\n")
    assert [s.status for s in cell_states(lab, study)] == ["trained"]
    shutil.rmtree(record.folder / "adapter")
    with pytest.raises(LlamalabError, match="(?s)1 of 1 cell.*no trained weights"):
        run_study(lab, study, Console(stderr=True))
    assert [s.status for s in cell_states(lab, study)] == ["failed"] and list_runs(lab.runs_dir, "eval") == []
    console = Console(record=True, width=200)
    run_study(lab, study, console)  # a plain rerun leaves it to --retry-failed
    assert "1 failed (rerun with --retry-failed)" in console.export_text()


def test_a_fine_tuned_runs_quantized_exports_are_that_runs_not_base_models(study_lab, tmp_path):
    """A quantization study of a fine-tuned run records each GGUF evaluation as that run's weights at the file's
    type (kind finetuned, its train run, `quantized`), each export a system of its own on the leaderboard; the
    scaling figure does not draw them as baselines or points of the run's curve, the methods text says what they
    are, and an evaluation an earlier llamalab recorded as a base model is not taken for them."""
    import json

    from rich.console import Console

    from llamalab.assignments.references import choose_references
    from llamalab.evaluation.evaluate import evaluate
    from llamalab.publish.methods import methods_paragraphs
    from llamalab.publish.results import scaling_points, task_boards, train_runs
    from llamalab.runs.files import write_json_atomic
    from llamalab.studies.quantization import gguf_file, recorded_quantization, run_quantization
    from llamalab.training.trainer import train

    lab = study_lab
    run = train(lab, "tiny")
    own = evaluate(lab, run.id, task="sentiment", split="test", limit=6)
    write_study(lab, "q", f"kind: quantization\nquantize: {{systems: ['{run.id}'], types: [f16, q8_0]}}\n"
                          "eval: {task: sentiment, limit: 6}\n")
    study = load_study(lab, "q")
    rows = run_quantization(lab, study, Console(stderr=True))
    source = json.loads(gguf_file(lab, run.id, "f16").with_name(gguf_file(lab, run.id, "f16").name
                                                                  + ".source.json").read_text())
    assert source["adapter"] == f"runs/{run.id}/adapter"  # no machine's path
    for row in rows:
        system = row.eval.run.system
        assert (system.kind, system.train_run, system.quantized) == ("finetuned", run.id, row.type)
        assert system.label == f"tiny@{run.id[-4:]} {row.type}"
        assert row.eval.run.prompt.format == run.run.prompt.format
    board = next(b for b in task_boards(lab) if b.name == "sentiment")
    assert sorted(r.run for r in board.rows) == sorted([own.id, *(r.eval.id for r in rows)])
    assert scaling_points(board, {r.id: r for r in train_runs(lab)}) == {}  # one size: no curve, exports no points
    text = " ".join(methods_paragraphs(board, {run.id: run}))
    assert f"is fine-tuned run {run.id}'s weights at GGUF type q8_0, run by the llama.cpp backend" in text
    with pytest.raises(LlamalabError, match="GGUF export"):
        choose_references(lab, board.task, [rows[1].eval.id], margin=0.0)
    # `--reference` with the run's id (or label) names its own evaluation, not also its exports
    from llamalab.evaluation.compare import compare

    assert compare(lab, "sentiment", reference=run.id).reference == own.run.display_label
    assert compare(lab, "sentiment", reference=f"tiny@{run.id[-4:]}").reference == own.run.display_label
    # A clone without the (git-ignored) exports still has the study's rows (sizes unknown)
    import shutil

    shutil.move(lab.runs_dir / ".gguf", tmp_path / "gguf-away")
    assert [(r.eval.id, r.size_mib) for r in recorded_quantization(lab, study)] == [(r.eval.id, None) for r in rows]
    shutil.move(tmp_path / "gguf-away", lab.runs_dir / ".gguf")

    # An evaluation recorded as a base model (as an earlier llamalab did) is not the study's: it runs again.
    record = rows[1].eval
    data = json.loads((record.folder / "run.json").read_text())
    data["system"].update(kind="base", train_run=None, label=data["system"]["model"]["name"])
    data["system"].pop("quantized")
    data["schema_version"] = 8
    write_json_atomic(record.folder / "run.json", data)
    assert [r.type for r in recorded_quantization(lab, study)] == ["f16"]
    again = run_quantization(lab, study, Console(stderr=True))
    assert again[0].eval.id == rows[0].eval.id and again[1].eval.id != record.id
    assert again[1].eval.run.system.quantized == "q8_0"
    board = next(b for b in task_boards(lab) if b.name == "sentiment")
    assert record.id not in {r.run for r in board.rows}  # the same file's newer evaluation replaces it

    # Another study naming the run by a part of its id shares its files and evaluations (it exported and
    # evaluated it again, under a second file name: two leaderboard rows with one label)
    files = sorted(p.name for p in (lab.runs_dir / ".gguf").iterdir())
    write_study(lab, "q2", f"kind: quantization\nquantize: {{systems: ['{run.id[-4:]}'], types: [f16, q8_0]}}\n"
                           "eval: {task: sentiment, limit: 6}\n")
    spelled = run_quantization(lab, load_study(lab, "q2"), Console(stderr=True))
    assert [r.eval.id for r in spelled] == [r.eval.id for r in again]
    assert sorted(p.name for p in (lab.runs_dir / ".gguf").iterdir()) == files


def test_a_slurm_jobs_failure_is_said_by_its_cause_not_submitits_first_line():
    """submitit's errors begin with a line that says nothing ("Job (task=0) failed during processing with
    trace:"); the cell's error, or the state Slurm ended the job in, is what `study run` says."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from llamalab.studies.run import job_failure

    trace = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    f()\n'
             "llamalab.config.LlamalabError: run x has no trained weights (adapter/ or model/)")
    failed = FailedJobError(f"Job (task=0) failed during processing with trace:\n{'-' * 22}\n{trace}\n{'-' * 22}\n"
                            "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
                            "  - /a/err\n  - /a/out")
    assert job_failure(failed) == "llamalab.config.LlamalabError: run x has no trained weights (adapter/ or model/)"
    cancelled = UncompletedJobError("Job 123_0 (task: 0) with path /x/123_0_0_result.pkl\n"
                                    "has not produced any output (state: CANCELLED by 1000)\nError stream produced:\n"
                                    f"{'-' * 40}\nslurmstepd: error: *** JOB 123 CANCELLED ***")
    assert job_failure(cancelled) == "the job ended without a result (Slurm state CANCELLED by 1000)"
    assert job_failure(RuntimeError("boom\nmore")) == "RuntimeError: boom"


def test_a_run_stopped_at_its_slurm_time_limit_is_interrupted_not_failed(tmp_path):
    """submitit raises UncompletedJobError in a job Slurm stops at its time limit: the run continues from its
    checkpoint on a plain rerun, so it is interrupted (it was failed, and left to --retry-failed)."""
    from submitit.core.utils import UncompletedJobError

    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    for error, status in ((UncompletedJobError("Job not requeued because: timed-out and not checkpointable."),
                           "interrupted"), (KeyboardInterrupt(), "interrupted"), (RuntimeError("x"), "failed")):
        record = RunRecord.create(tmp_path, "eval", "x", {}, **eval_fields())
        with pytest.raises(type(error)), record.tracking():
            raise error
        assert RunRecord.load(record.folder).run.status == status
