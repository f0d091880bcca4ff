"""Assignment builds that keep the user's files, the hidden answers and the grade honest: `--out` naming a file,
the grader's own files broken, hidden answers kept out of the lab's git repository, no credit for a constant
answer, the baseline being the fine-tune's own base model, and a solution report true of the records.

Runs here are records made by hand (no model): `_scored_eval` writes an evaluation with chosen right/wrong answers.
"""

from __future__ import annotations

import csv
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml

from llamalab.assignments.build import build_assignment
from llamalab.assignments.grade import grade_submission, load_gold, load_lab_ids
from llamalab.assignments.publish import public_assignments, read_leaderboard
from llamalab.config import LlamalabError
from llamalab.lab import Lab
from llamalab.runs.files import staged_folder
from llamalab.runs.record import RunRecord
from llamalab.tasks.task import load_task
from tests.records import train_fields
from tests.test_assignments import _scored_eval, check_results, mixed_test


def _examples(lab: Lab, n: int = 40) -> list:
    return mixed_test(load_task(lab.task_path("sentiment"), lab.root), n)


def _trained(lab: Lab) -> RunRecord:
    """A finished train run of the sentiment task on the base model "tiny", with the record a solution reads."""
    record = RunRecord.create(lab.runs_dir, "train", "tuned", {"task": "sentiment", "base_model": "tiny"},
                              **train_fields())
    record.update(status="finished", metrics={"first_loss": 0.9, "final_loss": 0.3, "steps": 10, "epochs": 1.0})
    return record


def _runs(lab: Lab, examples: list, tuned_right=lambda n, ex: n % 10 != 0, base_right=lambda n, ex: n % 2 == 0
          ) -> tuple[RunRecord, RunRecord, RunRecord]:
    """A train run, its fine-tuned evaluation and the base model's, on `examples`, right where the rules say."""
    trained = _trained(lab)
    tuned = _scored_eval(lab, "tuned", {ex.id: (ex.answer, tuned_right(n, ex)) for n, ex in enumerate(examples)},
                         train_run=trained.id)
    base = _scored_eval(lab, "base", {ex.id: (ex.answer, base_right(n, ex)) for n, ex in enumerate(examples)})
    return trained, tuned, base


def _git(lab: Lab, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=lab.root, capture_output=True, text=True, check=True).stdout


# ---- --out naming a file, and staged folders ---------------------------------------------------------------------


def test_out_naming_a_file_is_refused_and_the_file_kept(lab: Lab) -> None:
    """The build moved the user's file to .notes.txt.old and put a folder in its place."""
    _runs(lab, _examples(lab))
    notes = lab.root.parent / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(LlamalabError, match=r"--out .*notes.txt is a file: name a folder"):
        build_assignment(lab, "sentiment", out=notes)
    assert notes.read_text() == "my notes\n"
    assert [p.name for p in lab.root.parent.iterdir() if "notes" in p.name] == ["notes.txt"]


def test_a_file_under_the_old_name_does_not_break_the_next_build(tmp_path: Path) -> None:
    """A file at .NAME.old (rmtree leaves files alone) made the swap fail with NotADirectoryError, and left
    .NAME.partial behind."""
    target = tmp_path / "out"
    (tmp_path / ".out.old").write_text("left here\n")
    for name in ("a", "b"):
        with staged_folder(target) as staging:
            (staging / name).write_text(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["b"]


def test_a_failed_swap_leaves_no_partial_and_keeps_the_previous_build(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out"
    with staged_folder(target) as staging:
        (staging / "a").write_text("first")
    real_rename = Path.rename

    def rename(self: Path, destination):
        if self.name == ".out.partial":
            raise OSError(28, "No space left on device")
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="No space"), staged_folder(target) as staging:
        (staging / "b").write_text("second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "a").read_text() == "first"


def test_a_staged_folder_never_replaces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_text("mine")
    with pytest.raises(LlamalabError, match="is a file"), staged_folder(path):
        pass
    assert path.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["x"]


# ---- the grader's own files, and the files staff add ------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (b'{"id": "test-00001", "gold": "positive"}\n{"id": "test-00002", "gold": \n', "labels.jsonl:2: not JSON"),
    (b'{"id": "test-00001"}\n', 'labels.jsonl:1: expected a JSON object with a string "id" and a string "gold"'),
    (b'{"id": "a", "gold": "x"}\n{"id": "a", "gold": "y"}\n', "labels.jsonl:2: id 'a' was already given on line 1"),
    (b'{"id": "a", "gold": "caf\xe9"}\n', "labels.jsonl: not UTF-8"),
])
def test_broken_hidden_answers_are_an_error_naming_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(content)
    with pytest.raises(LlamalabError) as error:
        load_gold(path)
    assert message in str(error.value) and "rebuild the assignment" in str(error.value)


