"""`llamalab report`: tables, figures and methods from the records alone, byte-identical when rebuilt."""

from __future__ import annotations

import hashlib
import html
import json
import re

import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.config import LlamalabError
from llamalab.publish.report import build_report

pytestmark = pytest.mark.slow


def digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_report_is_complete_and_reproducible(published_lab):
    folder = build_report(published_lab, "repro")
    first = digests(folder)
    assert build_report(published_lab, "repro") == folder
    assert digests(folder) == first, "rebuilding from the same records changed a file"

    trains = [r.name for r in sorted(published_lab.runs_dir.iterdir()) if "-train-" in r.name]
    assert len(trains) == 2
    stems = ("sentiment-by-system", "sentiment-vs-cost", "sentiment-scaling", *(f"loss-{t}" for t in trains),
             "study-tiny-sweep")
    assert set(first) == {
        "README.md", "methods.md", "report.tex", "results.json", "tables/sentiment.md", "tables/sentiment.tex",
        "tables/study-tiny-sweep.md", "tables/study-tiny-sweep.tex",
        *(f"figures/{stem}.{ext}" for stem in stems for ext in ("pdf", "png")),
    }
    md = (folder / "tables" / "sentiment.md").read_text()
    tex = (folder / "tables" / "sentiment.tex").read_text()
    results = json.loads((folder / "results.json").read_text())[0]
    assert len(results["systems"]) == 4 and results["split"] == "test"
    for row in results["systems"]:
        m = row["metrics"]["accuracy"]
        assert f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" in md
        assert f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]" in tex
    api_row = next(r for r in results["systems"] if r["kind"] == "api")
    assert api_row["cost_per_1k_usd"] > 0 and f"${api_row['cost_per_1k_usd']:.4f}" in md
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "smol-api [chat]" in md and "\\_" not in md
    methods = (folder / "methods.md").read_text()
    for fact in ("LoRA (rank 4, alpha 8", "8 optimizer steps", "data/rt_polarity/rt-polarity.pos (SHA-256",
                 "data/splits/sentiment.json (SHA-256", "CPU cores", "transformers", "exact McNemar", "Holm"):
        assert fact in methods, fact
    assert (folder / "figures" / "sentiment-by-system.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "figures" / "sentiment-by-system.pdf").read_bytes()[:4] == b"%PDF"
    assert "\\input{tables/sentiment.tex}" in (folder / "report.tex").read_text()


def test_report_cli_lists_its_files(published_lab):
    result = CliRunner().invoke(app, ["report", "--name", "cli", "--lab", str(published_lab.root)])
    assert result.exit_code == 0, result.output
    assert "tables/sentiment.tex" in result.output and "methods.md" in result.output


def test_report_without_runs_says_what_to_do(lab):
    with pytest.raises(LlamalabError, match="no finished evaluations.*llamalab eval"):
        build_report(lab)
    assert not (lab.root / "reports").exists() or not any((lab.root / "reports").iterdir())


def test_report_on_an_unknown_task_names_it(published_lab):
    with pytest.raises(LlamalabError, match="intent"):
        build_report(published_lab, "x", tasks=["intent"])


def test_report_against_a_reference_with_local_compute_costs(published_lab):
    folder = build_report(published_lab, "ref", reference="smol-api")
    md = (folder / "tables" / "sentiment.md").read_text()
    assert "against the reference system, smol-api [chat]" in md
    api_line = next(line for line in md.splitlines() if line.startswith("| smol-api"))
    assert "| reference |" in api_line
    local_lines = [line for line in md.splitlines() if line.startswith("| ") and "[plain]" in line]
    # priced at the lab's $/h
    assert len(local_lines) == 3 and all(("~$" in line or "~<$0.0001" in line) for line in local_lines)
    assert "local models, their wall time at $0.07/h" in md
    assert "compared with the reference system, smol-api [chat]" in (folder / "methods.md").read_text()
    with pytest.raises(LlamalabError, match="names no evaluated system"):
        build_report(published_lab, "bad", reference="gpt-9")


def test_one_number_per_run_in_every_place(published_lab):
    """A run's interval is the same in run.json, metrics.json, compare, the report's tables and the site."""
    from llamalab.evaluation.compare import compare, comparison_warnings, format_interval
    from llamalab.publish.site import build_site
    from llamalab.runs.record import RunRecord

    folder = build_report(published_lab, "one-number")
    site = build_site(published_lab, published_lab.root / "site-one-number")
    md = (folder / "tables" / "sentiment.md").read_text()
    page = html.unescape(re.sub(r"<[^>]+>", "", (site / "tasks" / "sentiment" / "index.html").read_text()))
    result = compare(published_lab, "sentiment")
    assert comparison_warnings(result), "the published lab's tiny model always answers 'positive'"
    for warning in comparison_warnings(result):  # a degenerate scorer is flagged on the site as in compare
        assert " ".join(warning.split()) in " ".join(page.split())
    for row in result.systems:
        record = RunRecord.load(published_lab.runs_dir / row.run)
        on_disk = json.loads((record.folder / "metrics.json").read_text())
        for name, m in row.metrics.items():
            assert m.model_dump() == record.run.metrics[name].model_dump() == on_disk[name], (row.system, name)
            assert format_interval(m) in md and format_interval(m) in page


def test_the_task_scaling_figure_takes_the_latest_run_per_size_not_the_best_on_test(lab):
    """On random labs: at a size trained more than once, the scaling figure's point is the latest training's
    evaluation, whatever it scored (the best on the board's own split would be a choice made on test), and never
    a quantized export of it (here scoring best of all)."""
    import numpy as np

    from llamalab.publish.results import scaling_points, task_boards, train_runs
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields, train_fields

    rng = np.random.default_rng(17)
    latest: dict[int, str] = {}
    for k in range(12):
        size = int(rng.choice([25, 50, 100]))
        train = RunRecord.create(lab.runs_dir, "train", "curve", {"train_examples": size, "seed": k},
                                 **train_fields(experiment="curve"))
        train.update(status="finished", data_used={"train_examples": size, "skipped_too_long": 0,
                                                   "tokens_per_epoch": 1000})
        evaluation = RunRecord.create(lab.runs_dir, "eval", f"curve-{k}", {"system": train.id},
                                      **eval_fields(label=f"curve@{k}", kind="finetuned", train_run=train.id, n=20))
        hits = rng.random(20) < rng.uniform(0.2, 0.9)
        append_jsonl(evaluation.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive" if ok else "negative", "correct": bool(ok)}
            for i, ok in enumerate(hits)])
        evaluation.update(status="finished")
        latest[size] = evaluation.id
        if rng.random() < 0.5:  # a quantization study's export of the run: never a point of its curve
            fields = eval_fields(label=f"curve@{k} q4_0", kind="finetuned", train_run=train.id, n=20,
                                 model=f"runs/.gguf/curve-{k}-q4_0.gguf", backend="llama.cpp")
            fields["system"]["quantized"] = "q4_0"
            export = RunRecord.create(lab.runs_dir, "eval", f"curve-{k}-q4_0", {"system": f"q{k}"}, **fields)
            append_jsonl(export.folder / "predictions.jsonl", [
                {"id": f"x{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(20)])
            export.update(status="finished")
    [board] = [b for b in task_boards(lab) if b.name == "sentiment"]
    [(name, points)] = scaling_points(board, {r.id: r for r in train_runs(lab)}).items()
    assert name == "curve" and [size for size, _ in points] == sorted(latest)
    assert [row.run for _, row in points] == [latest[size] for size in sorted(latest)]
    # the report passed its runs in leaderboard order, the site in time order: the figure must not depend on it
    for order in (list(reversed(train_runs(lab))), sorted(train_runs(lab), key=lambda r: r.id)):
        assert scaling_points(board, {r.id: r for r in order}) == scaling_points(
            board, {r.id: r for r in train_runs(lab)})


def test_a_scaling_curve_holds_every_setting_but_the_training_examples_equal(lab):
    """Runs of one experiment at other learning rates (a sweep) or other step counts were joined into one curve over
    "training examples"; each set of settings is a curve of its own, named by what sets it apart."""
    from llamalab.publish.results import scaling_points, task_boards, train_runs
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields, train_fields

    for k, (size, rate, memory) in enumerate([(8, 1e-3, "auto"), (16, 1e-3, "yes"), (8, 1e-4, "auto"),
                                              (16, 1e-4, "auto"), (32, 1e-2, "auto")]):
        config = {"train_examples": size, "learning_rate": rate, "activation_checkpointing": memory, "seed": k}
        train = RunRecord.create(lab.runs_dir, "train", "tiny", config, **train_fields(experiment="tiny"))
        train.update(status="finished", data_used={"train_examples": size, "skipped_too_long": 0})
        evaluation = RunRecord.create(lab.runs_dir, "eval", f"tiny-{k}", {"system": train.id},
                                      **eval_fields(label=f"tiny@{k}", kind="finetuned", train_run=train.id, n=2))
        append_jsonl(evaluation.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(2)])
        evaluation.update(status="finished")
    [board] = [b for b in task_boards(lab) if b.name == "sentiment"]
    curves = scaling_points(board, {r.id: r for r in train_runs(lab)})
    assert {name: [size for size, _ in points] for name, points in curves.items()} == {
        "tiny (learning_rate 0.0001)": [8, 16], "tiny (learning_rate 0.001)": [8, 16]}  # checkpointing: same run


@pytest.mark.parametrize("seed", range(6))
def test_scaling_curves_on_random_labs_group_by_settings_and_are_named_apart(lab, seed):
    """On random labs (two experiments, runs at random learning rates, step counts, sizes and seeds): each curve
    holds the runs of one experiment and one set of settings held equal, at two or more sizes; every such group is
    a curve; names are distinct and each names its experiment and what sets it apart."""
    import numpy as np

    from llamalab.publish.results import scaling_points, task_boards, train_runs
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields, train_fields

    rng = np.random.default_rng([2026, seed])
    held_of: dict[str, tuple] = {}
    for k in range(int(rng.integers(4, 14))):
        name = str(rng.choice(["alpha", "beta"]))
        size, rate, steps = int(rng.choice([8, 16, 32])), float(rng.choice([1e-4, 1e-3])), int(rng.choice([2, 4]))
        config = {"train_examples": size, "learning_rate": rate, "max_steps": steps, "seed": int(rng.integers(3))}
        train = RunRecord.create(lab.runs_dir, "train", name, config, **train_fields(experiment=name))
        train.update(status="finished", data_used={"train_examples": size, "skipped_too_long": 0})
        evaluation = RunRecord.create(lab.runs_dir, "eval", f"{name}-{k}", {"system": train.id},
                                      **eval_fields(label=f"{name}@{k}", kind="finetuned", train_run=train.id, n=2))
        append_jsonl(evaluation.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive", "correct": True} for i in range(2)])
        evaluation.update(status="finished")
        held_of[evaluation.id] = (name, rate, steps)
    groups: dict[tuple, set[int]] = {}
    for record in train_runs(lab):
        config = record.config
        groups.setdefault((record.run.name, config["learning_rate"], config["max_steps"]), set()).add(
            config["train_examples"])
    [board] = [b for b in task_boards(lab) if b.name == "sentiment"]
    curves = scaling_points(board, {r.id: r for r in train_runs(lab)})
    drawn = {}
    for curve, points in curves.items():
        held = {held_of[row.run] for _, row in points}
        assert len(held) == 1, (curve, held)  # one experiment, one set of settings
        [(name, rate, steps)] = held
        assert curve.split(" ")[0] == name
        assert [size for size, _ in points] == sorted(groups[name, rate, steps])
        drawn[name, rate, steps] = curve
    assert set(drawn) == {key for key, sizes in groups.items() if len(sizes) >= 2}
    assert len(set(drawn.values())) == len(drawn)  # named apart
    for (name, rate, steps), curve in drawn.items():
        rivals = [key for key in drawn if key[0] == name and key != (name, rate, steps)]
        if any(r[1] != rate for r in rivals):
            assert f"learning_rate {rate!r}" in curve
        if any(r[2] != steps for r in rivals):
            assert f"max_steps {steps!r}" in curve
        if not rivals:
            assert curve == name


def test_a_tie_for_best_is_said_not_hidden_by_the_order(lab):
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    for name in ("first", "second"):  # the same answers: the same estimate
        record = RunRecord.create(lab.runs_dir, "eval", name, {"system": name}, **eval_fields(label=name, n=4))
        append_jsonl(record.folder / "predictions.jsonl", [
            {"id": f"x{i}", "gold": "positive", "prediction": "positive" if i % 2 else "negative",
             "correct": bool(i % 2)} for i in range(4)])
        record.update(status="finished")
    text = (build_report(lab, "tie") / "README.md").read_text()
    tie = r"Best system on accuracy: \*\*(first|second) \[plain\]\*\* \(tied with (second|first) \[plain\]\), 0\.500"
    assert re.search(tie, text), text[:800]


def test_latex_escapes_every_character_a_label_can_hold_and_keeps_names_as_written():
    from llamalab.publish.report import _first_upper
    from llamalab.publish.tables import latex_escape

    text = latex_escape('[a|b] "q" ≥$1 & 5% #2 x_y {z} ~^ <> …')
    assert text == (r'{}[a\textbar{}b] \textquotedbl{}q\textquotedbl{} $\geq$\$1 \& 5\% \#2 x\_y \{z\} '
                    r'\textasciitilde{}\textasciicircum{} \textless{}\textgreater{} \ldots{}')
    assert _first_upper("accuracy of each system on SST2 (run 2026-train-MyExp-dd72)") == (
        "Accuracy of each system on SST2 (run 2026-train-MyExp-dd72)")


@pytest.mark.parametrize("name", ["../../escape", "../runs", "a/b", ".hidden", ""])
def test_a_report_name_is_a_folder_name_under_reports(lab, name):
    from llamalab.config import LlamalabError
    from llamalab.publish.report import build_report

    with pytest.raises(LlamalabError, match="report name"):
        build_report(lab, name)
    assert (lab.root / "runs").is_dir() or not (lab.root / "runs").exists()


def test_a_broken_study_stops_publishing_with_its_name_and_the_way_past_it(lab):
    from llamalab.config import LlamalabError
    from llamalab.publish.results import study_boards

    (lab.root / "studies").mkdir(exist_ok=True)
    (lab.root / "studies" / "bad-scaling.yaml").write_text("kind: scaling\nexperiment: nope\n")
    with pytest.raises(LlamalabError, match=r"(?s)study bad-scaling: .*fix studies/bad-scaling.yaml, or move it out of "
                                            r"studies/ to publish without it"):
        study_boards(lab)


def test_a_markdown_table_caption_is_emphasis_whatever_space_ends_it():
    """The sweep caption ended in a space: `*... test. *` closes no emphasis, so the asterisks showed."""
    from markdown_it import MarkdownIt

    from llamalab.publish.tables import _markdown

    for text in ("Caption. ", "Caption.", " Caption.\n"):
        table = _markdown(["system", "n"], [["a", "1"]], text)
        assert table.endswith("*Caption.*\n"), table
        assert "<em>Caption.</em>" in MarkdownIt().render(table.split("\n\n")[-1])


def test_a_half_edited_task_file_stops_no_report_of_other_tasks(lab):
    """`report --task sentiment` failed on another task's broken YAML; a report of every task still names it."""
    from tests.records import sentiment_eval

    sentiment_eval(lab, "a", [True, False, True, True])
    (lab.root / "tasks" / "bad.yaml").write_text("name: bad\ndata: files: [\n")
    out = build_report(lab, "only", tasks=["sentiment"])
    assert "sentiment" in (out / "README.md").read_text()
    with pytest.raises(LlamalabError, match=r"bad.yaml:2"):
        build_report(lab, "all")
