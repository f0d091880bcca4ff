"""`llamalab assignment build TASK`: a lab task as a course assignment, from the lab's own runs.

assignments/NAME/
  student/      the handout (README, starter notebook and script), a small lab with the train and dev data, the
                test inputs without answers, the submit/ template, and grading/ for a self-check on dev
  autograder/   autograder.zip for Gradescope (setup.sh, run_autograder, llamalab's code, the hidden answers and
                the grading config) and the staff notes
  solution/     the reference submission: the lab's fine-tuned run's answers, its config and a report
  assignment.yaml   what the assignment was built from; `public: true` puts the handout on the lab site

The whole folder is staged and swapped in at the end; files staff added (such as leaderboard.csv) are kept.
autograder/, solution/ and student/grading/labels.jsonl hold the hidden answers (or answers to them): the lab's
.gitignore keeps them out of its repository, and the build warns when git tracks them anyway.
"""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import stat
import subprocess
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2.meta
import yaml

import llamalab
from llamalab.assignments.grade import crash_results
from llamalab.assignments.handout import ANSWER_FORMATS, SECTION_PROMPTS, notebook_from_script, render
from llamalab.assignments.references import References, choose_references, describe_constant
from llamalab.assignments.rubric import (
    ASSIGNMENT_FILE,
    CONFIG_FILE,
    EXPERIMENT,
    IDS_FILE,
    LABELS_FILE,
    PREDICTIONS,
    REPORT,
    REPORT_MIN_WORDS,
    REPORT_SECTIONS,
    GradingConfig,
    archived_ids,
    split_points,
    submission_answer,
)
from llamalab.config import LlamalabError
from llamalab.evaluation.compare import compare, format_p
from llamalab.evaluation.stats import interval_scheme
from llamalab.lab import Lab
from llamalab.runs.files import staged_folder, write_bytes_atomic, write_json_atomic, write_text_atomic
from llamalab.runs.record import CONFIG_FILE as RUN_CONFIG
from llamalab.runs.record import RunRecord, list_runs
from llamalab.tasks.checks import _by_text  # the data check's own normalisation of texts, for the overlap
from llamalab.tasks.data import Example
from llamalab.tasks.task import Task, load_task
from llamalab.training.experiment import resolve_experiment

DEFAULT_MARGIN = 0.02
_OURS = {"student", "autograder", "solution", ASSIGNMENT_FILE}
# The grader's own dependencies (no torch, no model), pinned at the versions installed here.
_GRADER_PACKAGES = ("numpy", "scipy", "pydantic", "PyYAML")
_TEXT_PACKAGES = ("rouge-score", "nltk")
_GRADER_TIMEOUT_S = 900
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so a rebuild from the same records gives the same zip
# What holds hidden answers (or the answers to them), relative to the assignment folder: never in a repository.
HIDDEN_PATHS = ("autograder", "solution", f"student/grading/{LABELS_FILE}")


