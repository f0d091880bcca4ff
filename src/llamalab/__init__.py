"""llamalab: fine-tune open Llama-family models and compare them head-to-head, from one lab repository.

The Python API (the command line is a thin layer over exactly these functions)::

    from llamalab import find_lab, train, evaluate, load_system, compare, build_report, build_site

    lab = find_lab("my-lab")
    run = train(lab, "sentiment-lora", max_steps=50)           # -> RunRecord; run.run is a typed TrainRun
    result = evaluate(lab, run.id, task="sentiment", limit=200)  # -> RunRecord; result.run is a typed EvalRun
    accuracy = result.run.metrics["accuracy"]                  # an Interval: estimate, low, high, n, method
    print(f"{accuracy.estimate:.3f} [{accuracy.low:.3f}, {accuracy.high:.3f}]")
    table = compare(lab, "sentiment")                           # a typed Comparison (table.systems: SystemRows)
    print(table.best)                                           # the best system's label

Names are imported on first use; none of them imports torch until a model is loaded or training starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # the lab folder
    "Lab": "llamalab.lab",
    "init_lab": "llamalab.lab",
    "find_lab": "llamalab.lab",
    "LlamalabError": "llamalab.config",
    # what is studied
    "Task": "llamalab.tasks.task",
    "load_task": "llamalab.tasks.task",
    "Experiment": "llamalab.training.experiment",
    # doing it
    "train": "llamalab.training.trainer",
    "evaluate": "llamalab.evaluation.evaluate",
    "EvalSettings": "llamalab.evaluation.evaluate",
    "load_system": "llamalab.evaluation.evaluate",
    "LoadedSystem": "llamalab.evaluation.evaluate",
    "compare": "llamalab.evaluation.compare",
    "Comparison": "llamalab.evaluation.compare",
    "SystemRow": "llamalab.evaluation.compare",
    # writing it up
    "build_report": "llamalab.publish.report",
    "build_site": "llamalab.publish.site",
    "new_post": "llamalab.publish.posts",
    # the records
    "RunRecord": "llamalab.runs.record",
    "list_runs": "llamalab.runs.record",
    "find_run": "llamalab.runs.record",
    "EvalRun": "llamalab.runs.schema",
    "TrainRun": "llamalab.runs.schema",
    "Interval": "llamalab.runs.schema",
    "SystemKey": "llamalab.runs.schema",
    "SCHEMA_VERSION": "llamalab.runs.schema",
}

__all__ = [  # the same names as _EXPORTS, spelled out for tools that read __all__ statically
    "Lab", "init_lab", "find_lab", "LlamalabError", "Task", "load_task", "Experiment", "train", "evaluate",
    "EvalSettings", "load_system", "LoadedSystem", "compare", "Comparison", "SystemRow", "build_report",
    "build_site", "new_post", "RunRecord", "list_runs", "find_run", "EvalRun", "TrainRun", "Interval", "SystemKey",
    "SCHEMA_VERSION", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'llamalab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from llamalab.config import LlamalabError
    from llamalab.evaluation.compare import Comparison, SystemRow, compare
    from llamalab.evaluation.evaluate import EvalSettings, LoadedSystem, evaluate, load_system
    from llamalab.lab import Lab, find_lab, init_lab
    from llamalab.publish.posts import new_post
    from llamalab.publish.report import build_report
    from llamalab.publish.site import build_site
    from llamalab.runs.record import RunRecord, find_run, list_runs
    from llamalab.runs.schema import SCHEMA_VERSION, EvalRun, Interval, SystemKey, TrainRun
    from llamalab.tasks.task import Task, load_task
    from llamalab.training.experiment import Experiment
    from llamalab.training.trainer import train
