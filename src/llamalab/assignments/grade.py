"""The grader: a submission against the hidden answers, as Gradescope's results.json.

It reads three files and runs nothing a student wrote: `predictions.jsonl` (one {"id", "answer"} per example),
scored with the lab's own metric code; `experiment.yaml`, validated as an experiment file of the task; and
`report.md`, checked for its required sections. Every problem with a submission is a score and a message; a
failure of the grader itself is a zero with an apology, and its traceback goes to a test only staff can see.
Messages name ids and line numbers from the submission, never a gold answer.

On Gradescope, `run_autograder` runs `python -m llamalab.assignments.grade`; AUTOGRADER_ROOT (default
/autograder) moves the whole tree, for tests and local runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llamalab.assignments.rubric import (
    CONFIG_FILE,
    EXPERIMENT,
    IDS_FILE,
    LABELS_FILE,
    PREDICTIONS,
    REPORT,
    SUBMISSION_FILES,
    GradingConfig,
    metric_points,
    score_answer,
    section_key,
    split_points,
)
from llamalab.assignments.submission import SubmittedFile, read_submission, shown
from llamalab.config import LlamalabError, parse_model
from llamalab.evaluation.metrics import PARSED_AS, metric_intervals
from llamalab.evaluation.stats import interval_scheme
from llamalab.runs.files import write_text_atomic

CRASH_MESSAGE = ("The autograder failed while grading this submission. This is a problem with the grader, not "
                 "with your work: your score stays 0 until the course staff regrade it. Please let them know.")
_SHOWN_PROBLEMS = 5  # examples of each kind of problem in a message
_WHEN_SHOWN = {"after_due_date": "after the due date", "after_published": "once the grades are published"}


def grade_submission(grading: Path, submission: Path) -> dict[str, Any]:
    """Grade the submission folder against grading/ (config.json and labels.jsonl): Gradescope's results."""
    started = time.monotonic()
    config = load_config(grading)
    gold = load_gold(grading / LABELS_FILE)
    read = read_submission(submission, SUBMISSION_FILES, config.limits)
    predictions = parse_predictions(read.files[PREDICTIONS], gold, config)
    metric_test, leaderboard = _metric_test(predictions, gold, config, load_lab_ids(grading / IDS_FILE))
    tests = [metric_test, _format_test(predictions, gold, config), _experiment_test(read.files[EXPERIMENT], config),
             *_report_tests(read.files[REPORT], config)]
    for number, test in enumerate(tests, 1):
        test["number"] = str(number)
    score = round(sum(t["score"] for t in tests), 2)
    where = "the hidden test set" if config.split == "test" else "the dev split (a self-check: not the graded score)"
    if config.visibility == "visible":
        summary = f"{config.assignment}: {score:g} of {config.points.total} points on {where}."
    else:  # the total, the output and the leaderboard would each give the hidden metric test's score away
        shown_now = [t for t in tests if t["visibility"] == "visible"]
        summary = (f"{config.assignment}: {round(sum(t['score'] for t in shown_now), 2):g} of "
                   f"{round(sum(t['max_score'] for t in shown_now), 2):g} points on the checks shown now; the "
                   f"{config.metric} test on {where} ({config.points.metric} points) is shown "
                   f"{_WHEN_SHOWN[config.visibility]}.")
        leaderboard = []
    results = {"score": score, "execution_time": round(time.monotonic() - started),
               "output": "\n".join([summary, *read.notes]), "output_format": "text", "visibility": "visible",
               "stdout_visibility": "hidden", "tests": tests}
    return results | ({"leaderboard": leaderboard} if leaderboard else {})


@contextlib.contextmanager
def grading_folder(path: Path) -> Iterator[Path]:
    """The grading/ folder an assignment path holds: in its autograder.zip (the hidden test), else a grading/
    folder (the student's self-check on dev), else the path itself."""
    for archive_path in (path / "autograder" / "autograder.zip", path / "autograder.zip"):
        if archive_path.is_file():
            with tempfile.TemporaryDirectory() as scratch, zipfile.ZipFile(archive_path) as archive:
                folder = Path(scratch) / "grading"
                folder.mkdir()
                for name in (CONFIG_FILE, LABELS_FILE, IDS_FILE):
                    if f"grading/{name}" in archive.namelist():
                        (folder / name).write_bytes(archive.read(f"grading/{name}"))
                yield folder
            return
    for candidate in (path / "grading", path):
        if (candidate / CONFIG_FILE).is_file():
            yield candidate
            return
    raise LlamalabError(f"{path} holds no grading config: name an assignment folder (assignments/NAME), its "
                        "autograder/ or student/ folder, or a grading/ folder")


