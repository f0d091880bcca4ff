"""`llamalab compare`: every system evaluated on a task, with CIs and paired tests against a reference system
(by default the best one)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from llamalab.config import LlamalabError
from llamalab.evaluate import stats
from llamalab.evaluate.evaluate import PREDICTIONS
from llamalab.evaluate.metrics import metric_intervals, paired_test
from llamalab.lab import Lab
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import RunRecord, list_runs
from llamalab.tasks.task import Task, load_task


@dataclass
class Entry:
    record: RunRecord
    predictions: dict[str, dict]  # example id -> prediction row

    @property
    def label(self) -> str:
        prompt = self.record.data.get("prompt") or {}
        shots = len(prompt.get("shots") or [])
        backend = (self.record.data.get("backend") or {}).get("backend", "hf")
        where = f", {backend}" if backend not in ("hf", "api") else ""
        return f"{self.record.data['system']['label']} [{prompt.get('format')}{f', {shots}-shot' if shots else ''}" \
               f"{where}]"


def latest_evals(lab: Lab, task: str, split: str = "test", only: set[str] | None = None) -> list[Entry]:
    """The newest finished eval of each (system, prompt format, shots, backend) on this task split."""
    latest: dict[str, Entry] = {}
    for record in list_runs(lab.runs_dir, "eval"):
        data = record.data
        if data.get("status") != "finished" or data["task"]["name"] != task or data["task"]["split"] != split:
            continue
        if only is not None and record.id not in only:
            continue
        entry = Entry(record, {row["id"]: row for row in read_jsonl(record.folder / PREDICTIONS)})
        key = f"{entry.label}|{data['scoring']['protocol']}"
        latest[key] = entry
    return list(latest.values())


def compare(
    lab: Lab, task: str, split: str = "test", metric: str | None = None, resamples: int = 5000,
    only: set[str] | None = None, reference: str | None = None,
) -> dict:
    """Rank systems by `metric` (default: the task's first); test each against the reference system (default:
    the best; else a run id or system label) on the examples both saw, Holm-corrected. `only` restricts the
    table to the given eval run ids."""
    entries = latest_evals(lab, task, split, only)
    if not entries:
        raise LlamalabError(f"no finished evaluations of task {task!r} on its {split} split in {lab.runs_dir}")
    return rank(load_task(lab.task_path(task), lab.root), entries, split, metric, resamples, reference)


def rank(
    spec: Task, entries: list[Entry], split: str, metric: str | None = None, resamples: int = 5000,
    reference: str | None = None,
) -> dict:
    """The comparison of `entries` (evaluations of one task split), best first; see `compare`."""
    task, metrics = spec.name, spec.metric_names
    metric = metric or metrics[0]
    if metric not in metrics:
        raise LlamalabError(f"task {task!r} is scored by {', '.join(metrics)}, not {metric!r}")
    labels = spec.answer.labels or None
    rows = []
    for entry in entries:
        predictions = list(entry.predictions.values())
        rows.append({
            "system": entry.label, "run": entry.record.id, "kind": entry.record.data["system"]["kind"],
            "protocol": entry.record.data["scoring"]["protocol"], "n": len(predictions),
            "metrics": metric_intervals(metrics, predictions, labels, resamples),
            "usage": entry.record.data.get("usage"),
        })
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["metrics"][metric]["estimate"])
    rows, entries = [rows[i] for i in order], [entries[i] for i in order]
    ref = _reference_index(rows, reference)
    others = [i for i in range(len(rows)) if i != ref]
    tests = [_paired(entries[ref], entries[i], metric, labels, resamples) for i in others]
    adjusted = stats.holm([t["p_value"] for t in tests]) if tests else []
    rows[ref]["vs_reference"] = None
    for i, test, p_holm in zip(others, tests, adjusted, strict=True):
        rows[i]["vs_reference"] = {**test, "p_holm": p_holm}
    return {"task": task, "split": split, "metric": metric, "metrics": metrics, "best": rows[0]["system"],
            "reference": rows[ref]["system"], "reference_is_best": ref == 0, "systems": rows}


def _reference_index(rows: list[dict], reference: str | None) -> int:
    """The best system, or the one whose run id or label `reference` names (a unique prefix is enough)."""
    if reference is None:
        return 0
    exact = [i for i, r in enumerate(rows) if reference in (r["run"], r["system"])]
    matches = exact or [i for i, r in enumerate(rows) if refers_to(reference, r["run"], r["system"])]
    if len(matches) != 1:
        known = "; ".join(f"{r['system']} ({r['run']})" for r in rows)
        problem = "matches several systems" if matches else "matches no evaluated system"
        raise LlamalabError(f"reference {reference!r} {problem}: give a run id or a system label from: {known}")
    return matches[0]


def refers_to(reference: str, run_id: str, label: str) -> bool:
    """Whether `reference` names this evaluation: its run id (or a prefix or suffix of it), or its system label."""
    return run_id.startswith(reference) or run_id.endswith(reference) or label.startswith(reference)


def _paired(reference: Entry, other: Entry, metric: str, labels, resamples: int) -> dict:
    shared = sorted(reference.predictions.keys() & other.predictions.keys())
    if not shared:
        return {"test": "none: no shared examples", "delta": None, "p_value": 1.0, "n": 0}
    result = paired_test(metric, [reference.predictions[i] for i in shared], [other.predictions[i] for i in shared],
                         labels, resamples)
    return {"test": result.test, "delta": -result.delta, "p_value": result.p_value, "n": result.n}


def reference_name(result: dict) -> str:
    """How captions name the system every other one is tested against."""
    return "the best system" if result["reference_is_best"] else f"the reference system, {result['reference']}"


def reference_cell(result: dict) -> str:
    return "best (ref.)" if result["reference_is_best"] else "reference"


def comparison_table(result: dict) -> Table:
    """The comparison as a rich table: metrics with CIs, paired tests, and API cost and latency."""
    tests = sorted({row["vs_reference"]["test"] for row in result["systems"] if row["vs_reference"]})
    table = Table(
        title=f"{result['task']} / {result['split']}  (ranked by {result['metric']})",
        caption=f"p: {', '.join(tests) or 'no other system'} on {result['metric']} against {reference_name(result)}, "
        "on the examples both saw; Holm-corrected for the number of comparisons",
    )
    with_usage = any(row["usage"] for row in result["systems"])
    columns = ["system", "protocol", "n", *(f"{m} [95% CI]" for m in result["metrics"]), "Δ vs ref.", "p",
               "p (Holm)", *(["$ / 1k ex", "latency / 1k ex"] if with_usage else [])]
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "protocol") else "right")
    for row in result["systems"]:
        cells = [row["system"], row["protocol"], str(row["n"])]
        for name in result["metrics"]:
            m = row["metrics"][name]
            cells.append(format_interval(m))
        vs = row["vs_reference"]
        if vs is None:
            cells += [reference_cell(result), "", ""]
        else:
            delta = f"{vs['delta']:+.3f}" if vs["delta"] is not None else "-"
            cells += [delta, format_p(vs["p_value"]), format_p(vs["p_holm"])]
        if with_usage:
            usage = row["usage"] or {}
            cost, latency = usage.get("cost_per_1k_examples_usd"), usage.get("latency_s_per_1k_examples")
            cells += [f"{cost:.4f}" if cost is not None else "-", f"{latency:.0f} s" if latency is not None else "-"]
        table.add_row(*cells)
    return table


def format_p(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def format_interval(m: dict) -> str:
    """A metric as `estimate [low, high]`, three decimals."""
    return f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