def build_assignment(lab: Lab, task: str, *, name: str | None = None, from_runs: Sequence[str] | None = None,
                     out: Path | str | None = None, margin: float = DEFAULT_MARGIN, public: bool | None = None,
                     note: Callable[[str], None] = lambda line: None) -> Path:
    """Write assignments/NAME (or `out`) for `task`; thresholds come from `from_runs` (eval run ids on the test
    split) or else from the lab's finished test evaluations. `public` None keeps the previous build's setting.
    `note` gets what staff should know: the constant-answer floor, and hidden files that git tracks."""
    spec = load_task(lab.task_path(task), lab.root)
    name = name or spec.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise LlamalabError(f"assignment name {name!r}: use letters, digits, '.', '_' and '-'")
    if not 0 <= margin < 1:
        raise LlamalabError(f"--margin {margin}: give a score difference from 0 up to (not including) 1, e.g. 0.02")
    target = (Path(out) if out else lab.root / "assignments" / name).resolve()
    if target == lab.root.resolve() or lab.root.resolve().is_relative_to(target):
        raise LlamalabError(f"--out {out}: that folder holds the lab itself, and a build replaces its --out folder "
                            "whole; name a folder of its own, e.g. --out assignments-out/" + name)
    if target.exists() and not target.is_dir():  # a build would put a folder where the user's file is
        raise LlamalabError(f"{f'--out {out}' if out else target} is a file: name a folder (the build writes "
                            "student/, autograder/ and solution/ into it), or move the file")
    if target.is_dir() and any(target.iterdir()) and not (target / ASSIGNMENT_FILE).is_file():
        raise LlamalabError(f"{f'--out {out}' if out else target}: that folder holds files an assignment build did "
                            f"not make (it has no {ASSIGNMENT_FILE}), and the build would mix its own among them: "
                            f"name a new or empty folder, e.g. --out assignments-out/{name}")
    refs = choose_references(lab, spec, from_runs, margin)
    if not refs.data.splits.get("dev"):  # the handout's data/dev.jsonl, its data check and self-check grade on it
        raise LlamalabError(f"task {spec.name!r} has no dev split, which a handout gives students to choose their "
                            f"settings on and to check their work with: give tasks/{spec.name}.yaml one (a file "
                            "with `split: dev`, or `dev: 0.1` under `data.split`) and evaluate again")
    # the last build: the folder, or (a kill between a build's two renames) the copy the next build puts back
    last = target if target.is_dir() or not target.with_name(f".{target.name}.old").is_dir() else \
        target.with_name(f".{target.name}.old")
    previous = _previous(last)
    hidden = _hidden(refs.examples, name)
    before = archived_ids(last / "autograder" / "autograder.zip")  # read now: the build replaces the folder
    config = GradingConfig(assignment=name, task=spec.name, split="test", n=len(hidden), answer=spec.answer,
                           metric=refs.thresholds.metric, thresholds=refs.thresholds)
    context = _context(lab, spec, name, refs, hidden, config, target)
    # the folders this build makes to hold the target, if it fails: none is left behind, empty
    made = [folder for folder in (target.parent, *target.parent.parents) if not folder.exists()]
    try:
        with staged_folder(target) as staging:
            _keep_staff_files(target, staging)
            _student(staging / "student", spec, refs, hidden, config, context)
            _autograder(staging / "autograder", refs, hidden, config, context)
            _solution(staging / "solution", lab, refs, hidden, context)
            public = previous.get("public", False) if public is None else public
            write_text_atomic(staging / ASSIGNMENT_FILE, _assignment_yaml(spec, refs, config, public))
    except BaseException:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:  # not empty (someone else's files): kept
                break
        raise
    t = refs.thresholds
    where = "above" if t.floor_is_constant else "not above"
    note(f"constant-answer floor: {describe_constant(spec, refs.constant_answer)} scores {t.metric} "
         f"{t.constant:.4f} on the hidden test, {where} the best baseline's {t.baseline:.4f}"
         + (", so no credit is given at or below it" if t.floor_is_constant else ""))
    if change := hidden_test_change(before, {i: ex.id for i, ex in hidden}):
        runs = previous.get("runs") if isinstance(previous.get("runs"), dict) else {}
        keep = " ".join(str(r) for r in (runs.get("finetuned"), runs.get("baseline")) if r)
        note(f"the hidden test changed since the last build: {change} (another fine-tuned evaluation was chosen): "
             "a handout given out before no longer matches the grader; hand out the new student/ folder, or rebuild "
             "with the earlier runs" + (f" (--from-runs {keep})" if keep else ""))
    for line in _git_warnings(target):
        note(line)
    return target