def load_config(grading: Path) -> GradingConfig:
    path = grading / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LlamalabError(f"{path}: cannot read the grading config ({exc})") from None
    return parse_model(GradingConfig, data, str(path))


def load_gold(path: Path) -> dict[str, str]:
    """The hidden answers, id -> gold, in the order the builder wrote them."""
    return {row["id"]: row["gold"] for row in _grading_rows(path, "gold")}


def load_lab_ids(path: Path) -> dict[str, str]:
    """The lab's id of each renamed hidden example (none for the dev self-check, whose ids are the lab's)."""
    if not path.is_file():
        return {}
    return {row["id"]: row["lab_id"] for row in _grading_rows(path, "lab_id")}


def _grading_rows(path: Path, key: str) -> list[dict[str, str]]:
    """The builder's JSON lines, each {"id": ..., key: ...} with string values (blank lines skipped); anything
    else is an error naming the line. These are the grader's own files: on Gradescope, `main` turns the error
    into a zero with an apology and shows it to staff."""
    fix = "rebuild the assignment (`llamalab assignment build`) and upload the new autograder.zip"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LlamalabError(f"{path} is missing: the grader needs it; {fix}") from None
    except OSError as exc:
        raise LlamalabError(f"{path}: cannot read it ({exc.strerror or exc}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise LlamalabError(f"{path}: not UTF-8 (byte offset {exc.start}); {fix}") from None
    rows, seen = [], {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise LlamalabError(f"{path}:{number}: not JSON ({exc}); {fix}") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get(key), str):
            raise LlamalabError(f'{path}:{number}: expected a JSON object with a string "id" and a string "{key}"; '
                                f"{fix}")
        if row["id"] in seen:
            raise LlamalabError(f"{path}:{number}: id {row['id']!r} was already given on line {seen[row['id']]}; "
                                f"{fix}")
        seen[row["id"]] = number
        rows.append(row)
    return rows


# ---- predictions.jsonl ----------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """What predictions.jsonl gave: usable answers by id, and what is wrong with the file (`fatal`: unreadable)."""

    answers: dict[str, str] = field(default_factory=dict)
    fatal: str | None = None
    problems: list[str] = field(default_factory=list)
    submitted: set[str] = field(default_factory=set)  # ids on a line of their own, whether or not answered usably


class _NotJson(ValueError):
    pass


def _no_constants(name: str) -> Any:
    raise _NotJson(name)


def _json_line(line: str) -> Any:
    # Numbers keep their text: "18" and 18 are the same answer, and no number is too long or too large to read.
    return json.loads(line, parse_constant=_no_constants, parse_int=str, parse_float=str)


def _decode(file: SubmittedFile) -> tuple[str | None, str | None]:
    """The file's text, or why not (not UTF-8)."""
    assert file.data is not None
    try:
        return file.data.decode("utf-8").removeprefix("\ufeff"), None
    except UnicodeDecodeError as exc:
        return None, (f"{shown(file.where)} is not UTF-8 text (byte 0x{file.data[exc.start]:02x} at offset "
                      f"{exc.start}): save it as UTF-8")


def parse_predictions(file: SubmittedFile, gold: dict[str, str], config: GradingConfig) -> Predictions:
    """Every line a JSON object {"id": ..., "answer": ...}; each id of the graded set exactly once."""
    if file.data is None:
        return Predictions(fatal=file.problem)
    text, problem = _decode(file)
    if text is None:
        return Predictions(fatal=problem)
    bad: dict[str, list[str]] = {}
    seen: Counter[str] = Counter()
    answers: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = _json_line(line)
        except _NotJson:
            bad.setdefault("lines with NaN or Infinity (JSON has neither)", []).append(f"line {number}")
            continue
        except RecursionError:
            bad.setdefault("lines nested too deeply to read", []).append(f"line {number}")
            continue
        except ValueError as exc:
            bad.setdefault("lines that are not valid JSON", []).append(f"line {number} ({str(exc)[:80]})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            bad.setdefault('lines that are not a JSON object with a string "id"', []).append(f"line {number}")
            continue
        ident = row["id"]
        seen[ident] += 1
        if "answer" not in row or row["answer"] is None:
            bad.setdefault('ids without an "answer"', []).append(shown(ident))
            continue
        value = _answer_text(row["answer"], config)
        if value is None:
            bad.setdefault("ids whose answer is not text", []).append(shown(ident))
            continue
        if len(value) > config.limits.answer_chars:
            bad.setdefault(f"ids whose answer is over {config.limits.answer_chars:,} characters", []).append(
                shown(ident))
            continue
        answers.setdefault(ident, value)
    duplicated = sorted(i for i, count in seen.items() if count > 1)
    extra = [i for i in seen if i not in gold]
    missing = [] if config.partial else [i for i in gold if i not in seen]
    for what, items in (("ids given more than once (each counts as unanswered)", [shown(i) for i in duplicated]),
                        ("ids that are not ids of this assignment", [shown(i) for i in extra]),
                        ("ids missing", [shown(i) for i in missing])):
        if items:
            bad.setdefault(what, []).extend(items)
    problems = [f"{what} ({len(items)}): {', '.join(items[:_SHOWN_PROBLEMS])}"
                f"{', ...' if len(items) > _SHOWN_PROBLEMS else ''}" for what, items in bad.items()]
    usable = {i: a for i, a in answers.items() if i in gold and seen[i] == 1}
    if not seen and not problems:
        return Predictions(fatal=f"{shown(file.where)} holds no predictions")
    return Predictions(usable, None, problems, set(seen))


def _answer_text(value: Any, config: GradingConfig) -> str | None:
    if isinstance(value, str):
        return value
    if config.answer.type == "entities" and isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return None


def _metric_test(predictions: Predictions, gold: dict[str, str], config: GradingConfig, lab_ids: dict[str, str]
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    t, points = config.thresholds, config.points.metric
    name = f"{config.metric} on the {'hidden test' if config.split == 'test' else 'dev'} examples"
    rule = (f"No credit at or below {t.zero_at:.4f} ({t.zero_reason()}), "
            f"full credit at or above {t.full_at:.4f} (the lab's fine-tuned result {t.finetuned:.4f} minus a margin "
            f"of {t.margin:g}), linear in between.")
    if predictions.fatal:
        return _test(name, 0, points, f"Not scored: {predictions.fatal}\n{rule}", config.visibility), []
    # A self-check scores the ids submitted: one submitted with a broken answer counts as wrong, as in the grade.
    ids = [i for i in gold if i in predictions.submitted] if config.partial else list(gold)
    if not ids:
        return _test(name, 0, points, f"Not scored: no answer has an id of this assignment.\n{rule}",
                     config.visibility), []
    # keyed by the lab's ids: the bootstrap resamples them in the order the lab's evaluation did, so the solution
    # (the fine-tuned run's own answers) gets the run's interval, not one of other resamples
    rows = [{"id": lab_ids.get(i, i), "gold": gold[i],
             **score_answer(config.answer, gold[i], predictions.answers.get(i, ""))} for i in ids]
    m = metric_intervals([config.metric], rows, config.answer.labels or None)[config.metric]
    score = metric_points(m["estimate"], t, points)
    unanswered = sum(1 for i in ids if i not in predictions.answers)
    unparsed = sum(1 for r in rows if not r.get("parsed", True)) - unanswered
    lines = [f"{config.metric} {m['estimate']:.4f} (95% CI [{m['low']:.4f}, {m['high']:.4f}], "
             f"{interval_scheme(m['method'])}) "
             f"on {len(ids)} examples: {score:g} of {points} points.", rule]
    if config.partial:
        lines.append(f"Scored on the {len(ids)} of {len(gold)} dev examples you submitted.")
    if unanswered:
        lines.append(f"{unanswered} example(s) have no usable answer and count as wrong.")
    if unparsed > 0:
        lines.append(f"{unparsed} answer(s) did not parse as {PARSED_AS[config.answer.type]} and count as wrong.")
    leaderboard = [{"name": config.metric, "value": round(m["estimate"], 4), "order": "desc"}]
    return _test(name, score, points, "\n".join(lines), config.visibility), leaderboard


def _format_test(predictions: Predictions, gold: dict[str, str], config: GradingConfig) -> dict[str, Any]:
    name, points = "predictions.jsonl: every id exactly once, each with an answer", config.points.predictions_format
    if predictions.fatal:
        return _test(name, 0, points, predictions.fatal)
    if predictions.problems:
        return _test(name, 0, points, "\n".join(predictions.problems))
    count = len(predictions.answers) if config.partial else len(gold)
    return _test(name, points, points, f"{count} ids, each exactly once, each with an answer.")


# ---- experiment.yaml ------------------------------------------------------------------------------------------


class _NoAliases(yaml.SafeLoader):
    """YAML without anchors and aliases: a few aliased lines can otherwise expand into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed here")
        return super().compose_node(parent, index)


def _experiment_test(file: SubmittedFile, config: GradingConfig) -> dict[str, Any]:
    from llamalab.training.experiment import Experiment

    name, points = f"{EXPERIMENT}: a valid experiment file of task {config.task}", config.points.experiment
    if file.data is None:
        return _test(name, 0, points, file.problem or "")
    text, problem = _decode(file)
    if text is None:
        return _test(name, 0, points, problem or "")
    try:
        data = yaml.load(text, Loader=_NoAliases)  # a SafeLoader: plain data only
    except RecursionError:
        return _test(name, 0, points, f"{EXPERIMENT} is nested too deeply to read")
    except yaml.YAMLError as exc:
        return _test(name, 0, points, f"{EXPERIMENT} is not valid YAML: {str(exc)[:300]}")
    except (ValueError, OverflowError) as exc:  # PyYAML's own: an impossible date, an integer too long to read
        return _test(name, 0, points, f"{EXPERIMENT} holds a value YAML cannot read: {str(exc)[:300]}")
    if data is None:
        return _test(name, 0, points, f"{EXPERIMENT} holds no settings (only comments?): put the config.yaml of "
                                      "the run behind your predictions here")
    if (where := _huge_integer(data)) is not None:  # YAML's hex, binary and base-60 integers have no length limit
        return _test(name, 0, points, f"not a valid experiment file: {EXPERIMENT} holds an integer of more than 64 "
                                      f"bits at {where or 'its top level'}; no setting needs one")
    try:
        experiment = parse_model(Experiment, data, EXPERIMENT)
    except LlamalabError as exc:
        return _test(name, 0, points, f"not a valid experiment file:\n{str(exc)[:1000]}")
    except RecursionError:
        return _test(name, 0, points, f"{EXPERIMENT} is nested too deeply to read")
    if experiment.task != config.task:
        return _test(name, 0, points, f"{EXPERIMENT} trains task {shown(experiment.task)}; this assignment's task "
                                      f"is {config.task}")
    size = f"{experiment.train_examples} training examples" if experiment.train_examples else "all training examples"
    return _test(name, points, points, f"method {experiment.method}, base model {shown(experiment.base_model)}, "
                                       f"{size}, seed {experiment.seed}.")


def _huge_integer(value: Any, where: str = "") -> str | None:
    """The key path of the first integer (or key) past 64 bits in loaded YAML, or None (iterative: no depth
    limit to hit)."""
    todo: list[tuple[Any, str]] = [(value, where)]
    while todo:
        item, path = todo.pop()
        if isinstance(item, int) and item.bit_length() > 64:
            return path
        if isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, int) and key.bit_length() > 64:
                    return path or "a key"
                todo.append((child, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list | tuple | set):
            todo.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


# ---- report.md ------------------------------------------------------------------------------------------------

# ATX: up to three spaces before the #s; the closing #s are stripped after the match (a lazy group before them
# made the match take time growing with the square of a long heading line's length)
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*)$")
_UNDERLINE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")  # setext: a paragraph underlined with = (level 1) or - (2)
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+>]|\d{1,9}[.)])(?:[ \t]|$)")  # a list or quote line, under --- is no heading
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)


def _report_tests(file: SubmittedFile, config: GradingConfig) -> list[dict[str, Any]]:
    sections = config.report_sections
    shares = split_points(config.points.report, len(sections))
    names = [f"{REPORT}: section \"{s}\" (at least {config.report_min_words} words)" for s in sections]
    text, problem = (None, file.problem) if file.data is None else _decode(file)
    if text is None:
        return [_test(n, 0, each, problem or "") for n, each in zip(names, shares, strict=True)]
    words = section_words(text, sections)
    tests = []
    for section, test_name, each in zip(sections, names, shares, strict=True):
        body = words[section]
        if body is None:
            tests.append(_test(test_name, 0, each, f"no heading containing \"{section}\" (e.g. ## {section})"))
        elif body < config.report_min_words:
            tests.append(_test(test_name, 0, each, f"\"{section}\" has {body} words of your own; it needs at least "
                                                   f"{config.report_min_words}"))
        else:
            tests.append(_test(test_name, each, each, f"\"{section}\": {body} words. Staff read the report too."))
    return tests


def report_sections(markdown: str) -> list[tuple[int, str, int]]:
    """Each heading (`## Title`, or a paragraph underlined with === or ---) as (level, normalised text, words up
    to the next heading of any level); HTML comments (the template's prompts) and fenced code do not count."""
    found: list[tuple[int, str, int]] = []
    words, fenced = 0, False
    paragraph: list[tuple[str, int]] = []  # the running paragraph's lines and the words counted for each

    def heading(level: int, text: str) -> None:
        nonlocal words
        if found:
            found[-1] = (*found[-1][:2], words)
        found.append((level, section_key(text), 0))
        words = 0

    markdown = markdown.replace("\r\n", "\n").replace("\r", "\n")  # saved on Windows: its underlines are underlines
    for line in _COMMENT.sub("", markdown).split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced, paragraph = not fenced, []
        elif fenced:
            continue
        elif match := _HEADING.match(line):
            heading(len(match.group(1)), match.group(2).rstrip(" \t#"))
            paragraph = []
        elif paragraph and not _LIST_ITEM.match(paragraph[0][0]) and (underline := _UNDERLINE.match(line)):
            words -= sum(counted for _, counted in paragraph)  # the heading's own words, not its section's
            heading(1 if underline.group(1)[0] == "=" else 2, " ".join(text.strip() for text, _ in paragraph))
            paragraph = []
        elif not line.strip():
            paragraph = []
        else:
            counted = len(re.findall(r"[^\W_]+", line)) if found else 0
            words += counted
            paragraph.append((line, counted))
    if found:
        found[-1] = (*found[-1][:2], words)
    return found


def section_words(markdown: str, sections: list[str]) -> dict[str, int | None]:
    """Words of each required section (None: no heading names it): under its heading and its subheadings, up to
    the next heading of its level or above. A subheading that is itself a required section keeps its words: one
    paragraph never counts for two sections."""
    found = report_sections(markdown)
    chosen = _section_headings(found, sections)
    owned = {index for index in chosen.values() if index is not None}
    words: dict[str, int | None] = {}
    for section, index in chosen.items():
        if index is None:
            words[section] = None
            continue
        level, total, inside = found[index][0], found[index][2], None  # inside: level of a skipped subsection
        for position in range(index + 1, len(found)):
            sub_level, _, sub_words = found[position]
            if sub_level <= level:
                break
            if inside is not None and sub_level > inside:
                continue
            inside = sub_level if position in owned else None
            total += 0 if position in owned else sub_words
        words[section] = total
    return words


def _section_headings(found: list[tuple[int, str, int]], sections: list[str]) -> dict[str, int | None]:
    """The heading (its index) that names each section, each heading naming one section at most: a heading that
    is the section's name ("Ablation") before one that starts with it ("2. Ablation (LoRA rank)"), the first of
    equals. A heading that merely mentions it (the template's title, "Report: ... fine-tuning on ...") is not the
    section: a deleted section would otherwise be credited with the title's words."""
    bare = [re.sub(r"^[\d ]+", "", heading) for _, heading, _ in found]
    chosen: dict[str, int | None] = dict.fromkeys(sections)
    for exact in (True, False):
        for section in sections:
            key = section_key(section)
            if chosen[section] is None:
                chosen[section] = next((i for i, text in enumerate(bare) if i not in chosen.values() and (
                    text == key if exact else text.startswith(key))), None)
    return chosen


# ---- results.json ---------------------------------------------------------------------------------------------


def _test(name: str, score: float, max_score: float, output: str, visibility: str = "visible") -> dict[str, Any]:
    return {"name": name, "score": score, "max_score": max_score,
            "status": "passed" if score >= max_score else "failed", "output": output, "visibility": visibility}


def crash_results(detail: str) -> dict[str, Any]:
    """A zero with an apology for the student; what went wrong only in a test hidden from students."""
    return {"score": 0, "execution_time": 0, "output": CRASH_MESSAGE, "output_format": "text",
            "visibility": "visible", "stdout_visibility": "hidden",
            "tests": [{"name": "Autograder error (staff only)", "score": 0, "max_score": 0, "status": "failed",
                       "visibility": "hidden",
                       "output": "Sorry: the grader failed on this submission, so it was given 0. Regrade it once the "
                                 f"grader is fixed.\n\n{detail}"}]}


def write_results(path: Path, results: dict[str, Any]) -> None:
    # allow_nan=False: whatever went wrong, the file Gradescope reads is strict JSON.
    write_text_atomic(path, json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Grade /autograder/submission into /autograder/results/results.json (the root from AUTOGRADER_ROOT or
    --root); always writes a valid results.json and exits 0, so Gradescope shows it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("AUTOGRADER_ROOT", "/autograder")))
    args = parser.parse_args(argv)
    out = args.root / "results" / "results.json"
    try:
        results = grade_submission(args.root / "source" / "grading", args.root / "submission")
        write_results(out, results)
    except Exception:  # the grader's own failure: never the student's to see
        detail = traceback.format_exc()
        print(detail, file=sys.stderr)  # run_autograder's log, for staff
        write_results(out, crash_results(detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
