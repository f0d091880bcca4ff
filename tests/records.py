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
