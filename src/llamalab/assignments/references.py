"""The lab's runs an assignment is calibrated on: its fine-tuned result (full credit, less a margin), its best
baseline without fine-tuning (no credit), and the test examples the fine-tuned run answered (the hidden test).

Both thresholds are scores on the hidden test itself: a baseline that answered more examples is scored again on
those, and one that answered fewer cannot set a threshold (a score on other examples is not comparable). The
baseline is the fine-tuned run's own base model without fine-tuning (unless --from-runs names others), so the
range graded on is what fine-tuning adds. No credit is ever given for what one answer repeated for every example
scores (the majority label, say): zero credit is at that floor when it is above the baseline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from llamalab.assignments.rubric import Thresholds, score_answer
from llamalab.config import LlamalabError
from llamalab.evaluation.answers import extract_number
from llamalab.evaluation.metrics import canonical_order, metric_intervals, row_statistic
from llamalab.lab import Lab
from llamalab.runs.record import CONFIG_FILE, RunRecord, find_run, list_runs, read_predictions, started_at
from llamalab.runs.schema import Interval
from llamalab.tasks.data import Example, TaskData, load_task_data
from llamalab.tasks.task import Task

HOW_TO_MAKE_RUNS = (
    "make them first: `llamalab demo` does both for sentiment; for any task, `llamalab eval smollm2-135m-instruct "
    "--task {task}` evaluates the base model, and `llamalab train EXPERIMENT` then `llamalab eval RUN_ID --task "
    "{task}` the fine-tuned one"
)


@dataclass(frozen=True)
class References:
    finetuned: RunRecord  # the eval run whose answers are the solution
    trained: RunRecord  # the train run behind it
    baseline: RunRecord
    baseline_metric: Interval  # the baseline's score on the hidden test (its record's may cover more examples)
    thresholds: Thresholds
    examples: list[Example]  # the hidden test: the examples the fine-tuned run answered, in its order
    rows: dict[str, dict]  # the fine-tuned run's prediction row of each
    data: TaskData
    same_base: bool  # the baseline evaluated the weights the fine-tune started from (not so if --from-runs chose)
    constant_answer: str  # the answer whose score on the hidden test is thresholds.constant (staff's only)


def same_base_model(baseline: RunRecord, trained: RunRecord) -> bool:
    """Whether an evaluation is of the base model a train run fine-tuned, as it is: the same model name and
    revision ("hub", recorded before revisions were, matches any), and no quantization study's export of it."""
    model, base = baseline.run.system.model, trained.run.model
    if baseline.run.system.kind != "base" or model is None or baseline.run.export_type:
        return False
    return model.name == base.name and (model.revision == base.revision or "hub" in (model.revision, base.revision))


def choose_references(lab: Lab, task: Task, from_runs: Sequence[str] | None, margin: float) -> References:
    """The best fine-tuned and the best other evaluation on the test split, among `from_runs` (run ids or unique
    parts of them), or else among every finished one in the lab, where the baselines are evaluations of the
    fine-tuned run's base model (another model, an API model or an export of a run says nothing about what
    fine-tuning added; a quantization study's GGUF exports are neither: a student's fine-tune is graded against
    the lab's own weights)."""
    metric = task.metric_names[0]
    runs = [_named(lab, task, ref, metric) for ref in from_runs] if from_runs else [
        r for r in list_runs(lab.runs_dir, "eval") if r.run.finished and r.run.task.name == task.name
        and r.run.task.split == "test" and metric in r.run.metrics and not r.run.export_type]
    finetuned = [r for r in runs if r.run.system.kind == "finetuned"]
    baselines = [r for r in runs if r.run.system.kind != "finetuned"]
    if not finetuned or not baselines:
        among = "the runs named by --from-runs" if from_runs else f"{lab.runs_dir}"
        what = " and ".join(w for w, have in (("a fine-tuned model", finetuned), ("a baseline model", baselines))
                            if not have)
        raise LlamalabError(f"an assignment's thresholds come from the lab's own runs, but {among} hold no finished "
                            f"evaluation of {what} on task {task.name!r}'s test split: "
                            + HOW_TO_MAKE_RUNS.format(task=task.name))
    data = load_task_data(task)
    best = _best_finetuned(task, finetuned, data, metric)
    trained = _train_run(lab, task, best)
    if not from_runs:
        baselines = _of_base_model(task, baselines, trained)
    examples, rows = _answered(task, best, data)
    baseline, base = _best_baseline(task, baselines, [ex.id for ex in examples], best, data, metric)
    answer, floor = constant_floor(task, examples, metric)
    tuned = best.run.metrics[metric]
    full_at = round(tuned.estimate - margin, 6)
    zero_at = max(base.estimate, floor)
    if full_at <= zero_at:
        raise LlamalabError(_no_range(task, best, baseline, base, answer, floor, margin, metric))
    baseline_system = baseline.run.display_label
    if baseline.run.scoring.protocol != best.run.scoring.protocol:  # the label does not say it, and it matters
        baseline_system = f"{baseline_system.removesuffix(']')}, {baseline.run.scoring.protocol}]"
    thresholds = Thresholds(
        metric=metric, zero_at=zero_at, full_at=full_at, margin=margin,
        baseline=base.estimate, baseline_run=baseline.id, baseline_system=baseline_system,
        baseline_n=base.n, finetuned=tuned.estimate, finetuned_run=best.id,
        finetuned_system=best.run.display_label, finetuned_n=tuned.n, constant=floor)
    return References(best, trained, baseline, base, thresholds, examples, rows, data,
                      same_base_model(baseline, trained), answer)


