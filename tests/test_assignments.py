"""Course assignments: built from real runs (the tiny model), graded by the real run_autograder in a simulated
/autograder tree, and every results.json checked against Gradescope's format. Hostile and broken submissions each
get a score and a message, the grader's own failure gets a zero with an apology, and the hidden answers never
appear in anything a student sees.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import yaml

from llamalab.assignments.build import build_assignment
from llamalab.assignments.grade import CRASH_MESSAGE, grade_submission, main, report_sections, section_words
from llamalab.assignments.rubric import REPORT_SECTIONS, GradingConfig, Thresholds, metric_points, split_points
from llamalab.config import LlamalabError
from llamalab.lab import Lab, init_lab
from llamalab.tasks.task import AnswerSpec

SCHEMA = json.loads((Path(__file__).parent / "fixtures" / "assignments" / "gradescope-results.schema.json")
                    .read_text(encoding="utf-8"))
FILES = ("predictions.jsonl", "experiment.yaml", "report.md")


def check_results(results: dict, secrets: tuple[str, ...] = ()) -> dict:
    """Valid against Gradescope's format, every test complete, and no secret anywhere in the file."""
    jsonschema.validate(results, SCHEMA)
    for test in results["tests"]:
        assert {"name", "score", "max_score", "status", "output", "visibility"} <= set(test)
    assert results["score"] == round(sum(t["score"] for t in results["tests"]), 2)
    text = json.dumps(results, ensure_ascii=False)
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into results.json"
    return results


def visible_text(results: dict) -> str:
    """Everything a student sees: the top-level output and the tests not hidden from them."""
    return "\n".join([results["output"], *(f"{t['name']}\n{t['output']}" for t in results["tests"]
                                           if t["visibility"] != "hidden")])


def failing(results: dict, message: str) -> dict:
    """The test that lost points and says `message`."""
    matches = [t for t in results["tests"] if t["score"] < t["max_score"] and message in t["output"]]
    assert matches, f"no failing test says {message!r}: {json.dumps(results['tests'], indent=1)}"
    return matches[0]


# ---- hostile and broken submissions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path, Path, Path], None]  # (submission folder, solution folder, hidden labels file)
    message: str  # what the failing test says


def _copy(submission: Path, solution: Path, *names: str) -> None:
    for name in names or FILES:
        shutil.copyfile(solution / name, submission / name)


def _lines(solution: Path) -> list[str]:
    return (solution / "predictions.jsonl").read_text(encoding="utf-8").splitlines()


def _with_predictions(text: str | bytes) -> Callable[[Path, Path, Path], None]:
    def make(submission: Path, solution: Path, labels: Path) -> None:
        _copy(submission, solution, "experiment.yaml", "report.md")
        data = text if isinstance(text, bytes) else text.encode()
        (submission / "predictions.jsonl").write_bytes(data)
    return make


def _edited(edit: Callable[[list[str]], list[str]]) -> Callable[[Path, Path, Path], None]:
    def make(submission: Path, solution: Path, labels: Path) -> None:
        _copy(submission, solution, "experiment.yaml", "report.md")
        (submission / "predictions.jsonl").write_text("\n".join(edit(_lines(solution))) + "\n", encoding="utf-8")
    return make


def _renamed_ids(lines: list[str]) -> list[str]:
    return [json.dumps({"id": f"wrong-{i}", "answer": json.loads(line)["answer"]}) for i, line in enumerate(lines)]


def _symlink_to_labels(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "experiment.yaml", "report.md")
    (submission / "predictions.jsonl").symlink_to(labels)


def _symlinked_folder(submission: Path, solution: Path, labels: Path) -> None:
    (submission / "submit").symlink_to(solution, target_is_directory=True)


def _impossible_date(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "predictions.jsonl", "report.md")
    (submission / "experiment.yaml").write_text("task: sentiment\nseed: 2024-02-30\n", encoding="utf-8")


def _gigabyte(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "experiment.yaml", "report.md")
    with (submission / "predictions.jsonl").open("wb") as handle:
        handle.truncate(2**30)  # sparse: a 1 GB file that costs no disk


def _fifo(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "experiment.yaml", "report.md")
    os.mkfifo(submission / "predictions.jsonl")  # opening it for reading would block forever


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> Callable[[Path, Path, Path], None]:
    def make(submission: Path, solution: Path, labels: Path) -> None:
        with zipfile.ZipFile(submission / "submission.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in entries.items():
                archive.writestr(name, data)
            for name in links:
                info = zipfile.ZipInfo(name)
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, str(labels))
    return make


def _zipped_solution(submission: Path, solution: Path, labels: Path) -> None:
    with zipfile.ZipFile(submission / "upload.zip", "w") as archive:
        for name in FILES:
            archive.write(solution / name, f"submit/{name}")


def _alias_bomb(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "predictions.jsonl", "report.md")
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    (submission / "experiment.yaml").write_text("\n".join(levels) + "\ntask: x\n", encoding="utf-8")


def _report_bytes(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "predictions.jsonl", "experiment.yaml")
    (submission / "report.md").write_bytes(b"## Data check\n\xc3\x28 not UTF-8\n")


def _wrong_task(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "predictions.jsonl", "report.md")
    (submission / "experiment.yaml").write_text("task: some-other-task\n", encoding="utf-8")


def _huge_seed(submission: Path, solution: Path, labels: Path) -> None:
    _copy(submission, solution, "predictions.jsonl", "report.md")
    (submission / "experiment.yaml").write_text("task: sentiment\nseed: 0x" + "F" * 4000 + "\n", encoding="utf-8")


def _damaged_zip(submission: Path, solution: Path, labels: Path) -> None:
    """Deflated data overwritten inside the archive: zlib's own error, which the zip module does not wrap."""
    archive_path = submission / "submission.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in FILES:
            archive.write(solution / name, name)
    data = bytearray(archive_path.read_bytes())
    start = 30 + len(FILES[0])  # the first member's data, right after its local header
    data[start : start + 8] = b"\xff" * 8
    archive_path.write_bytes(bytes(data))


