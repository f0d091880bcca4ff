"""`llamalab compare`: every system evaluated on a task, with CIs and paired tests against the best."""

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
    only: set[str] | None = None,
) -> dict:
    """Rank systems by `metric` (default: the task's first); test each against the best on the examples
    both saw, Holm-corrected. `only` restricts the table to the given eval run ids."""
    entries = latest_evals(lab, task, split, only)
    if not entries:
        raise LlamalabError(f"no finished evaluations of task {task!r} on its {split} split in {lab.runs_dir}")
    return rank(load_task(lab.task_path(task), lab.root), entries, split, metric, resamples)


def rank(spec: Task, entries: list[Entry], split: str, metric: str | None = None, resamples: int = 5000) -> dict:
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
    tests = [_paired(entries[0], other, metric, labels, resamples) for other in entries[1:]]
    adjusted = stats.holm([t["p_value"] for t in tests]) if tests else []
    rows[0]["vs_best"] = None
    for row, test, p_holm in zip(rows[1:], tests, adjusted, strict=True):
        row["vs_best"] = {**test, "p_holm": p_holm}
    return {"task": task, "split": split, "metric": metric, "metrics": metrics, "best": rows[0]["system"],
            "systems": rows}


def _paired(best: Entry, other: Entry, metric: str, labels, resamples: int) -> dict:
    shared = sorted(best.predictions.keys() & other.predictions.keys())
    if not shared:
        return {"test": "none: no shared examples", "delta": None, "p_value": 1.0, "n": 0}
    result = paired_test(metric, [best.predictions[i] for i in shared], [other.predictions[i] for i in shared],
                         labels, resamples)
    return {"test": result.test, "delta": -result.delta, "p_value": result.p_value, "n": result.n}


def comparison_table(result: dict) -> Table:
    """The comparison as a rich table: metrics with CIs, paired tests, and API cost and latency."""
    tests = sorted({row["vs_best"]["test"] for row in result["systems"] if row["vs_best"]})
    table = Table(
        title=f"{result['task']} / {result['split']}  (ranked by {result['metric']})",
        caption=f"p: {', '.join(tests) or 'no other system'} on {result['metric']} against the best system, on the "
        "examples both saw; Holm-corrected for the number of comparisons",
    )
    with_usage = any(row["usage"] for row in result["systems"])
    columns = ["system", "protocol", "n", *(f"{m} [95% CI]" for m in result["metrics"]), "Δ vs best", "p",
               "p (Holm)", *(["$ / 1k ex", "latency / 1k ex"] if with_usage else [])]
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "protocol") else "right")
    for row in result["systems"]:
        cells = [row["system"], row["protocol"], str(row["n"])]
        for name in result["metrics"]:
            m = row["metrics"][name]
            cells.append(f"{m['estimate']:.3f} [{m['low']:.3f}, {m['high']:.3f}]")
        vs = row["vs_best"]
        if vs is None:
            cells += ["best", "", ""]
        else:
            delta = f"{vs['delta']:+.3f}" if vs["delta"] is not None else "-"
            cells += [delta, _p(vs["p_value"]), _p(vs["p_holm"])]
        if with_usage:
            usage = row["usage"] or {}
            cost, latency = usage.get("cost_per_1k_examples_usd"), usage.get("latency_s_per_1k_examples")
            cells += [f"{cost:.4f}" if cost is not None else "-", f"{latency:.0f} s" if latency is not None else "-"]
        table.add_row(*cells)
    return table


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"