def test_blank_lines_in_the_graders_files_are_skipped_and_a_missing_file_is_named(tmp_path: Path) -> None:
    gold = tmp_path / "labels.jsonl"
    gold.write_text('{"id": "a", "gold": "x"}\r\n\n{"id": "b", "gold": "y"}\n\n')
    assert load_gold(gold) == {"a": "x", "b": "y"}
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"id": "a", "lab_id": "f:1"}\n\n')
    assert load_lab_ids(ids) == {"a": "f:1"}
    ids.write_text('{"id": "a", "lab": "f:1"}\n')
    with pytest.raises(LlamalabError, match='ids.jsonl:1: expected a JSON object with a string "id" and a string '
                                            '"lab_id"'):
        load_lab_ids(ids)
    with pytest.raises(LlamalabError, match=r"missing\.jsonl is missing: the grader needs it"):
        load_gold(tmp_path / "missing.jsonl")


def test_a_leaderboard_that_is_not_utf8_says_which_file_and_to_save_it_as_utf8(lab: Lab) -> None:
    folder = lab.root / "assignments" / "hw"
    (folder / "student").mkdir(parents=True)
    (folder / "student" / "README.md").write_text("# Handout\n")
    (folder / "assignment.yaml").write_text("task: sentiment\npublic: true\nmetric: accuracy\n")
    (folder / "leaderboard.csv").write_bytes("name,score\nZoë,0.7\n".encode("latin-1"))
    with pytest.raises(LlamalabError, match=r"leaderboard.csv:2: not UTF-8 text \(byte 0xeb\); save the file as "
                                            "UTF-8"):
        public_assignments(lab)  # what `llamalab site build` reads
    (folder / "leaderboard.csv").write_text("name,score\nAda," + "9" * 200_000 + "\n")
    limit = csv.field_size_limit(100_000)  # a global others may raise: a field over it is a csv.Error
    try:
        with pytest.raises(LlamalabError, match=r"leaderboard.csv:2: not readable as CSV"):
            read_leaderboard(folder / "leaderboard.csv")
    finally:
        csv.field_size_limit(limit)


def test_a_train_run_without_its_config_is_an_error_and_leaves_no_folder(lab: Lab) -> None:
    trained, _, _ = _runs(lab, _examples(lab))
    (trained.folder / "config.yaml").unlink()
    with pytest.raises(LlamalabError, match=r"config.yaml is missing: train run .* settings are the solution's "
                                            "experiment.yaml"):
        build_assignment(lab, "sentiment")
    assert not (lab.root / "assignments").exists()


def test_a_failed_build_leaves_no_empty_folder(lab: Lab, monkeypatch) -> None:
    import llamalab.assignments.build as build

    _runs(lab, _examples(lab))

    def fail(*args, **kwargs):
        raise LlamalabError("the solution cannot be written")

    monkeypatch.setattr(build, "_solution", fail)
    with pytest.raises(LlamalabError, match="cannot be written"):
        build_assignment(lab, "sentiment", out=lab.root / "course" / "2026" / "hw1")
    assert not (lab.root / "course").exists() and not (lab.root / "assignments").exists()


# ---- hidden answers stay out of the lab's repository ------------------------------------------------------------