HOSTILE = [
    Case("missing files", lambda s, sol, lab: None, "predictions.jsonl is missing"),
    Case("empty files", lambda s, sol, lab: [(s / n).write_bytes(b"") for n in FILES], "is empty"),
    Case("wrong ids", _edited(_renamed_ids), "not ids of this assignment"),
    Case("duplicate ids", _edited(lambda lines: [*lines, lines[0]]), "given more than once"),
    Case("extra ids", _edited(lambda lines: [*lines, '{"id": "test-99999", "answer": "x"}']), "not ids of this"),
    Case("missing ids", _edited(lambda lines: lines[1:]), "ids missing"),
    Case("non-UTF-8 bytes", _with_predictions(b'{"id": "test-00001", "answer": "\xff\xfe"}\n'), "not UTF-8"),
    Case("NaN", _edited(lambda lines: [*lines[1:], lines[0].rsplit('"answer"', 1)[0] + '"answer": NaN}']),
         "NaN or Infinity"),
    Case("Infinity", _edited(lambda lines: ['{"id": "test-00001", "answer": -Infinity}', *lines[1:]]),
         "NaN or Infinity"),
    Case("deeply nested JSON", _edited(lambda lines: [*lines, "[" * 100_000 + "]" * 100_000]), "nested too deeply"),
    Case("not JSON at all", _edited(lambda lines: [*lines, "{'id': 'test-00001'}"]), "not valid JSON"),
    Case("a huge answer", _edited(lambda lines: ['{"id": "test-00001", "answer": "' + "good " * 10_000 + '"}',
                                                 *lines[1:]]), "over 20,000 characters"),
    Case("JSON over the size limit", _with_predictions('{"id": "test-00001", "answer": "' + "x" * (21 * 2**20)
                                                       + '"}\n'), "over the limit"),
    Case("a 1 GB file", _gigabyte, "over the limit"),
    Case("an impossible date in the experiment", _impossible_date, "a value YAML cannot read"),
    Case("a symlink to the hidden labels", _symlink_to_labels, "symbolic link"),
    Case("a symlinked folder", _symlinked_folder, "predictions.jsonl is missing"),
    Case("a FIFO", _fifo, "not a regular file"),
    Case("path traversal in a zip", _zip({"../predictions.jsonl": b"{}", "../../source/grading/labels.jsonl": b"x"}),
         "unsafe names"),
    Case("absolute names in a zip", _zip({"/autograder/source/grading/labels.jsonl": b"x"}), "unsafe names"),
    Case("a symlink inside a zip", _zip({"report.md": b"# x"}, links=("predictions.jsonl",)), "symbolic links"),
    Case("a zip bomb", _zip({"predictions.jsonl": b"0" * (30 * 2**20)}), "over the limit"),
    Case("a zip named predictions.jsonl", lambda s, sol, lab: (_zipped_solution(s, sol, lab),
                                                               (s / "upload.zip").rename(s / "predictions.jsonl")),
         "is a zip archive"),
    Case("a YAML alias bomb", _alias_bomb, "aliases"),
    Case("an experiment of another task", _wrong_task, "this assignment's task is"),
    Case("a report that is not UTF-8", _report_bytes, "not UTF-8"),
    Case("an integer of 4000 hex digits", _huge_seed, "an integer of more than 64 bits at seed"),
    Case("a damaged zip", _damaged_zip, "damaged"),
    Case("empty answers", _edited(lambda lines: [json.dumps({"id": json.loads(x)["id"], "answer": " "})
                                                 for x in lines]), "did not parse"),  # wrong, and well-formed
]


# ---- fast: the grader on a small hand-made grading config -------------------------------------------------------


def _small_config() -> GradingConfig:
    thresholds = Thresholds(metric="accuracy", zero_at=0.5, full_at=0.8, margin=0.02, baseline=0.5,
                            baseline_run="base-run", baseline_system="base [plain]", baseline_n=6, finetuned=0.82,
                            finetuned_run="tuned-run", finetuned_system="tuned [plain]", finetuned_n=6)
    return GradingConfig(assignment="small", task="sentiment", split="test", n=6,
                         answer=AnswerSpec(type="label", labels=["negative", "positive"]), metric="accuracy",
                         thresholds=thresholds)


def _small_assignment(root: Path) -> tuple[Path, Path, Path]:
    """grading/ for 6 sentiment examples, and a solution that answers them all right."""
    gold = {f"test-{i:05d}": ("positive" if i % 2 else "negative") for i in range(1, 7)}
    config = _small_config()
    grading, solution = root / "grading", root / "solution"
    grading.mkdir(parents=True)
    solution.mkdir()
    (grading / "config.json").write_text(json.dumps(config.model_dump(mode="json")), encoding="utf-8")
    (grading / "labels.jsonl").write_text("".join(json.dumps({"id": i, "gold": g}) + "\n" for i, g in gold.items()))
    (solution / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "answer": g}) + "\n"
                                                        for i, g in gold.items()))
    (solution / "experiment.yaml").write_text("task: sentiment\nmethod: lora\ntrain_examples: 400\n")
    words = " ".join(["measured"] * 40)
    (solution / "report.md").write_text("# Report\n" + "".join(f"\n## {s}\n\n{words}\n" for s in (
        "Data check", "Baseline", "Fine-tuning", "Evaluation", "Ablation")))
    return grading, solution, grading / "labels.jsonl"


def test_small_assignment_solution_scores_full_marks(tmp_path: Path) -> None:
    grading, solution, _ = _small_assignment(tmp_path)
    results = check_results(grade_submission(grading, solution))
    assert results["score"] == 100 and all(t["status"] == "passed" for t in results["tests"])
    assert results["leaderboard"] == [{"name": "accuracy", "value": 1.0, "order": "desc"}]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_submission_gets_a_score_and_a_message(tmp_path: Path, case: Case) -> None:
    grading, solution, labels = _small_assignment(tmp_path)
    submission = tmp_path / "submission"
    submission.mkdir()
    case.make(submission, solution, labels)
    results = check_results(grade_submission(grading, submission), secrets=("positive", "negative"))
    failing(results, case.message)
    assert results["score"] < 100
    assert "Traceback" not in json.dumps(results)


def test_zipped_submission_is_read_from_the_zip(tmp_path: Path) -> None:
    grading, solution, labels = _small_assignment(tmp_path)
    submission = tmp_path / "submission"
    submission.mkdir()
    _zipped_solution(submission, solution, labels)
    results = check_results(grade_submission(grading, submission))
    assert results["score"] == 100 and "read the files from the zip archive 'upload.zip'" in results["output"]


@pytest.mark.parametrize("seed", range(10))
def test_the_graders_interval_is_the_labs_for_the_same_answers_on_random_tests(tmp_path: Path, seed: int) -> None:
    """The hidden examples are renamed (test-00001, ...) in a shuffled order; the bootstrap resampled them in that
    order, so the same answers got another interval from the grader than from the lab's evaluation."""
    from llamalab.evaluation.metrics import metric_intervals

    rng = random.Random(seed)
    grading, solution, _ = _small_assignment(tmp_path)
    n = rng.randint(20, 150)
    lab_ids = [f"rt-polarity.{rng.choice(['pos', 'neg'])}:{i}" for i in rng.sample(range(10_000), n)]
    renamed = [f"test-{i:05d}" for i in range(1, n + 1)]
    gold = {i: rng.choice(["negative", "positive"]) for i in renamed}
    answers = {i: g if rng.random() < 0.7 else ("positive" if g == "negative" else "negative") for i, g in gold.items()}
    config = json.loads((grading / "config.json").read_text())
    (grading / "config.json").write_text(json.dumps({**config, "n": n}))
    (grading / "labels.jsonl").write_text("".join(json.dumps({"id": i, "gold": g}) + "\n" for i, g in gold.items()))
    (grading / "ids.jsonl").write_text("".join(json.dumps({"id": i, "lab_id": lab}) + "\n"
                                               for i, lab in zip(renamed, lab_ids, strict=True)))
    (solution / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "answer": a}) + "\n"
                                                        for i, a in answers.items()))
    lab = metric_intervals(["accuracy"], [{"id": lab_id, "correct": answers[i] == gold[i]}
                                          for i, lab_id in zip(renamed, lab_ids, strict=True)])["accuracy"]
    output = check_results(grade_submission(grading, solution))["tests"][0]["output"]
    assert f"accuracy {lab['estimate']:.4f} (95% CI [{lab['low']:.4f}, {lab['high']:.4f}]" in output, output