def constant_floor(task: Task, examples: list[Example], metric: str) -> tuple[str, float]:
    """The best score one answer given to every hidden example gets, as the grader scores it, and that answer:
    each label for a label task (the majority label, for accuracy), else the most frequent gold answer (by its
    number, for a number task)."""
    if task.answer.type == "label":
        candidates = list(task.answer.labels)
    else:
        key = (lambda gold: extract_number(gold) or gold) if task.answer.type == "number" else (lambda gold: gold)
        counted = Counter(key(ex.answer) for ex in examples)  # ties: the first seen, in the hidden test's order
        candidates = [counted.most_common(1)[0][0]]
    scored = []
    for answer in candidates:
        rows = canonical_order([{"id": ex.id, "gold": ex.answer, **score_answer(task.answer, ex.answer, answer)}
                                for ex in examples])
        scored.append((answer, row_statistic(metric, rows, task.answer.labels or None).estimate))
    return max(scored, key=lambda item: item[1])


def describe_constant(task: Task, answer: str) -> str:
    """The constant answer as staff read it (a long gold text shortened)."""
    shown = answer if len(answer) <= 60 else answer[:57] + "..."
    what = "the label" if task.answer.type == "label" else "the most frequent gold answer"
    return f"{what} {shown!r} given to every example"


def _no_range(task: Task, best: RunRecord, baseline: RunRecord, base: Interval, answer: str, floor: float,
              margin: float, metric: str) -> str:
    """Why the fine-tuned result leaves no range to grade on, and what to do."""
    tuned = best.run.metrics[metric].estimate
    if floor > base.estimate:
        scores = (f"the fine-tuned run {best.id} scores {metric} {tuned:.4f} on its {base.n:,} test examples, and "
                  f"{describe_constant(task, answer)} scores {floor:.4f} on them (the best baseline, {baseline.id}, "
                  f"{base.estimate:.4f}); no credit can be given at or below what a constant answer scores")
        if tuned <= floor:
            return (f"{scores}, so no range is left to grade on. Train a fine-tune that beats the constant answer, "
                    "and evaluate it on the whole test split (without --limit: a few examples may be mostly of one "
                    "answer); then name it with --from-runs")
        return (f"{scores}: with a margin of {margin:g} no range is left between them to grade on. Use --margin "
                f"below {tuned - floor:.4f}, or name a stronger fine-tuned run with --from-runs")
    scores = (f"the fine-tuned run {best.id} scores {metric} {tuned:.4f} and the best baseline "
              f"{baseline.id} {base.estimate:.4f} on the same {base.n:,} test examples")
    if tuned <= base.estimate:  # no margin helps: the fine-tune does not beat the baseline
        return (f"{scores}: the fine-tune does not beat the baseline, so no range is left to grade on. Train a "
                "stronger fine-tuned run (more steps or examples, another learning rate), evaluate it on the test "
                "split, and name it with --from-runs")
    return (f"{scores}: with a margin of {margin:g} no range is left between them to grade on. Use --margin below "
            f"{tuned - base.estimate:.4f}, or name a stronger fine-tuned run with --from-runs")


def _of_base_model(task: Task, baselines: list[RunRecord], trained: RunRecord) -> list[RunRecord]:
    """The evaluations of the base model the fine-tune started from; an error saying which to make if none."""
    same = [r for r in baselines if same_base_model(r, trained)]
    if not same:
        model = trained.run.model
        raise LlamalabError(
            f"the fine-tuned run's base model is {model.name} (revision {model.revision}, train run {trained.id}), "
            f"and no finished evaluation of it on task {task.name!r}'s test split is in the lab (evaluations of "
            f"other systems: {', '.join(r.id for r in baselines)}): the zero-credit line is that model without "
            f"fine-tuning. Evaluate it (`llamalab eval {model.name} --task {task.name}`), or name the baseline "
            "runs yourself with --from-runs")
    return same