def test_git_add_in_a_lab_stages_no_hidden_answer(lab: Lab) -> None:
    _runs(lab, _examples(lab))
    notes: list[str] = []
    folder = build_assignment(lab, "sentiment", note=notes.append)
    assert not [n for n in notes if n.startswith("warning")], notes
    _git(lab, "add", "-A")
    staged = _git(lab, "diff", "--cached", "--name-only").split()
    assert "assignments/sentiment/student/README.md" in staged and "assignments/sentiment/assignment.yaml" in staged
    assert not [p for p in staged if p.startswith(("assignments/sentiment/autograder/",
                                                   "assignments/sentiment/solution/"))], staged
    assert "assignments/sentiment/student/grading/labels.jsonl" not in staged
    assert (folder / "autograder" / "autograder.zip").is_file() and (folder / "solution" / "report.md").is_file()


def test_the_build_warns_when_git_tracks_or_would_add_hidden_files(lab: Lab) -> None:
    _runs(lab, _examples(lab))
    build_assignment(lab, "sentiment")
    _git(lab, "add", "-f", "assignments/sentiment/solution/report.md")
    notes: list[str] = []
    build_assignment(lab, "sentiment", note=notes.append)
    [tracked] = [n for n in notes if n.startswith("warning: git tracks hidden files")]
    assert "solution/report.md" in tracked and "git rm -r --cached solution)" in tracked
    gitignore = lab.root / ".gitignore"
    gitignore.write_text("".join(line for line in gitignore.read_text().splitlines(keepends=True)
                                 if not line.startswith("assignments/")))
    notes.clear()
    build_assignment(lab, "sentiment", note=notes.append)
    assert any(n.startswith("warning: git does not ignore autograder, solution, student/grading/labels.jsonl")
               for n in notes), notes


def test_the_build_never_fails_because_of_git(lab: Lab, tmp_path: Path, monkeypatch) -> None:
    """Without git, or outside a repository, nothing is said (here git would warn: nothing ignores the files)."""
    _runs(lab, _examples(lab))
    (lab.root / ".gitignore").write_text("site/\n")
    notes: list[str] = []
    empty = tmp_path / "no-git"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no git at all
    build_assignment(lab, "sentiment", note=notes.append)
    monkeypatch.undo()
    build_assignment(lab, "sentiment", out=tmp_path / "outside", note=notes.append)  # in no repository
    assert not [n for n in notes if n.startswith("warning")], notes


# ---- no credit for a constant answer ----------------------------------------------------------------------------


def test_a_finetune_that_answers_one_label_cannot_set_full_credit(lab: Lab) -> None:
    """The fine-tune answered "positive" every time, and answering "positive" to every input scored 100."""
    _runs(lab, _examples(lab), tuned_right=lambda n, ex: ex.answer == "positive", base_right=lambda n, ex: False)
    with pytest.raises(LlamalabError) as error:
        build_assignment(lab, "sentiment")
    message = " ".join(str(error.value).split())
    assert "given to every example scores 0.5000" in message  # either label: 20 of each
    assert "no range is left to grade on" in message and "without --limit" in message
    assert not (lab.root / "assignments").exists()