def _git_warnings(target: Path) -> list[str]:
    """Hidden files of the assignment that git tracks, or would add (the lab's .gitignore, from before they were
    ignored, does not ignore them): a lab's repository is often public (GitHub Pages). Nothing when git is
    missing or the folder is in no repository; git's own failures are never the build's."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(target), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None

    inside = git("rev-parse", "--is-inside-work-tree")
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return []
    warnings = []
    tracked = git("ls-files", "--", *HIDDEN_PATHS)
    files = tracked.stdout.splitlines() if tracked is not None and tracked.returncode == 0 else []
    if files:
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        parts = [p for p in HIDDEN_PATHS if any(f == p or f.startswith(p + "/") for f in files)]
        warnings.append(f"warning: git tracks hidden files of this assignment ({shown}), which hold the hidden "
                        "test's answers: if the lab's repository is public, so are they. Untrack them (in "
                        f"{target}: git rm -r --cached {' '.join(parts)}), commit, and make sure .gitignore "
                        "ignores them")
    ignored = git("check-ignore", "--no-index", "--", *HIDDEN_PATHS)
    if ignored is not None and ignored.returncode in (0, 1):
        missing = [p for p in HIDDEN_PATHS if p not in ignored.stdout.split("\n")]
        if missing:
            warnings.append(f"warning: git does not ignore {', '.join(missing)} (in {target}), so `git add -A` "
                            "would add hidden answers: add them to .gitignore (a lab's has the lines "
                            "assignments/*/autograder/, assignments/*/solution/ and "
                            "assignments/*/student/grading/labels.jsonl)")
    return warnings


def _keep_staff_files(target: Path, staging: Path) -> None:
    """What staff added next to a previous build (e.g. leaderboard.csv) survives a rebuild."""
    for entry in sorted(target.iterdir()) if target.is_dir() else []:
        if entry.name in _OURS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, staging / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, staging / entry.name, follow_symlinks=False)


def hidden_test_change(before: dict[str, str], now: dict[str, str]) -> str | None:
    """How the hidden test (test id -> lab id) differs from the last build's, None where it does not (or there was
    none): ids now naming other examples, ids new, ids gone."""
    if not before or before == now:
        return None
    other = sum(1 for i, lab_id in now.items() if i in before and before[i] != lab_id)
    added, gone = len(now.keys() - before.keys()), len(before.keys() - now.keys())
    parts = [f"{other} of its {len(now)} ids now name other examples"] if other or not (added or gone) else []
    parts += [f"{added} ids are new"] if added else []
    parts += [f"{gone} ids of the last build are gone"] if gone else []
    return ", ".join(parts)


def _previous(target: Path) -> dict:
    path = target / ASSIGNMENT_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def _hidden(examples: list[Example], name: str) -> list[tuple[str, Example]]:
    """Each test example under a new id, in a shuffled order: the lab's ids (e.g. `rt-polarity.pos:12`) and its
    split order (grouped by label) would give answers away."""
    order = list(examples)
    random.Random(f"assignment:{name}").shuffle(order)
    return [(f"test-{number:05d}", ex) for number, ex in enumerate(order, 1)]


def _context(lab: Lab, spec: Task, name: str, refs: References, hidden: list[tuple[str, Example]],
             config: GradingConfig, target: Path) -> dict[str, Any]:
    """What every template may use."""
    generation = spec.answer.type != "label"
    train = refs.data.split("train")
    balance = Counter(ex.answer for ex in train) if spec.answer.type == "label" else {}
    first_id, first = hidden[0]
    points = config.points
    return {
        "title": f"Assignment {name}: fine-tuning on {spec.name}", "name": name, "task": spec, "lab": lab.config,
        "lab_description": lab.config.description, "metric": config.metric, "thresholds": config.thresholds,
        "points": points, "limits": config.limits, "n": config.n, "min_words": REPORT_MIN_WORDS,
        "sections": list(REPORT_SECTIONS), "sections_listed": ", ".join(f'"{s}"' for s in REPORT_SECTIONS),
        "section_points": list(zip(REPORT_SECTIONS, split_points(points.report, len(REPORT_SECTIONS)), strict=True)),
        "counts": {"train": len(train), "dev": len(refs.data.splits.get("dev", [])), "test": config.n},
        "label_balance": ", ".join(f"{label} {count}" for label, count in sorted(balance.items())),
        "answer_format": ANSWER_FORMATS[spec.answer.type].format(labels=", ".join(spec.answer.labels)),
        "example_input": json.dumps({**_inputs(spec, first), "id": first_id}, ensure_ascii=False),
        "example_prediction": json.dumps({"id": first_id, "answer": _example_answer(spec)}),
        "dev_limit": 40 if generation else 300, "train_examples": 200 if generation else 400,
        "sources": _sources(spec), "folder": _from_lab(lab, target), "timeout_s": _GRADER_TIMEOUT_S,
        "same_base": refs.same_base, "base_model": refs.trained.run.model.name,
        "constant": describe_constant(spec, refs.constant_answer),  # staff's texts only: it may be a hidden answer
    }


def _from_lab(lab: Lab, target: Path) -> str:
    """The assignment folder as the staff's commands name it, from the lab root (`assignments/NAME`); a folder
    outside the lab by its own name (no machine's path in a handout)."""
    resolved, root = target.resolve(), lab.root.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else target.name


def _example_answer(spec: Task) -> str:
    return {"label": (spec.answer.labels or ["label"])[0], "number": "42", "sql": "SELECT 1",
            "entities": '[{"type": "person", "text": "Ada"}]'}.get(spec.answer.type, "your answer")


def _inputs(spec: Task, example: Example) -> dict[str, Any]:
    """What a test input may show: the fields the prompt uses, never the answer."""
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(spec.prompt.template))
    keep = (set(spec.data.text_fields) | used) - {spec.data.answer_field}
    return {k: v for k, v in example.fields.items() if k in keep}