def _best_finetuned(task: Task, candidates: list[RunRecord], data: TaskData, metric: str) -> RunRecord:
    """The fine-tuned run whose answers become the hidden test: among runs on the task's current data, the one that
    answered the most test examples (a `--limit 50` evaluation would shrink the hidden test to 50), then the best
    scoring of those, and of equals the newest (the evaluation `compare` shows for a system evaluated twice)."""
    current = [r for r in candidates if not r.run.task.data_sha256 or r.run.task.data_sha256 == data.file_hashes]
    if not current:
        raise LlamalabError(
            f"every fine-tuned evaluation of task {task.name!r} was made before its data changed "
            f"({', '.join(r.id for r in candidates)}): evaluate the fine-tuned model again "
            f"(`llamalab eval RUN_ID --task {task.name}`)")
    return max(current, key=lambda r: (r.run.metrics[metric].n, r.run.metrics[metric].estimate, started_at(r)))


def _best_baseline(task: Task, candidates: list[RunRecord], hidden: list[str], finetuned: RunRecord,
                   data: TaskData, metric: str) -> tuple[RunRecord, Interval]:
    """The baseline scoring best on exactly the hidden examples, with that score; runs that did not answer them
    all (or saw other data) are left out, and if that leaves none the error says which runs to make."""
    scored, left_out = [], []
    for record in candidates:
        if record.run.task.data_sha256 and record.run.task.data_sha256 != data.file_hashes:
            left_out.append(f"{record.id} (evaluated before task {task.name!r}'s data changed)")
            continue
        rows = read_predictions(record.folder)
        missing = [i for i in hidden if i not in rows]
        if missing:
            left_out.append(f"{record.id} (answered {len(hidden) - len(missing)} of them; e.g. not {missing[0]})")
            continue
        m = metric_intervals([metric], [rows[i] for i in hidden], task.answer.labels or None)[metric]
        scored.append((record, Interval(**m)))
    if not scored:
        raise LlamalabError(
            f"no baseline run answered all {len(hidden)} test examples that the fine-tuned run {finetuned.id} "
            f"answered, so no threshold can be set on the same examples: {'; '.join(left_out)}. Evaluate the base "
            f"model on the whole test split (`llamalab eval MODEL --task {task.name}`, without --limit), or name "
            "runs on the same examples with --from-runs")
    return max(scored, key=lambda item: item[1].estimate)


def _named(lab: Lab, task: Task, ref: str, metric: str) -> RunRecord:
    record = find_run(lab.runs_dir, ref, "eval")
    run = record.run
    if not run.finished:
        raise LlamalabError(f"run {record.id} is {run.status}, not finished")
    if run.task.name != task.name or run.task.split != "test":
        raise LlamalabError(f"run {record.id} evaluated {run.task.name}/{run.task.split}: name evaluations of "
                            f"{task.name}/test")
    if run.export_type:
        raise LlamalabError(f"run {record.id} evaluated a {run.export_type} GGUF export ({run.system.label}), "
                            "not the weights a student trains or a baseline model as it is: name the evaluation of "
                            "those weights themselves (a train run's, or the base model's)")
    if metric not in run.metrics:
        raise LlamalabError(f"run {record.id} has no {metric} (its metrics: {', '.join(run.metrics) or 'none'})")
    return record


def _train_run(lab: Lab, task: Task, record: RunRecord) -> RunRecord:
    train_id = record.run.system.train_run
    if not train_id:
        raise LlamalabError(f"eval run {record.id} names no train run, so the solution has no experiment file")
    trained = find_run(lab.runs_dir, train_id, "train")
    if trained.run.task.name != task.name:
        raise LlamalabError(f"train run {trained.id} fine-tuned on task {trained.run.task.name}, not {task.name}: "
                            "the solution's experiment file would be of another task")
    if not (trained.folder / CONFIG_FILE).is_file():
        raise LlamalabError(f"{trained.folder / CONFIG_FILE} is missing: train run {trained.id}'s settings are the "
                            "solution's experiment.yaml. Restore the file (e.g. from git), or name the evaluation of "
                            "another fine-tuned run with --from-runs")
    return trained


def _answered(task: Task, record: RunRecord, data: TaskData) -> tuple[list[Example], dict[str, dict]]:
    """The examples the run answered, from the task's data as it is now (which must be the data it saw)."""
    if record.run.task.data_sha256 and record.run.task.data_sha256 != data.file_hashes:
        raise LlamalabError(f"task {task.name!r}'s data changed since run {record.id} was evaluated: evaluate again "
                            "so that its answers belong to these examples")
    rows = read_predictions(record.folder)
    by_id = {ex.id: ex for ex in data.split("test")}
    unknown = [i for i in rows if i not in by_id]
    if unknown or len(rows) != record.run.task.n:
        raise LlamalabError(f"run {record.id}'s predictions ({len(rows)} rows) do not match its {record.run.task.n} "
                            f"test examples{f', e.g. {unknown[0]}' if unknown else ''}")
    return [by_id[i] for i in rows], rows