def test_zero_credit_at_the_constant_floor_in_every_number(lab: Lab, tmp_path: Path) -> None:
    """30 negative and 10 positive reviews: "negative" for each scores 0.75, above the baseline's 0.5. Zero credit
    is at 0.75 in assignment.yaml, both grading configs, the handout, the staff notes, the solution report, the
    grader's rule and the command's output; a constant submission gets no metric points, the solution all."""
    from typer.testing import CliRunner

    from llamalab.assignments.cli import assignment_app

    examples = _examples(lab, 400)
    chosen = [ex for ex in examples if ex.answer == "negative"][:30] + [ex for ex in examples
                                                                         if ex.answer == "positive"][:10]
    _runs(lab, chosen, tuned_right=lambda n, ex: n not in (0, 35), base_right=lambda n, ex: n % 2 == 0)
    result = CliRunner().invoke(assignment_app, ["build", "sentiment", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "0 points at or below 0.7500 (what one answer given to every example scores" in output
    assert "constant-answer floor: the label 'negative' given to every example scores accuracy 0.7500" in output
    folder = lab.root / "assignments" / "sentiment"
    t = yaml.safe_load((folder / "assignment.yaml").read_text())["thresholds"]
    assert (t["zero_at"], t["constant"], t["baseline"], t["finetuned"]) == (0.75, 0.75, 0.5, 0.95)
    for config in (folder / "student" / "grading" / "config.json",):
        assert json.loads(config.read_text())["thresholds"]["zero_at"] == 0.75
    handout = " ".join((folder / "student" / "README.md").read_text().split())
    assert "at or below accuracy **0.7500**: what one answer given to every test example scores" in handout
    assert "the model the lab fine-tuned, without fine-tuning: `base [plain]`" in handout
    staff = " ".join((folder / "autograder" / "README.md").read_text().split())
    assert "0 points at or below 0.7500" in staff and "the label 'negative' given to every example), 0.7500" in staff
    report = " ".join((folder / "solution" / "report.md").read_text().split())
    assert "the label 'negative' given to every example scores accuracy 0.7500 on the same examples" in report
    # the intervals' method as the runs recorded it (it said "percentile-bootstrap" of exact binomial intervals)
    assert "Intervals are 95% confidence intervals over the examples (exact binomial (Clopper-Pearson))." in report

    solution = check_results(grade_submission_in(folder, folder / "solution"), secrets=("negative", "positive"))
    assert solution["score"] == 100
    constant = tmp_path / "constant"
    constant.mkdir()
    for name in ("experiment.yaml", "report.md"):
        (constant / name).write_text((folder / "solution" / name).read_text())
    ids = [json.loads(x)["id"] for x in (folder / "solution" / "predictions.jsonl").read_text().splitlines()]
    (constant / "predictions.jsonl").write_text("".join(json.dumps({"id": i, "answer": "negative"}) + "\n"
                                                        for i in ids))
    results = check_results(grade_submission_in(folder, constant), secrets=("negative", "positive"))
    metric = results["tests"][0]
    assert metric["score"] == 0 and "accuracy 0.7500" in metric["output"]
    assert "No credit at or below 0.7500 (what one answer given to every example scores" in metric["output"]


def grade_submission_in(folder: Path, submission: Path) -> dict:
    from llamalab.assignments.grade import grading_folder

    with grading_folder(folder) as grading:
        return grade_submission(grading, submission)


# ---- the baseline is the fine-tune's own base model --------------------------------------------------------------


def test_the_baseline_is_the_finetunes_base_model_unless_runs_are_named(lab: Lab) -> None:
    """Another model, an API model and an export of the lab's fine-tune (recorded as a base model) each scored
    better than the base model, and set the zero-credit line of a handout that calls it "the same model"."""
    examples = _examples(lab)
    _, tuned, base = _runs(lab, examples, base_right=lambda n, ex: n % 2 == 0)
    generate = _scored_eval(lab, "base-generate", {ex.id: (ex.answer, n % 4 != 0) for n, ex in enumerate(examples)},
                            protocol="generate")  # the same model, another protocol: 0.75
    other = _scored_eval(lab, "other", {ex.id: (ex.answer, n % 5 != 0) for n, ex in enumerate(examples)},
                         model="other-model")  # 0.8
    for label, fields in (("api", {"kind": "api", "model": None}), ("export", {"model": "exports/tuned-q8_0.gguf"})):
        _scored_eval(lab, label, {ex.id: (ex.answer, n % 8 != 0) for n, ex in enumerate(examples)}, **fields)

    folder = build_assignment(lab, "sentiment")
    config = yaml.safe_load((folder / "assignment.yaml").read_text())
    assert config["runs"]["baseline"] == generate.id and config["thresholds"]["baseline"] == 0.75
    with zipfile.ZipFile(folder / "autograder" / "autograder.zip") as archive:
        shown = json.loads(archive.read("grading/config.json"))["thresholds"]["baseline_system"]
    assert shown == "base-generate [plain, generate]"  # the protocol, which the label does not say
    report = " ".join((folder / "solution" / "report.md").read_text().split())
    assert "It is the base model the fine-tune started from (`tiny`), prompted without any training; it was scored " \
           "with the generate protocol, the fine-tuned run with loglikelihood" in report

    named = build_assignment(lab, "sentiment", name="named", from_runs=[tuned.id, other.id, base.id])
    assert yaml.safe_load((named / "assignment.yaml").read_text())["runs"]["baseline"] == other.id
    report = " ".join((named / "solution" / "report.md").read_text().split())
    assert "It is not the base model the fine-tune started from (`tiny`)" in report
    assert "It is the base model" not in report
    handout = " ".join((named / "student" / "README.md").read_text().split())
    assert "the best system without fine-tuning among the runs staff chose" in handout


def test_without_an_evaluation_of_the_base_model_the_error_says_which_to_make(lab: Lab) -> None:
    examples = _examples(lab)
    trained = _trained(lab)
    _scored_eval(lab, "tuned", {ex.id: (ex.answer, True) for ex in examples}, train_run=trained.id)
    _scored_eval(lab, "other", {ex.id: (ex.answer, False) for ex in examples}, model="other-model")
    with pytest.raises(LlamalabError) as error:
        build_assignment(lab, "sentiment")
    assert "the fine-tuned run's base model is tiny (revision test" in str(error.value)
    assert "(`llamalab eval tiny --task sentiment`)" in str(error.value)


# ---- the solution report is true of the records -----------------------------------------------------------------


def test_the_solution_reports_overlap_and_split_are_of_the_graded_examples(lab: Lab) -> None:
    """The report counted the overlap of the whole test split (one review there is also in train) for 40 graded
    examples without it, and said the split was fixed by the data files when the task draws it with a seed."""
    overlapping = "data/rt_polarity/rt-polarity.neg:640"  # the test review whose text is also in train
    examples = [ex for ex in _examples(lab, 400) if ex.id != overlapping]
    _runs(lab, examples[:40])
    report = " ".join((build_assignment(lab, "sentiment") / "solution" / "report.md").read_text().split())
    assert "none of the 40 graded test examples has a text that is also in train" in report
    assert "The test split is a seeded random split of the lab's pooled examples (`data.split` in " \
           "`tasks/sentiment.yaml`: test 0.1, seed 13, stratified by label), recorded in " \
           "`data/splits/sentiment.json`" in report
    assert "fixed by the lab's data files" not in report

    from llamalab.tasks.data import load_task_data

    test = {ex.id: ex for ex in load_task_data(load_task(lab.task_path("sentiment"), lab.root)).split("test")}
    _, tuned, base = _runs(lab, [*examples[:39], test[overlapping]])  # the overlapping review among the graded
    folder = build_assignment(lab, "sentiment", name="again", from_runs=[tuned.id, base.id])
    report = " ".join((folder / "solution" / "report.md").read_text().split())
    assert "1 of the 40 graded test examples has a text that is also in train" in report


def test_the_example_labs_gitignore_lists_the_hidden_paths() -> None:
    """What `llamalab init` scaffolds: the patterns git needs, checked without a build."""
    import llamalab

    text = (Path(llamalab.__file__).parent / "example_lab" / ".gitignore").read_text()
    for pattern in ("assignments/*/autograder/", "assignments/*/solution/",
                    "assignments/*/student/grading/labels.jsonl"):
        assert pattern in text.splitlines()


def test_a_rebuild_that_changes_the_hidden_test_says_so(lab: Lab) -> None:
    """A rebuild (say, for another --margin) after a wider fine-tuned evaluation took the new one's examples: the
    ids of a handout already given out named other examples, with no word of it."""
    trained, tuned, base = _runs(lab, _examples(lab, 40))
    notes: list[str] = []
    build_assignment(lab, "sentiment", note=notes.append)
    build_assignment(lab, "sentiment", margin=0.03, note=notes.append)  # the same runs: the same test
    assert not any("hidden test changed" in line for line in notes)
    wider = _examples(lab, 60)
    _scored_eval(lab, "tuned", {ex.id: (ex.answer, n % 10 != 0) for n, ex in enumerate(wider)}, train_run=trained.id)
    _scored_eval(lab, "base", {ex.id: (ex.answer, n % 2 == 0) for n, ex in enumerate(wider)})
    build_assignment(lab, "sentiment", note=notes.append)
    [said] = [line for line in notes if "hidden test changed" in line]
    assert said.startswith("the hidden test changed since the last build: ") and "of its 60 ids" in said
    assert f"(--from-runs {tuned.id} {base.id})" in said

    # killed between a build's two renames: the last build is `.sentiment.old`, which the next build puts back;
    # it read the settings the last build kept from the missing folder (a public assignment became private)
    build_assignment(lab, "sentiment", public=True)
    folder = lab.root / "assignments" / "sentiment"
    folder.rename(folder.with_name(".sentiment.old"))
    build_assignment(lab, "sentiment")
    assert yaml.safe_load((folder / "assignment.yaml").read_text())["public"] is True


def test_the_constant_answer_floor_on_random_hidden_tests(lab: Lab) -> None:
    """Property: for random hidden tests of a label task, the floor is the best of the labels given to every
    example, computed independently: accuracy the largest label share; macro-F1 of a constant label with c of n
    gold answers 2c / (c + n) over the classes present (the gold ones and that label); and its answer scores it."""
    import random

    from llamalab.assignments.references import constant_floor
    from llamalab.tasks.data import Example
    from llamalab.tasks.task import load_task

    task = load_task(lab.task_path("sentiment"), lab.root)
    labels = list(task.answer.labels)
    rng = random.Random(23)
    for _ in range(200):
        n = rng.randint(1, 60)
        share = rng.random()
        gold = [labels[0] if rng.random() < share else labels[1] for _ in range(n)]
        examples = [Example(f"x{i}", {"text": "t"}, g, "test:1") for i, g in enumerate(gold)]
        counts = {label: gold.count(label) for label in labels}
        answer, accuracy = constant_floor(task, examples, "accuracy")
        assert accuracy == pytest.approx(max(counts.values()) / n) and counts[answer] == max(counts.values())
        present = {label: len(set(gold) | {label}) for label in labels}
        expected = {label: 2 * c / (c + n) / present[label] for label, c in counts.items()}
        answer, macro = constant_floor(task, examples, "macro_f1")
        assert macro == pytest.approx(max(expected.values())) and expected[answer] == pytest.approx(macro)


def test_the_count_of_changed_hidden_test_ids_on_random_rebuilds() -> None:
    """Property: the rebuild's note counts exactly the ids that name other examples, the new ids and the ids gone
    (a hidden test that only shrank said "0 of its N ids now name other examples"), and says nothing when none
    changed."""
    import random
    import re

    from llamalab.assignments.build import hidden_test_change

    rng = random.Random(31)
    for _ in range(500):
        before = {f"t{i}": f"lab{rng.randint(0, 30)}" for i in rng.sample(range(40), rng.randint(0, 20))}
        now = {i: (lab_id if rng.random() < 0.7 else f"lab{rng.randint(0, 30)}") for i, lab_id in before.items()
               if rng.random() < 0.85}
        now |= {f"t{i}": f"lab{rng.randint(0, 30)}" for i in rng.sample(range(40, 60), rng.choice([0, 0, 3]))}
        said = hidden_test_change(before, now)
        other = sum(1 for i in now if i in before and before[i] != now[i])
        added, gone = len(set(now) - set(before)), len(set(before) - set(now))
        if not before or before == now:
            assert said is None
            continue
        counts = {"other": 0, "added": 0, "gone": 0}
        if m := re.search(r"(\d+) of its (\d+) ids now name other examples", said):
            counts["other"] = int(m[1])
            assert int(m[2]) == len(now)
        if m := re.search(r"(\d+) ids are new", said):
            counts["added"] = int(m[1])
        if m := re.search(r"(\d+) ids of the last build are gone", said):
            counts["gone"] = int(m[1])
        assert counts == {"other": other, "added": added, "gone": gone}, (said, before, now)
        assert any(counts.values())
