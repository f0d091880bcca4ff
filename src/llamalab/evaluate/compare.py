"""`llamalab compare`: every system evaluated on a task, with CIs and paired tests against the best."""

from __future__ import annotations

from dataclasses import dataclass

from llamalab.config import LlamalabError
from llamalab.evaluate import stats
from llamalab.evaluate.evaluate import PREDICTIONS
from llamalab.lab import Lab
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import RunRecord, list_runs


@dataclass
class Entry:
    record: RunRecord
    predictions: dict[str, dict]  # example id -> prediction row

    @property
    def label(self) -> str:
        prompt = self.record.data.get("prompt") or {}
        shots = len(prompt.get("shots") or [])
        return f"{self.record.data['system']['label']} [{prompt.get('format')}{f', {shots}-shot' if shots else ''}]"


def latest_evals(lab: Lab, task: str, split: str = "test", only: set[str] | None = None) -> list[Entry]:
    """The newest finished eval of each (system, prompt format, shots) on this task split."""
    latest: dict[str, Entry] = {}
    for record in list_runs(lab.runs_dir, "eval"):
        data = record.data
        if data.get("status") != "finished" or data["task"]["name"] != task or data["task"]["split"] != split:
            continue
        if only is not None and record.id not in only:
            continue
        entry = Entry(record, {row["id"]: row for row in read_jsonl(record.folder / PREDICTIONS)})
        latest[entry.label] = entry
    return list(latest.values())


def compare(
    lab: Lab, task: str, split: str = "test", metric: str = "accuracy", resamples: int = 5000,
    only: set[str] | None = None,
) -> dict:
    """Rank systems by `metric`; test each against the best on the examples both saw (Holm-corrected).

    `only` restricts the table to the given eval run ids.
    """
    entries = latest_evals(lab, task, split, only)
    if not entries:
        raise LlamalabError(f"no finished evaluations of task {task!r} on its {split} split in {lab.runs_dir}")
    labels = _label_set(entries)
    rows = []
    for entry in entries:
        gold = [p["gold"] for p in entry.predictions.values()]
        pred = [p["prediction"] for p in entry.predictions.values()]
        metrics = {
            name: stats.bootstrap_ci(gold, pred, name, labels=labels, n_resamples=resamples).to_dict()
            for name in stats.METRICS
        }
        rows.append({"system": entry.label, "run": entry.record.id, "kind": entry.record.data["system"]["kind"],
                     "protocol": entry.record.data["scoring"]["protocol"], "n": len(gold), "metrics": metrics})
    order = sorted(range(len(rows)), key=lambda i: -rows[i]["metrics"][metric]["estimate"])
    rows = [rows[i] for i in order]
    entries = [entries[i] for i in order]
    best = entries[0]
    tests = [_paired(best, other, labels, metric, resamples) for other in entries[1:]]
    adjusted = stats.holm([t["p_value"] for t in tests]) if tests else []
    rows[0]["vs_best"] = None
    for row, test, p_holm in zip(rows[1:], tests, adjusted, strict=True):
        row["vs_best"] = {**test, "p_holm": p_holm}
    return {"task": task, "split": split, "metric": metric, "best": rows[0]["system"], "systems": rows}


def _paired(best: Entry, other: Entry, labels: list[str], metric: str, resamples: int) -> dict:
    shared = sorted(best.predictions.keys() & other.predictions.keys())
    if not shared:
        return {"test": "none: no shared examples", "delta": None, "p_value": 1.0, "n": 0}
    gold = [best.predictions[i]["gold"] for i in shared]
    a = [best.predictions[i]["prediction"] for i in shared]
    b = [other.predictions[i]["prediction"] for i in shared]
    if metric == "accuracy":
        result = stats.mcnemar(gold, a, b)
    else:
        result = stats.paired_bootstrap(gold, a, b, metric, labels=labels, n_resamples=resamples)
    return {"test": result.test, "delta": -result.delta, "p_value": result.p_value, "n": result.n}


def _label_set(entries: list[Entry]) -> list[str]:
    first = next(iter(entries[0].predictions.values()), {})
    return sorted(first.get("scores", {}))