def test_metric_points_are_linear_between_the_thresholds(tmp_path: Path) -> None:
    grading, _, _ = _small_assignment(tmp_path)
    t = json.loads((grading / "config.json").read_text())["thresholds"]
    thresholds = Thresholds(**t)
    assert [metric_points(s, thresholds, 60) for s in (0.0, 0.5, 0.65, 0.8, 1.0)] == [0, 0, 30, 60, 60]
    half = tmp_path / "half"
    half.mkdir()
    _copy(half, tmp_path / "solution")
    lines = _lines(half)
    flipped = [json.dumps({"id": json.loads(x)["id"], "answer": "negative"}) for x in lines]  # 3 of 6 right
    (half / "predictions.jsonl").write_text("\n".join(flipped) + "\n")
    results = check_results(grade_submission(grading, half))
    assert results["tests"][0]["score"] == 0 and "accuracy 0.5000" in results["tests"][0]["output"]


def test_report_sections_count_words_under_their_heading() -> None:
    found = report_sections("# Report on fine-tuning\n\nintro words\n\n## 1. Fine-tuning (LoRA)\n"
                            "<!-- prompt words do not count -->\none two three\n```\ncode not counted\n```\n"
                            "### detail\nfour\n## Ablation\nfive six\n")
    assert found == [(1, "report on fine tuning", 2), (2, "1 fine tuning lora", 3), (3, "detail", 1),
                     (2, "ablation", 2)]
    assert section_words("# Report on fine-tuning\n\nintro words\n\n## 1. Fine-tuning (LoRA)\none two three\n"
                         "### detail\nfour\n## Ablation\nfive six\n", ["Fine-tuning", "Ablation", "Baseline"]
                         ) == {"Fine-tuning": 4, "Ablation": 2, "Baseline": None}


def test_a_deleted_section_is_missing_not_credited_with_the_titles_words() -> None:
    words = section_words("# Report: Assignment X: fine-tuning on X\n\nsome template words here\n"
                          "## 2. Ablation (LoRA rank)\nfive six\n", ["Fine-tuning", "Ablation"])
    assert words == {"Fine-tuning": None, "Ablation": 2}


def test_words_count_for_one_section_only() -> None:
    """A required section nested in another keeps its words (with its own subsections); the parent keeps the rest."""
    report = ("## Evaluation\none two\n### Setup\nthree\n### Ablation\nfour five\n#### Ranks\nsix\n"
              "### Notes\nseven\n## Baseline\neight\n")
    assert section_words(report, ["Evaluation", "Ablation", "Baseline"]) == {
        "Evaluation": 4, "Ablation": 3, "Baseline": 1}
    # One heading names one section: "Fine-tuning ablation" is not also the "Fine-tuning" section.
    assert section_words("## Fine-tuning ablation\none two\n", ["Fine-tuning", "Fine-tuning ablation"]) == {
        "Fine-tuning": None, "Fine-tuning ablation": 2}


@pytest.mark.parametrize("seed", range(20))
def test_section_words_never_count_a_word_twice(seed: int) -> None:
    """On random reports: the required sections' words add up to at most the report's words under headings."""
    rng = random.Random(seed)
    names = ["Data check", "Baseline", "Fine-tuning", "Evaluation", "Ablation", "Notes", "Detail"]
    lines, total = [], 0
    for _ in range(rng.randint(1, 12)):
        lines.append(f"{'#' * rng.randint(1, 4)} {rng.choice(['', '1. ', '2 '])}{rng.choice(names)}")
        count = rng.randint(0, 6)
        lines.append(" ".join(["word"] * count))
        total += count
    words = section_words("\n".join(lines), list(REPORT_SECTIONS))
    assert sum(w for w in words.values() if w is not None) <= total


@pytest.mark.parametrize("seed", range(40))
def test_flat_sections_count_exactly_their_own_words(seed: int) -> None:
    """Headings of one level in a random order: each required section has exactly the words under it, and a
    section without a heading is None (nothing dropped, nothing borrowed)."""
    rng = random.Random(seed)
    present = rng.sample(REPORT_SECTIONS, rng.randint(0, len(REPORT_SECTIONS)))
    bodies = {name: rng.randint(0, 50) for name in [*present, "Notes", "Appendix"]}
    order = list(bodies)
    rng.shuffle(order)

    def heading(name: str) -> str:  # ATX (indented up to three spaces) or setext, as Markdown allows
        title = f"{rng.choice(['', '3. '])}{name}"  # "3. Name" underlined is a list item (CommonMark), not a heading
        return rng.choice([f"## {title}\n", f"{' ' * rng.randint(1, 3)}## {title} ##\n",
                           f"\n{rng.choice(['', '3 '])}{name}\n{'-' * rng.randint(1, 9)}\n"])

    report = rng.choice(["# Report\n", "Report\n======\n"]) + "".join(
        f"{heading(name)}{' '.join(['w'] * bodies[name])}\n" for name in order)
    words = section_words(report, list(REPORT_SECTIONS))
    assert words == {name: bodies.get(name) for name in REPORT_SECTIONS}


def test_setext_and_indented_headings_are_headings_and_code_is_not() -> None:
    report = ("Report\n======\n\nintro words\n\nData\ncheck\n---\none two\n\n   ## Baseline\nthree\n"
              "    ## Evaluation\nfour\n\n- a list item\n---\nfive\n")
    assert report_sections(report) == [(1, "report", 2), (2, "data check", 2), (2, "baseline", 7)]


def test_headings_in_windows_line_endings_and_closing_hashes_and_a_megabyte_heading_line() -> None:
    """A report saved with \\r\\n lost its underlined headings; a heading line of a million #s took the lazy
    pattern time growing with the square of its length (a grader timeout)."""
    text = "Data check\n==========\n\n" + "word " * 40 + "\n## Baseline ##\none two\n"
    assert report_sections(text) == report_sections(text.replace("\n", "\r\n")) == [
        (1, "data check", 40), (2, "baseline", 2)]
    assert report_sections("# " + "#" * 1_000_000 + "x\nwords here\n") == [(1, "x", 2)]


def test_report_sections_must_name_different_headings() -> None:
    cases = ((["Baseline", "baseline!"], "name the same heading"), (["Data check", "--"], "no letter"))
    for sections, message in cases:
        with pytest.raises(LlamalabError, match=message):  # built in Python: as a file would say
            GradingConfig(**{**_small_config().model_dump(), "report_sections": sections})


@pytest.mark.parametrize("seed", range(30))
def test_report_points_add_up_exactly(seed: int) -> None:
    rng = random.Random(seed)
    points, parts = rng.randint(0, 200), rng.randint(1, 13)
    shares = split_points(points, parts)
    assert len(shares) == parts and round(sum(shares), 2) == points
    assert max(shares) - min(shares) <= 0.0100001 and all(round(s, 2) == s for s in shares)


def test_a_rubric_of_three_sections_and_a_hidden_metric(tmp_path: Path) -> None:
    """Non-default rubric: 20 report points over 3 sections total 20 (not 3 x 6.67), and a metric test shown after
    the due date gives its score away nowhere a student looks now (output, visible tests, leaderboard)."""
    grading, solution, _ = _small_assignment(tmp_path)
    config = json.loads((grading / "config.json").read_text())
    config |= {"report_sections": ["Data check", "Baseline", "Fine-tuning"], "visibility": "after_due_date"}
    (grading / "config.json").write_text(json.dumps(config))
    results = check_results(grade_submission(grading, solution))
    assert results["score"] == 100
    report = [t for t in results["tests"] if t["name"].startswith("report.md")]
    assert [t["max_score"] for t in report] == [6.67, 6.67, 6.66]
    assert "leaderboard" not in results
    [metric] = [t for t in results["tests"] if t["visibility"] != "visible"]
    assert metric["visibility"] == "after_due_date" and metric["score"] == 60
    assert "100" not in results["output"] and "40 of 40 points on the checks shown now" in results["output"]
    assert "after the due date" in results["output"]