def _sources(spec: Task) -> list[dict[str, Any]]:
    """Each data folder's SOURCE and license files, which travel with the data."""
    sources = []
    for folder in sorted({spec.data_path(f).parent for f in spec.data.files}):
        files = sorted(p for p in folder.iterdir() if p.is_file() and re.match(r"(SOURCE|LICEN[CS]E|README)", p.name))
        text = (folder / "SOURCE.md").read_text(encoding="utf-8") if (folder / "SOURCE.md").is_file() else ""
        match = re.search(r"License:\*{0,2}\s*(.+?)(?:\.\s|\.?$)", text, re.M)
        sources.append({"folder": folder.name, "files": files,
                        "license": match.group(1).strip() if match else "see the folder"})
    return sources


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)


# ---- student/ -------------------------------------------------------------------------------------------------


def _student(folder: Path, spec: Task, refs: References, hidden: list[tuple[str, Example]], config: GradingConfig,
             context: dict[str, Any]) -> None:
    answer_field = spec.data.answer_field
    for split in ("train", "dev"):
        # the example's id last: a data field named "id" (the task's id_field may be another) must not replace it
        rows = [{**ex.fields, "id": ex.id, answer_field: ex.answer} for ex in refs.data.splits.get(split, [])]
        write_text_atomic(folder / "data" / f"{split}.jsonl", _jsonl(rows))
    write_text_atomic(folder / "data" / "test_inputs.jsonl",
                      _jsonl([{**_inputs(spec, ex), "id": ident} for ident, ex in hidden]))
    for source in context["sources"]:
        for path in source["files"]:
            shutil.copyfile(path, _parent(folder / "data" / source["folder"] / path.name))
    task_file = spec.model_dump(mode="json", exclude={"lab_root"})
    task_file["data"] = {"files": [{"path": "data/train.jsonl", "split": "train"},
                                   {"path": "data/dev.jsonl", "split": "dev"}],
                         "text_fields": spec.data.text_fields, "answer_field": answer_field, "id_field": "id"}
    write_text_atomic(folder / "tasks" / f"{spec.name}.yaml", yaml.safe_dump(task_file, sort_keys=False,
                                                                             allow_unicode=True))
    load_task(folder / "tasks" / f"{spec.name}.yaml", folder)  # the student's lab must load as written
    write_text_atomic(folder / "lab.yaml", yaml.safe_dump(
        {"name": context["title"], "description": context["lab_description"]}, sort_keys=False, allow_unicode=True))
    dev = refs.data.splits["dev"]  # the self-check: dev answers the student has anyway, graded by the same rules
    dev_config = config.model_copy(update={"split": "dev", "n": len(dev), "partial": True})
    _grading(folder / "grading", dev_config, [{"id": ex.id, "gold": ex.answer} for ex in dev])
    write_text_atomic(folder / "submit" / PREDICTIONS, _jsonl([{"id": ident, "answer": None} for ident, _ in hidden]))
    write_text_atomic(folder / "submit" / EXPERIMENT, render("experiment.yaml.jinja", **context))
    write_text_atomic(folder / "submit" / REPORT, render(
        "report.md.jinja", **{**context, "sections": [(s, SECTION_PROMPTS[s]) for s in REPORT_SECTIONS]}))
    script = render("starter.py.jinja", **context)
    write_text_atomic(folder / "starter.py", script)
    write_text_atomic(folder / "starter.ipynb", notebook_from_script(script))
    write_text_atomic(folder / "README.md", render("README.md.jinja", **context))


def _parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _grading(folder: Path, config: GradingConfig, gold: list[dict[str, str]]) -> None:
    write_json_atomic(folder / CONFIG_FILE, config.model_dump(mode="json"))
    write_text_atomic(folder / LABELS_FILE, _jsonl(gold))


# ---- autograder/ ----------------------------------------------------------------------------------------------


def _autograder(folder: Path, refs: References, hidden: list[tuple[str, Example]], config: GradingConfig,
                context: dict[str, Any]) -> None:
    fallback = crash_results("The grader did not finish: it crashed, was killed or timed out, or Python could not "
                             "start. run_autograder's output (shown to staff) says why.")
    files = {
        "setup.sh": render("setup.sh.jinja", **context).encode(),
        "run_autograder": render("run_autograder.jinja", **context, fallback_json=json.dumps(fallback)).encode(),
        "requirements.txt": _requirements(config).encode(),
        f"grading/{CONFIG_FILE}": (json.dumps(config.model_dump(mode="json"), indent=2) + "\n").encode(),
        f"grading/{LABELS_FILE}": _jsonl([{"id": i, "gold": ex.answer} for i, ex in hidden]).encode(),
        f"grading/{IDS_FILE}": _jsonl([{"id": i, "lab_id": ex.id} for i, ex in hidden]).encode(),
        **_vendored(),
    }
    write_bytes_atomic(folder / "autograder.zip", _zip(files, executable={"setup.sh", "run_autograder"}))
    write_text_atomic(folder / "README.md", render("staff.md.jinja", **context))


