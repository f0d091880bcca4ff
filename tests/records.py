"""Valid parts of run records for tests: build records through `RunRecord.create`, never by writing run.json."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TEMPLATE = "Review: {{ text }}\nSentiment:"


def eval_fields(label: str = "x", split: str = "test", n: int = 10, protocol: str = "loglikelihood",
                fmt: str = "plain", shots: Sequence[str] = (), kind: str = "base", model: str | None = None,
                backend: str = "hf", task: str = "sentiment", train_run: str | None = None) -> dict[str, Any]:
    """The keyword fields of an eval run for `RunRecord.create(runs_dir, "eval", name, config, **fields)`:
    system, backend, task, scoring and prompt (`model` is a model name, recorded at revision "test")."""
    system: dict[str, Any] = {"label": label, "kind": kind, "train_run": train_run}
    if model is not None:
        system["model"] = {"name": model, "revision": "test"}
    return {
        "system": system,
        "backend": {"backend": backend, "model": model},
        "task": {"name": task, "split": split, "n": n},
        "scoring": {"protocol": protocol},
        "prompt": {"format": fmt, "template": TEMPLATE, "shots": list(shots)},
    }


def train_fields(experiment: str = "x", task: str = "sentiment", model: str = "tiny",
                 fmt: str = "plain") -> dict[str, Any]:
    """The keyword fields of a train run for `RunRecord.create(runs_dir, "train", name, config, **fields)`."""
    return {
        "experiment": experiment,
        "task": {"name": task},
        "model": {"name": model, "revision": "test"},
        "prompt": {"format": fmt, "template": TEMPLATE},
    }


def sentiment_eval(lab, label: str, correct: Sequence[bool], hashes: dict[str, str] | None = None):
    """A finished sentiment evaluation of the system `label` with these per-example results (ids x:0, x:1, ...),
    on data files with these hashes (default: none recorded); each ends after the one made before it."""
    import time

    from llamalab.runs.files import append_jsonl
    from llamalab.runs.record import RunRecord, now_iso

    fields = eval_fields(label=label, n=len(correct))
    if hashes is not None:
        fields["task"]["data_sha256"] = hashes
    record = RunRecord.create(lab.runs_dir, "eval", label, {"system": label}, **fields)
    append_jsonl(record.folder / "predictions.jsonl", [
        {"id": f"x:{i}", "prompt": "p", "gold": "positive", "prediction": "positive" if ok else "negative",
         "correct": bool(ok), "scores": {}} for i, ok in enumerate(correct)])
    time.sleep(0.002)
    record.update(status="finished", ended=now_iso())
    return record