def test_the_dev_self_check_counts_a_broken_answer_as_wrong(tmp_path: Path) -> None:
    """A self-check grades the ids submitted; one submitted with an answer that is not text is wrong, not
    dropped (which would have scored the rest as if it were not there)."""
    grading, solution, _ = _small_assignment(tmp_path)
    config = json.loads((grading / "config.json").read_text())
    (grading / "config.json").write_text(json.dumps(config | {"split": "dev", "partial": True}))
    lines = _lines(solution)[:4]
    lines[0] = json.dumps({"id": json.loads(lines[0])["id"], "answer": ["positive"]})
    (solution / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    results = check_results(grade_submission(grading, solution))
    metric = results["tests"][0]
    assert "accuracy 0.7500" in metric["output"] and "on 4 examples" in metric["output"]
    assert "1 example(s) have no usable answer and count as wrong" in metric["output"]


def test_grader_failure_is_a_zero_with_an_apology_and_no_traceback(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "autograder"
    grading, solution, _ = _small_assignment(root / "source")
    shutil.copytree(solution, root / "submission")
    (grading / "labels.jsonl").write_text('{"id": "test-00001"}\n')  # a broken grader: no gold field
    monkeypatch.setenv("AUTOGRADER_ROOT", str(root))
    assert main([]) == 0
    results = check_results(json.loads((root / "results" / "results.json").read_text()))
    assert results["score"] == 0 and results["output"] == CRASH_MESSAGE
    assert "Traceback" not in visible_text(results)
    staff = [t for t in results["tests"] if t["visibility"] == "hidden"]
    assert staff and "Traceback" in staff[0]["output"]
    assert 'labels.jsonl:1: expected a JSON object with a string "id" and a string "gold"' in staff[0]["output"]


def test_build_without_runs_says_which_runs_to_make(lab: Lab) -> None:
    with pytest.raises(LlamalabError) as error:
        build_assignment(lab, "sentiment")
    message = str(error.value)
    assert "no finished evaluation of a fine-tuned model and a baseline model" in message
    assert "`llamalab demo`" in message and "`llamalab eval smollm2-135m-instruct --task sentiment`" in message
    assert not (lab.root / "assignments").exists()


def test_a_task_without_a_dev_split_is_refused_before_a_handout_is_written(lab: Lab) -> None:
    """The handout's dev.jsonl was empty, its data check failed and its self-check grading/ was never written."""
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import train_fields

    path = lab.task_path("sentiment")
    path.write_text(path.read_text().replace("    dev: 0.1\n", "    dev: 0\n"))
    (lab.root / "data" / "splits" / "sentiment.json").unlink()
    test = mixed_test(load_task(path, lab.root), 30)
    trained = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment"}, **train_fields())
    trained.update(status="finished")
    _scored_eval(lab, "tuned", {ex.id: (ex.answer, n % 10 != 0) for n, ex in enumerate(test)}, train_run=trained.id)
    _scored_eval(lab, "base", {ex.id: (ex.answer, n % 2 == 0) for n, ex in enumerate(test)})
    with pytest.raises(LlamalabError, match="task 'sentiment' has no dev split, which a handout gives students"):
        build_assignment(lab, "sentiment")
    assert not (lab.root / "assignments").exists()


def mixed_test(task, n: int) -> list:
    """`n` test examples of the sentiment task, negative and positive in turn. The split lists one label's
    examples first: its first 40 are all negative, and answering "negative" to each would score 1.0 on them."""
    from llamalab.tasks.data import load_task_data

    test = load_task_data(task).split("test")
    negative, positive = ([ex for ex in test if ex.answer == label] for label in ("negative", "positive"))
    return [ex for pair in zip(negative, positive, strict=False) for ex in pair][:n]


def _scored_eval(lab: Lab, label: str, answers: dict[str, tuple[str, bool]], train_run: str | None = None,
                 model: str = "tiny", **fields):
    """A finished eval run of the sentiment test split with these (gold, right?) answers, and its metrics; a run
    without `train_run` evaluated the base model `model` ("tiny", the model `train_fields` fine-tunes)."""
    from llamalab.evaluation.metrics import metric_intervals
    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    kind = "finetuned" if train_run else fields.pop("kind", "base")
    record = RunRecord.create(lab.runs_dir, "eval", label, {"system": label}, **eval_fields(
        label=label, n=len(answers), kind=kind, train_run=train_run, model=None if train_run else model, **fields))
    rows = [{"id": i, "gold": gold, "correct": ok,
             "prediction": gold if ok else ("negative" if gold == "positive" else "positive")}
            for i, (gold, ok) in answers.items()]
    append_jsonl(record.folder / "predictions.jsonl", rows)
    record.update(status="finished", metrics=metric_intervals(["accuracy", "macro_f1"], rows,
                                                              ["negative", "positive"], resamples=200))
    return record


def test_the_baseline_threshold_is_its_score_on_the_hidden_examples(lab: Lab) -> None:
    """A baseline evaluated on more test examples is scored again on the fine-tuned run's; one evaluated on fewer
    cannot set a threshold, and the error says which run to make."""
    from llamalab.assignments.references import choose_references
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import train_fields

    task = load_task(lab.task_path("sentiment"), lab.root)
    test = [(ex.id, ex.answer) for ex in mixed_test(task, 60)]
    trained = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment"}, **train_fields())
    trained.update(status="finished")
    _scored_eval(lab, "tuned", {i: (g, n % 10 != 0) for n, (i, g) in enumerate(test[:40])}, train_run=trained.id)
    # Right on the fine-tuned run's 40 examples half the time, and on its other 20 always: 0.667 on its 60.
    wide = _scored_eval(lab, "wide", {i: (g, n % 2 == 0 or n >= 40) for n, (i, g) in enumerate(test)})
    narrow = _scored_eval(lab, "narrow", {i: (g, True) for i, g in test[:20]})  # 1.0, on other examples

    refs = choose_references(lab, task, None, margin=0.02)
    t = refs.thresholds
    assert wide.run.metrics["accuracy"].estimate == pytest.approx(40 / 60)
    assert (t.baseline_run, t.zero_at, t.baseline_n) == (wide.id, 0.5, 40)
    assert refs.baseline_metric.estimate == 0.5 and refs.baseline_metric.n == 40
    assert t.finetuned == pytest.approx(0.9) and t.finetuned_n == 40

    with pytest.raises(LlamalabError) as error:
        choose_references(lab, task, [narrow.id, *(r.id for r in [refs.finetuned])], margin=0.02)
    message = str(error.value)
    assert f"no baseline run answered all 40 test examples that the fine-tuned run {refs.finetuned.id}" in message
    assert f"{narrow.id} (answered 20 of them" in message and "without --limit" in message


def test_of_two_equal_finetuned_evaluations_the_newest_is_the_solution_as_in_compare(lab: Lab) -> None:
    """The same fine-tune evaluated twice with the same results: `compare` shows the newer evaluation, and
    `assignment build` took the older one (its messages named a run `--reference` then refused)."""
    from llamalab.assignments.references import choose_references
    from llamalab.evaluation.compare import compare
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import train_fields

    task = load_task(lab.task_path("sentiment"), lab.root)
    test = [(ex.id, ex.answer) for ex in mixed_test(task, 40)]
    trained = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment"}, **train_fields())
    trained.update(status="finished")
    answers = {i: (g, n % 10 != 0) for n, (i, g) in enumerate(test)}
    _scored_eval(lab, "tuned", answers, train_run=trained.id)
    newer = _scored_eval(lab, "tuned", answers, train_run=trained.id)
    _scored_eval(lab, "base", {i: (g, n % 2 == 0) for n, (i, g) in enumerate(test)})
    shown = next(row.run for row in compare(lab, "sentiment").systems if row.system.startswith("tuned"))
    assert choose_references(lab, task, None, margin=0.02).finetuned.id == shown == newer.id


def test_the_hidden_test_is_the_widest_finetuned_evaluation(lab: Lab) -> None:
    """A `--limit 20` evaluation of the fine-tuned model scoring 1.0 does not shrink the hidden test to 20 examples:
    the evaluation that answered the most test examples is the solution."""
    from llamalab.assignments.build import build_assignment
    from llamalab.assignments.references import choose_references
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import train_fields

    task = load_task(lab.task_path("sentiment"), lab.root)
    test = [(ex.id, ex.answer) for ex in mixed_test(task, 60)]
    trained = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment"}, **train_fields())
    trained.update(status="finished")
    full = _scored_eval(lab, "tuned-full", {i: (g, n % 10 != 0) for n, (i, g) in enumerate(test)},
                        train_run=trained.id)
    _scored_eval(lab, "tuned-limit", {i: (g, True) for i, g in test[:20]}, train_run=trained.id)
    _scored_eval(lab, "base", {i: (g, n % 2 == 0) for n, (i, g) in enumerate(test)})
    refs = choose_references(lab, task, None, margin=0.02)
    assert refs.finetuned.id == full.id and refs.thresholds.finetuned_n == len(refs.examples) == 60
    with pytest.raises(LlamalabError, match=r"with a margin of 0.5 no range .* Use --margin below 0.4000"):
        choose_references(lab, task, None, margin=0.5)  # 0.9 against 0.5
    better = _scored_eval(lab, "base-better", {i: (g, True) for i, g in test})
    with pytest.raises(LlamalabError, match="the fine-tune does not beat the baseline") as error:
        choose_references(lab, task, [full.id, better.id], margin=0)  # lowering the margin cannot help
    assert "--margin" not in str(error.value)

    for margin in (float("nan"), -0.1, 1.0):
        with pytest.raises(LlamalabError, match="--margin"):
            build_assignment(lab, "sentiment", margin=margin)
    for out in (lab.root, lab.root.parent):
        with pytest.raises(LlamalabError, match="holds the lab itself"):
            build_assignment(lab, "sentiment", out=out)
    assert not (lab.root / "assignments").exists()


@pytest.mark.parametrize("seed", range(4))
def test_thresholds_are_scores_on_the_hidden_examples_on_random_runs(lab: Lab, seed: int) -> None:
    """Random runs: zero_at is the best baseline's accuracy on exactly the fine-tuned run's examples (a baseline
    that missed one of them is never chosen), full_at the fine-tuned accuracy less the margin."""
    from llamalab.assignments.references import choose_references
    from llamalab.runs.record import RunRecord
    from llamalab.tasks.task import load_task
    from tests.records import train_fields

    rng = random.Random(seed)
    task = load_task(lab.task_path("sentiment"), lab.root)
    test = [(ex.id, ex.answer) for ex in mixed_test(task, 80)]
    hidden = rng.sample(test, rng.randint(10, 50))
    trained = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment"}, **train_fields())
    trained.update(status="finished")
    _scored_eval(lab, "tuned", {i: (g, rng.random() < 0.97) for i, g in hidden}, train_run=trained.id)
    on_hidden = {}
    for k in range(3):
        seen = test if k < 2 else rng.sample(test, rng.randint(5, 70))  # the third may miss hidden examples
        answers = {i: (g, rng.random() < rng.uniform(0.2, 0.7)) for i, g in seen}
        record = _scored_eval(lab, f"base{k}", answers)
        if all(i in answers for i, _ in hidden):
            on_hidden[record.id] = sum(answers[i][1] for i, _ in hidden) / len(hidden)
    best = max(on_hidden, key=lambda run: on_hidden[run])
    majority = max(sum(g == label for _, g in hidden) for label in ("negative", "positive")) / len(hidden)
    refs = choose_references(lab, task, None, margin=0.0)  # the fine-tune (97% right) beats every baseline
    t, tuned = refs.thresholds, refs.finetuned.run.metrics["accuracy"].estimate
    assert (t.baseline_run, t.baseline_n) == (best, len(hidden))
    assert t.baseline == pytest.approx(on_hidden[best]) and t.constant == pytest.approx(majority)
    assert t.zero_at == max(t.baseline, t.constant) and t.full_at == pytest.approx(tuned)


# ---- slow: assignments built from real runs, graded by run_autograder ------------------------------------------


def unpack(root: Path, assignment: Path) -> Path:
    """autograder.zip unpacked into ROOT/source as Gradescope does, with the files' modes."""
    source = root / "source"
    with zipfile.ZipFile(assignment / "autograder" / "autograder.zip") as archive:
        for info in archive.infolist():
            path = archive.extract(info, source)
            os.chmod(path, (info.external_attr >> 16) & 0o777)
    return source


def run_autograder(root: Path, python: str = sys.executable) -> dict:
    """run_autograder as Gradescope runs it (the tree under `root`), and the results.json it leaves."""
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": python}
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads((root / "results" / "results.json").read_text(encoding="utf-8"))


def autograde(root: Path, assignment: Path, make: Callable[[Path, Path, Path], None] | None = None,
              submission: Path | None = None, python: str = sys.executable) -> dict:
    """Gradescope's layout under `root` with a submission (copied, or made by `make`), graded."""
    source = unpack(root, assignment)
    target = root / "submission"
    if submission is not None:
        shutil.copytree(submission, target)
    else:
        target.mkdir()
        assert make is not None
        make(target, assignment / "solution", source / "grading" / "labels.jsonl")
    return run_autograder(root, python)


def hidden(assignment: Path) -> tuple[list[str], list[str]]:
    """The lab's ids of the test examples (they carry labels: `rt-polarity.pos:12`) and their gold answers."""
    with zipfile.ZipFile(assignment / "autograder" / "autograder.zip") as archive:
        ids = [json.loads(x)["lab_id"] for x in archive.read("grading/ids.jsonl").decode().splitlines()]
        gold = [json.loads(x)["gold"] for x in archive.read("grading/labels.jsonl").decode().splitlines()]
    return ids, gold


def results_secrets(assignment: Path, *more: str) -> tuple[str, ...]:
    """What results.json must never hold: any lab id, and any gold answer longer than a label."""
    _, gold = hidden(assignment)
    return ("rt-polarity", "rt_polarity", "data/gsm8k", *(g for g in gold if len(g) > 12), *more)


@pytest.fixture(scope="module")
def sentiment_lab(tmp_path_factory, tiny_model_dir: Path) -> Lab:
    """Real runs on the tiny model: a LoRA fine-tune and the base model, each on the same 40 test reviews. The base
    model generates its answers, which never parse, so the baseline scores 0. The tiny fine-tune answers one label
    for every review, which no assignment may give credit for, so its run is given the answers of a model that got
    7 in 8 right: the gold label on those rows, rescored by the lab's own metrics."""
    from llamalab import Experiment, evaluate, train

    lab = init_lab(tmp_path_factory.mktemp("assignments") / "lab")
    trained = train(lab, Experiment(task="sentiment", base_model=str(tiny_model_dir), train_examples=64,
                                    lora={"r": 4, "alpha": 8}), max_steps=8)
    evaluate(lab, str(tiny_model_dir), task="sentiment", limit=40, protocol="generate", max_new_tokens=4)
    tuned = evaluate(lab, trained.id, task="sentiment", limit=40)
    better_answers(tuned, lambda n: n % 8 != 0)
    return lab


def better_answers(record, right: Callable[[int], bool]) -> None:
    """Rewrite a sentiment eval run's answers: the gold label on the rows where `right(row number)`, the other
    label elsewhere, and its metrics recomputed from them by the lab's own code."""
    from llamalab.evaluation.metrics import metric_intervals
    from llamalab.runs.files import read_jsonl, write_json_atomic, write_text_atomic

    rows = read_jsonl(record.folder / "predictions.jsonl")
    for n, row in enumerate(rows):
        other = "positive" if row["gold"] == "negative" else "negative"
        row.update(prediction=row["gold"] if right(n) else other, correct=right(n))
    write_text_atomic(record.folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    metrics = metric_intervals(["accuracy", "macro_f1"], rows, ["negative", "positive"])
    record.update(metrics=metrics)
    write_json_atomic(record.folder / "metrics.json", metrics)


@pytest.fixture(scope="module")
def sentiment_assignment(sentiment_lab: Lab) -> Path:
    return build_assignment(sentiment_lab, "sentiment")


def test_sentiment_assignment_gives_students_no_labels(sentiment_assignment: Path) -> None:
    student = sentiment_assignment / "student"
    inputs = [json.loads(x) for x in (student / "data" / "test_inputs.jsonl").read_text().splitlines()]
    assert len(inputs) == 40 and all(set(row) == {"id", "text"} for row in inputs)
    assert [row["id"] for row in inputs] == [f"test-{i:05d}" for i in range(1, 41)]
    lab_ids, _ = hidden(sentiment_assignment)
    for path in student.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not [i for i in lab_ids if json.dumps(i) in text], path  # no test example's lab id anywhere
    assert not list(student.rglob("labels.jsonl"))[1:] and (student / "grading" / "labels.jsonl").is_file()
    dev_ids = {json.loads(x)["id"] for x in (student / "grading" / "labels.jsonl").read_text().splitlines()}
    assert not dev_ids & {row["id"] for row in inputs}  # the self-check holds dev answers only
    # The student folder is a lab: its task loads train and dev, and no test split.
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task

    data = load_task_data(load_task(student / "tasks" / "sentiment.yaml", student))
    assert set(data.splits) == {"train", "dev"} and len(data.split("dev")) == 1066


def test_sentiment_handout_notebook_and_zip(sentiment_assignment: Path) -> None:
    import nbformat

    config = yaml.safe_load((sentiment_assignment / "assignment.yaml").read_text())
    t = config["thresholds"]
    readme = (sentiment_assignment / "student" / "README.md").read_text()
    assert f"**{t['zero_at']:.4f}**" in readme and f"**{t['full_at']:.4f}**" in readme
    assert config["public"] is False and t["full_at"] > t["zero_at"]
    notebook = nbformat.read(sentiment_assignment / "student" / "starter.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert "parameters" in notebook.cells[1].metadata["tags"]
    script = (sentiment_assignment / "student" / "starter.py").read_text()
    compile(script, "starter.py", "exec")
    assert "TASK = 'sentiment'\n" in script and "lab_root" not in script
    assert all(cell.source in script for cell in notebook.cells if cell.cell_type == "code")
    with zipfile.ZipFile(sentiment_assignment / "autograder" / "autograder.zip") as archive:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
        assert modes["run_autograder"] == 0o755 and modes["setup.sh"] == 0o755
        assert "vendor/llamalab/assignments/grade.py" in modes and "grading/labels.jsonl" in modes
        assert not [name for name in modes if "example_lab" in name]
        assert "numpy==" in archive.read("requirements.txt").decode()


def test_run_autograder_grades_solution_starter_and_zip(sentiment_assignment: Path, tmp_path: Path) -> None:
    secrets = results_secrets(sentiment_assignment, "positive", "negative")
    solution = check_results(autograde(tmp_path / "solution", sentiment_assignment,
                                       submission=sentiment_assignment / "solution"), secrets)
    assert solution["score"] == 100 and all(t["status"] == "passed" for t in solution["tests"])
    assert solution["leaderboard"][0]["name"] == "accuracy"
    starter = check_results(autograde(tmp_path / "starter", sentiment_assignment,
                                      submission=sentiment_assignment / "student" / "submit"), secrets)
    assert starter["tests"][0]["score"] == 0 and starter["score"] == 0
    zipped = check_results(autograde(tmp_path / "zip", sentiment_assignment, _zipped_solution), secrets)
    assert zipped["score"] == 100 and "zip archive" in zipped["output"]


def test_run_autograder_scores_every_hostile_submission(sentiment_assignment: Path, tmp_path: Path) -> None:
    secrets = results_secrets(sentiment_assignment, "positive", "negative")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # one run_autograder process per case
        graded = pool.map(lambda item: autograde(tmp_path / str(item[0]), sentiment_assignment, item[1].make),
                          enumerate(HOSTILE))
        for case, results in zip(HOSTILE, graded, strict=True):
            check_results(results, secrets)
            failing(results, case.message)
            assert results["score"] < 100 and "Traceback" not in json.dumps(results), case.name


def test_run_autograder_always_writes_results(sentiment_assignment: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    source = unpack(broken, sentiment_assignment)
    shutil.copytree(sentiment_assignment / "solution", broken / "submission")
    (source / "grading" / "config.json").write_text("{")  # the grader's own files, broken
    results = check_results(run_autograder(broken))
    assert results["score"] == 0 and results["output"] == CRASH_MESSAGE and "Traceback" not in visible_text(results)
    no_python = check_results(autograde(tmp_path / "no-python", sentiment_assignment,
                                        submission=sentiment_assignment / "solution",
                                        python=str(tmp_path / "no-such-python")))
    assert no_python["score"] == 0 and no_python["output"] == CRASH_MESSAGE


def test_vendored_grader_imports_without_torch(sentiment_assignment: Path, tmp_path: Path) -> None:
    unpack(tmp_path, sentiment_assignment)
    code = ("import sys, llamalab, llamalab.assignments.grade, llamalab.training.experiment\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\nprint(llamalab.__file__)")
    done = subprocess.run([sys.executable, "-P", "-s", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "source" / "vendor")}, check=True)
    assert done.stdout.strip() == str(tmp_path / "source" / "vendor" / "llamalab" / "__init__.py")


def test_cli_builds_and_grades(sentiment_lab: Lab, sentiment_assignment: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llamalab.assignments.cli import assignment_app

    runs = yaml.safe_load((sentiment_assignment / "assignment.yaml").read_text())["runs"]
    out = tmp_path / "copy"
    result = CliRunner().invoke(assignment_app, ["build", "sentiment", "--name", "copy", "--out", str(out),
                                                 "--from-runs", f"{runs['baseline']},{runs['finetuned']}",
                                                 "--lab", str(sentiment_lab.root)])
    assert result.exit_code == 0, result.output
    def answers(folder: Path) -> dict[str, str]:  # by the lab's id: another name shuffles the hidden ids apart
        lab_ids, _ = hidden(folder)
        rows = [json.loads(x) for x in (folder / "solution" / "predictions.jsonl").read_text().splitlines()]
        return {lab_id: row["answer"] for lab_id, row in zip(lab_ids, rows, strict=True)}

    assert answers(out) == answers(sentiment_assignment)
    result = CliRunner().invoke(assignment_app, ["grade", str(out), str(out / "solution"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["score"] == 100
    # the solution is the fine-tuned run's answers: the grader gives that run's interval, not one of other
    # resamples (it bootstrapped the renamed ids, in another order)
    from llamalab.runs.record import find_run

    tuned = find_run(sentiment_lab.runs_dir, runs["finetuned"]).run.metrics["accuracy"]
    output = json.loads(result.stdout)["tests"][0]["output"]
    assert f"accuracy {tuned.estimate:.4f} (95% CI [{tuned.low:.4f}, {tuned.high:.4f}]" in output, output
    done = subprocess.run([sys.executable, "-m", "llamalab.assignments.cli", "build", "sentiment", "--margin", "0.9",
                           "--out", str(tmp_path / "no-range"), "--lab", str(sentiment_lab.root)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no range is left" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "no-range").exists()


def test_public_assignment_on_the_site(sentiment_lab: Lab, tmp_path: Path) -> None:
    from llamalab.publish.site import build_site

    folder = build_assignment(sentiment_lab, "sentiment", name="sentiment-public", public=True)
    (folder / "leaderboard.csv").write_text("name,score,email\n<script>alert(1)</script>,0.61,a@b.c\nAda,0.74,x@y.z\n")
    site = build_site(sentiment_lab, tmp_path / "site")
    page = (site / "assignments" / "sentiment-public" / "index.html").read_text()
    assert "Learning goals" in page and "Leaderboard" in page
    board = page.split('id="leaderboard"', 1)[1]
    assert board.index("Ada") < board.index("&lt;script&gt;alert(1)&lt;/script&gt;") and "<script>alert" not in page
    assert "a@b.c" not in page and "x@y.z" not in page  # only names and scores are published
    assert 'href="../assignments/index.html"' in (site / "tasks" / "index.html").read_text()
    assert "sentiment-public" in (site / "assignments" / "index.html").read_text()
    rebuilt = build_assignment(sentiment_lab, "sentiment", name="sentiment-public")
    assert yaml.safe_load((rebuilt / "assignment.yaml").read_text())["public"] is True  # kept, as is the export
    assert (rebuilt / "leaderboard.csv").is_file()


@pytest.fixture(scope="module")
def gsm8k_assignment(tmp_path_factory, tiny_model_dir: Path) -> Path:
    """Real gsm8k runs on the tiny model. A 2-layer random model solves no problem, so its fine-tuned run is given
    the answers of a model that solved half of them: the gold solutions as the generations of 4 rows, rescored by
    the lab's own scorer and metrics. The assignment then has a range to grade on."""
    from llamalab import Experiment, evaluate, train
    from llamalab.evaluation.metrics import metric_intervals, score_generation
    from llamalab.runs.files import read_jsonl, write_json_atomic, write_text_atomic
    from llamalab.tasks.task import load_task

    lab = init_lab(tmp_path_factory.mktemp("gsm8k") / "lab")
    trained = train(lab, Experiment(task="gsm8k", base_model=str(tiny_model_dir), train_examples=16,
                                    lora={"r": 4, "alpha": 8}), max_steps=2)
    base = evaluate(lab, str(tiny_model_dir), task="gsm8k", limit=8, max_new_tokens=16)
    tuned = evaluate(lab, trained.id, task="gsm8k", limit=8, max_new_tokens=16)
    answer = load_task(lab.task_path("gsm8k"), lab.root).answer
    rows = read_jsonl(tuned.folder / "predictions.jsonl")
    for row in rows[:4]:
        row.update(generation=row["gold"], **score_generation(answer, row["gold"], row["gold"]))
    write_text_atomic(tuned.folder / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    metrics = metric_intervals(["exact_match"], rows)
    tuned.update(metrics=metrics)
    write_json_atomic(tuned.folder / "metrics.json", metrics)
    return build_assignment(lab, "gsm8k", from_runs=[base.id, tuned.id])


def test_gsm8k_assignment_graded_by_run_autograder(gsm8k_assignment: Path, tmp_path: Path) -> None:
    inputs = [json.loads(x) for x in (gsm8k_assignment / "student" / "data" / "test_inputs.jsonl").read_text()
              .splitlines()]
    assert len(inputs) == 8 and all(set(row) == {"id", "question"} for row in inputs)
    config = yaml.safe_load((gsm8k_assignment / "assignment.yaml").read_text())
    assert config["metric"] == "exact_match" and config["thresholds"]["full_at"] == pytest.approx(0.48)
    secrets = results_secrets(gsm8k_assignment, "####")
    solution = check_results(autograde(tmp_path / "solution", gsm8k_assignment,
                                       submission=gsm8k_assignment / "solution"), secrets)
    assert solution["score"] == 100
    starter = check_results(autograde(tmp_path / "starter", gsm8k_assignment,
                                      submission=gsm8k_assignment / "student" / "submit"), secrets)
    assert starter["tests"][0]["score"] == 0
    numbers = tmp_path / "numbers"  # answers as JSON numbers are read as their text
    shutil.copytree(gsm8k_assignment / "solution", numbers)
    with zipfile.ZipFile(gsm8k_assignment / "autograder" / "autograder.zip") as archive:
        gold = [json.loads(x) for x in archive.read("grading/labels.jsonl").decode().splitlines()]
    from llamalab.evaluation.answers import extract_number

    (numbers / "predictions.jsonl").write_text("".join(
        f'{{"id": "{row["id"]}", "answer": {extract_number(row["gold"])}}}\n' for row in gold))
    perfect = check_results(autograde(tmp_path / "numbers", gsm8k_assignment, submission=numbers), secrets)
    assert perfect["leaderboard"][0]["value"] == 1.0 and perfect["score"] == 100


def test_starter_notebook_runs_top_to_bottom(sentiment_assignment: Path, tiny_model_dir: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    student = tmp_path / "student"
    shutil.copytree(sentiment_assignment / "student", student)
    for name, value in {"ASSIGNMENT_MODEL": str(tiny_model_dir), "ASSIGNMENT_DEV_LIMIT": "16",
                        "ASSIGNMENT_TRAIN_EXAMPLES": "32", "ASSIGNMENT_MAX_STEPS": "2"}.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(student / "starter.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(student)}}
                   ).execute()
    printed = "\n".join(o.get("text", "") for cell in notebook.cells for o in cell.get("outputs", []))
    assert "baseline to beat" in printed and "dev self-check:" in printed
    answers = [json.loads(x) for x in (student / "submit" / "predictions.jsonl").read_text().splitlines()]
    assert len(answers) == 40 and all(a["answer"] in ("negative", "positive") for a in answers)
    results = check_results(autograde(tmp_path / "graded", sentiment_assignment, submission=student / "submit"))
    assert [t["score"] for t in results["tests"][1:3]] == [10, 10]  # format and experiment file; no report yet


@pytest.mark.parametrize(("content", "message"), [
    (b'{"id": "test-00001", "text": "ok"}\n{"id": "test-00002", "text": "ok"\n', ":2: not JSON"),
    (b'{"id": "test-00001", "text": "caf\xe9"}\n', ":1: not UTF-8 (byte 0xe9)"),
    (b'{"id": "test-00001", "text": "a"}\n\n{"id": "test-00001", "text": "b"}\n',
     ":3: id 'test-00001' was already given on line 1"),
    (b'["test-00001"]\n', ':1: expected a JSON object with a string "id"'),
    (b"\n\n", "no inputs"),
])
def test_predict_inputs_that_cannot_be_read_name_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    from llamalab.assignments.predict import read_inputs

    path = tmp_path / "test_inputs.jsonl"
    path.write_bytes(content)
    with pytest.raises(LlamalabError) as error:
        read_inputs(path)
    assert message in str(error.value)


def test_a_handouts_inputs_with_unicode_line_separators_read_back(tmp_path: Path) -> None:
    """The build writes U+2028/U+2029/U+0085 unescaped; splitlines() broke the line there."""
    from llamalab.assignments.predict import read_inputs

    path = tmp_path / "test_inputs.jsonl"
    texts = ["a\u2028b", "c\u2029d", "e\u0085f"]
    path.write_text("".join(json.dumps({"id": f"test-{i:05d}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(texts, 1)), encoding="utf-8")
    assert [ex.fields["text"] for ex in read_inputs(path)] == texts


def test_a_submission_answer_is_the_text_its_run_scored():
    """A plain-format run-on is scored up to where the model started another example; the assignment re-scores
    that same text (it re-scored the whole generation, and graded the invented example's answer)."""
    from llamalab.assignments.rubric import score_answer, submission_answer
    from llamalab.tasks.task import AnswerSpec

    row = {"generation": "5 + 3 = 8, so 8.\n\nSolve the problem.\n\nTom has 1 left.", "answer_text": "5 + 3 = 8, so 8."}
    assert submission_answer(row) == "5 + 3 = 8, so 8."
    assert score_answer(AnswerSpec(type="number"), "#### 8", submission_answer(row))["correct"] is True
    assert submission_answer({"generation": "#### 3"}) == "#### 3"


def test_the_staff_readmes_grade_command_runs_as_written(sentiment_lab: Lab, sentiment_assignment: Path,
                                                          monkeypatch) -> None:
    """It named the folder by its last part (`grade sentiment`), which no folder of the lab is."""
    import re

    from typer.testing import CliRunner

    from llamalab.assignments.cli import assignment_app

    staff = (sentiment_assignment / "autograder" / "README.md").read_text()
    command = re.search(r"`llamalab assignment grade (\S+) SUBMISSION`", staff)
    assert command and command.group(1) == "assignments/sentiment", staff
    monkeypatch.chdir(sentiment_lab.root)
    result = CliRunner().invoke(assignment_app, ["grade", command.group(1), str(sentiment_assignment / "solution")])
    assert result.exit_code == 0, result.output


def test_the_solutions_ablations_leave_out_quantized_copies_of_a_run(lab):
    """A quantization study's GGUF exports of the reference run are fine-tuned systems of that run, not runs with
    other settings: the solution listed the run three times as its own ablations."""
    from types import SimpleNamespace

    from llamalab.assignments.build import _ablation
    from llamalab.runs.record import RunRecord
    from tests.records import eval_fields

    def evaluation(label: str, quantized: str | None = None) -> RunRecord:
        fields = eval_fields(label=label, kind="finetuned", train_run="t-" + label.split(" ")[0])
        if quantized:
            fields["system"]["quantized"] = quantized
        record = RunRecord.create(lab.runs_dir, "eval", label.replace(" ", "-"), {"l": label}, **fields)
        record.update(status="finished", metrics={"accuracy": {"estimate": 0.5, "low": 0.4, "high": 0.6, "n": 10}})
        return record

    reference = evaluation("tuned@abcd")
    evaluation("tuned@abcd q8_0", quantized="q8_0")
    other = evaluation("tuned@ef01")
    text = _ablation(lab, SimpleNamespace(finetuned=reference), "accuracy")
    assert other.id in text and "q8_0" not in text


def test_the_site_publishes_no_hidden_example(sentiment_lab: Lab, sentiment_assignment: Path, gsm8k_assignment: Path,
                                              tmp_path: Path) -> None:
    """The site copied every run's predictions.jsonl (prompt and gold) and showed every test example with its gold
    answer: a student with the handout's test inputs found each one's answer there. No hidden example's text,
    gold answer or row is anywhere on the site now (the public handout shows test inputs, never answers), and the
    pages say how many are held out; the metrics stay the records'."""
    import html

    from llamalab.lab import find_lab
    from llamalab.publish.site import build_site
    from llamalab.runs.record import find_run
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task

    def forms(text: str) -> set[str]:  # as a page or a JSON file may write it
        return {text, html.escape(text), json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1],
                html.escape(json.dumps(text, ensure_ascii=False)[1:-1])}

    for assignment, field in ((sentiment_assignment, "text"), (gsm8k_assignment, "question")):
        lab = find_lab(assignment.parent.parent)
        task = yaml.safe_load((assignment / "assignment.yaml").read_text())["task"]
        lab_ids, gold = hidden(assignment)
        examples = {ex.id: ex for ex in load_task_data(load_task(lab.task_path(task), lab.root)).split("test")}
        secrets = {form for i in lab_ids for form in forms(examples[i].fields[field])}
        secrets |= {form for answer in gold if len(answer) > 12 for form in forms(answer)}  # not a bare label
        site = build_site(lab, tmp_path / task)
        for path in site.rglob("*"):
            if path.is_file() and path.suffix in (".html", ".json", ".jsonl", ".xml", ".svg", ".yaml"):
                text = path.read_text(encoding="utf-8")
                where = path.relative_to(site).as_posix()
                if not where.startswith("assignments/"):  # a public handout shows test inputs: never answers
                    assert not [s for s in secrets if s in text], where
                assert not [g for g in gold if len(g) > 12 and g in text], where
                if path.name == "predictions.jsonl":
                    assert not {json.loads(x)["id"] for x in text.splitlines()} & set(lab_ids), where
        runs = yaml.safe_load((assignment / "assignment.yaml").read_text())["runs"]
        tuned = find_run(lab.runs_dir, runs["finetuned"])
        page = " ".join((site / "runs" / tuned.id / "index.html").read_text().split())
        assert f"without the {len(lab_ids)} example(s) held out as the hidden test of assignment" in page
        metric = next(iter(tuned.run.metrics))
        assert f"{tuned.run.metrics[metric].estimate:.3f}" in page  # the record's metric, over all its examples
        examples_page = " ".join((site / "tasks" / task / "examples.html").read_text().split())
        assert f"{len(lab_ids)} test example(s) are held out as the hidden test of assignment" in examples_page