def _requirements(config: GradingConfig) -> str:
    packages = _GRADER_PACKAGES + (_TEXT_PACKAGES if config.answer.type == "text" else ())
    return "".join(f"{name}=={metadata.version(name)}\n" for name in packages)


def _vendored() -> dict[str, bytes]:
    """llamalab's Python code (without the example lab's data): the grader imports it from vendor/."""
    package = Path(llamalab.__file__).parent
    files = {}
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if relative.parts[0] != "example_lab" and "__pycache__" not in relative.parts:
            files[f"vendor/llamalab/{relative.as_posix()}"] = path.read_bytes()
    return files


def _zip(files: dict[str, bytes], executable: set[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | (0o755 if name in executable else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    return buffer.getvalue()


# ---- solution/ ------------------------------------------------------------------------------------------------


def _solution(folder: Path, lab: Lab, refs: References, hidden: list[tuple[str, Example]], context: dict[str, Any]
              ) -> None:
    rows = [{"id": ident, "answer": submission_answer(refs.rows[ex.id])} for ident, ex in hidden]
    write_text_atomic(folder / PREDICTIONS, _jsonl(rows))
    config_path = refs.trained.folder / RUN_CONFIG
    try:
        write_text_atomic(folder / EXPERIMENT, config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise LlamalabError(f"{config_path}: cannot read train run {refs.trained.id}'s settings, which are the "
                            f"solution's experiment.yaml ({exc}): restore the file (e.g. from git)") from None
    metric = context["metric"]
    config, _ = resolve_experiment(refs.trained.config, str(config_path))  # typed, defaults in
    lora = f" (rank {config.lora.r}, alpha {config.lora.alpha})" if config.method in ("lora", "qlora") else ""
    spec: Task = context["task"]
    overlap = _overlap(spec, refs.data.split("train"), [ex for _, ex in hidden])
    write_text_atomic(folder / REPORT, render(
        "solution_report.md.jinja", **context, trained=refs.trained, config=config, lora=lora,
        baseline=refs.baseline_metric, finetuned=refs.finetuned.run.metrics[metric],
        overlap=f"{overlap:,} of the {len(hidden):,} graded test examples {'has' if overlap == 1 else 'have'} "
        "a text that is also in train" if overlap else f"none of the {len(hidden):,} graded test examples has a text "
        "that is also in train",
        split=_split_sentence(spec, refs), baseline_text=_baseline_text(refs, context["constant"]),
        paired=_paired(lab, refs, metric), ablation=_ablation(lab, refs, metric),
        interval_methods=_interval_methods([refs.baseline_metric, refs.finetuned.run.metrics[metric],
                                            *(r.run.metrics[metric] for r in _ablations(lab, refs, metric))])))


def _interval_methods(intervals: list) -> str:
    """How the report's intervals were computed, as each records it: "exact binomial (Clopper-Pearson)", or the
    schemes of runs evaluated at different times joined."""
    schemes = dict.fromkeys(interval_scheme(m.method) for m in intervals)
    return "; ".join(schemes)


def _overlap(spec: Task, train: list[Example], graded: list[Example]) -> int:
    """How many graded examples have a text that is also in train, normalised as `llamalab data check` does."""
    seen = _by_text(spec.data.text_fields, train)
    return sum(len(group) for key, group in _by_text(spec.data.text_fields, graded).items() if key in seen)


def _split_sentence(spec: Task, refs: References) -> str:
    """Where the test examples come from, as the task file says: its own files, or a seeded random split."""
    files = [f.path for f in spec.data.files if f.split == "test"]
    split = spec.data.split
    if files or split is None:
        where = f"the lab's data files ({', '.join(files)})" if files else "the lab's data files"
        return f"The test split is fixed by {where}"
    source = "pooled" if split.source == "pool" else "training"
    stratified = ", stratified by label" if split.stratify and spec.answer.type == "label" else ""
    recorded = f", recorded in `data/splits/{spec.name}.json`" if refs.data.split_manifest is not None else ""
    return (f"The test split is a seeded random split of the lab's {source} examples (`data.split` in "
            f"`tasks/{spec.name}.yaml`: test {split.test:g}, seed {split.seed}{stratified}){recorded}")


def _baseline_text(refs: References, constant: str) -> str:
    """What the baseline is (true of the run chosen) and where no credit starts."""
    t, base, tuned = refs.thresholds, refs.baseline.run, refs.finetuned.run
    if refs.same_base:
        what = (f"It is the base model the fine-tune started from (`{refs.trained.run.model.name}`), prompted "
                "without any training")
    else:
        what = (f"It is not the base model the fine-tune started from (`{refs.trained.run.model.name}`): it was "
                "named with --from-runs, so the range graded on measures more than what fine-tuning added")
    if base.scoring.protocol != tuned.scoring.protocol:
        what += (f"; it was scored with the {base.scoring.protocol} protocol, the fine-tuned run with "
                 f"{tuned.scoring.protocol}")
    if t.floor_is_constant:
        return (f"{what}. A constant answer scores more: {constant} scores {t.metric} {t.constant:.4f} on the same "
                f"examples, so that is where this assignment gives no credit for the metric: a fine-tune must beat "
                "a constant answer to count.")
    return (f"{what}, and it sets the point where this assignment gives no credit for the metric: a fine-tune must "
            f"beat it to count. (The best constant answer, {constant}, scores {t.constant:.4f}.)")


def _paired(lab: Lab, refs: References, metric: str) -> str:
    """The paired test of the fine-tuned run against the baseline, as `llamalab compare` computes it."""
    result = compare(lab, refs.finetuned.run.task.name, "test", metric, only={refs.finetuned.id, refs.baseline.id},
                     reference=refs.baseline.id)
    vs = next(row.vs_reference for row in result.systems if row.run == refs.finetuned.id)
    if vs is None or vs.delta is None:
        return "The two runs share no test examples, so no paired test is possible."
    return (f"On the {vs.n:,} test examples both saw, the {vs.test} test of the difference gives p = "
            f"{format_p(vs.p_value)}.")


def _ablations(lab: Lab, refs: References, metric: str) -> list[RunRecord]:
    """The lab's other fine-tuned evaluations on the reference's test split that record the metric."""
    task = refs.finetuned.run.task.name
    return [r for r in list_runs(lab.runs_dir, "eval")
            if r.run.finished and r.run.task.name == task and r.run.task.split == "test"
            and r.run.system.kind == "finetuned" and r.id != refs.finetuned.id and metric in r.run.metrics
            and not r.run.export_type]  # a quantization study's copy of a run's weights is no other setting


def _ablation(lab: Lab, refs: References, metric: str) -> str:
    """The lab's other fine-tuned runs on the same test split, or what an ablation would be."""
    if not (others := _ablations(lab, refs, metric)):
        return ("The lab has one fine-tuned evaluation of this task on the test split, so this reference has no "
                "ablation of its own. A natural one keeps every setting and the seed, halves the LoRA rank or the "
                "number of training examples, and compares the two fine-tunes on dev with a paired test.")
    listed = "; ".join(f"`{r.run.display_label}` (run `{r.id}`): {m.estimate:.4f} [{m.low:.4f}, {m.high:.4f}], "
                       f"n = {m.n:,}" for r in others if (m := r.run.metrics[metric]))
    return (f"The lab's other fine-tuned runs on this test split differ from the reference in their settings, and "
            f"serve as its ablations. Their {metric}, each with its 95% CI: {listed}. Differences smaller than the "
            "width of these intervals are not evidence of an effect.")


def _assignment_yaml(spec: Task, refs: References, config: GradingConfig, public: bool) -> str:
    t = refs.thresholds
    data = {"task": spec.name, "public": public, "metric": t.metric,
            "thresholds": {"zero_at": t.zero_at, "full_at": t.full_at, "margin": t.margin, "baseline": t.baseline,
                           "constant": t.constant, "finetuned": t.finetuned},
            "runs": {"finetuned": t.finetuned_run, "baseline": t.baseline_run, "train": refs.trained.id},
            "points": config.points.model_dump(), "llamalab": llamalab.__version__}
    return ("# Built by `llamalab assignment build`. public: true publishes the handout (and leaderboard.csv, with "
            "columns name and score, if you add one) on the lab site.\n"
            + yaml.safe_dump(data, sort_keys=False))
