"""What `llamalab eval SYSTEM` can evaluate, and on which backend.

SYSTEM is an API model named in lab.yaml, a fine-tuned run from runs/, or a base model (the
embedded default, a folder, a .gguf file or a Hugging Face id).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from llamalab.backends.api import ApiModel
from llamalab.backends.registry import DEFAULT_PRECISION, BackendName, backend_for
from llamalab.config import LlamalabError
from llamalab.export import GGUF_TYPES
from llamalab.lab import Lab
from llamalab.models import ModelRef, local_path, resolve_model
from llamalab.runs.record import RUN_FILE, RunRecord, matching_runs
from llamalab.runs.schema import gguf_export_type


@dataclass(frozen=True)
class System:
    label: str  # how tables name it
    kind: str  # "base", "finetuned" or "api"
    model: ModelRef | None = None
    adapter: Path | None = None
    train_run: str | None = None
    trained_format: str | None = None  # a fine-tuned model is evaluated in the format it was trained in
    api: ApiModel | None = None
    quantized: str | None = None  # a quantization study's GGUF export: its type (`model` is the file)

    def to_dict(self) -> dict:
        info = {"label": self.label, "kind": self.kind, "train_run": self.train_run}
        if self.quantized is not None:
            info["quantized"] = self.quantized
        if self.model is not None:
            info["model"] = {"name": self.model.name, "revision": self.model.revision}
        if self.api is not None:  # the endpoint and prices; never the key itself
            info["api"] = self.api.model_dump()
        return info

    def load(self):
        """The Hugging Face model (LoRA merged in, so inference costs the same as the base) and its tokenizer."""
        if self.model is None:
            raise LlamalabError(f"{self.label} is an API model: it has no local weights")
        from llamalab.backends.hf import load_hf

        return load_hf(self.model, self.adapter)

    def open(self, backend: BackendName = "hf", precision: str = DEFAULT_PRECISION):
        """A ready backend for this system (its API for an API model); refuses settings the backend cannot honour
        before any model loads."""
        return backend_for(self, backend).open(self, precision)


def base_label(lab: Lab, name: str) -> str:
    """How tables name a base model: a name or hub id as given; a local folder or GGUF file by its path in the lab,
    or outside it by its own name (tables, the site and posts are published: no machine's paths in them)."""
    path = local_path(name, lab.root)
    if not path.exists():
        return name
    resolved, root = path.resolve(), lab.root.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else resolved.name


def resolve_system(lab: Lab, name: str) -> System:
    """An API model from lab.yaml, a train run id (or unique part of one), or else a base model (a quantization
    study's GGUF export of a fine-tuned run is that run's, at the file's type: `exported_from`)."""
    if name in lab.config.api_models:
        return System(label=name, kind="api", api=lab.config.api_models[name], trained_format="chat")
    record = _train_run(lab, name)
    if record is None:
        try:
            model = resolve_model(name, lab.root)
        except LlamalabError as exc:  # a mistyped run id is not a model either: say both
            _not_a_system(lab, name, exc)
        if (export := exported_from(lab, name)) is not None:
            return replace(export, model=model)
        return System(label=base_label(lab, name), kind="base", model=model)
    run = record.run
    if not run.finished:
        from llamalab.runs.record import is_alive

        status = "still running" if is_alive(record) else (
            "stopped before it finished (its process is gone)" if run.status == "running" else run.status)
        raise LlamalabError(
            f"run {record.id} is {status}, not finished: resume it with "
            f"{resume_hint(lab, record)} before evaluating"
        )
    base = resolve_model(run.model.name, lab.root)
    if base.revision != run.model.revision and run.model.revision != "hub":  # "hub": recorded before commits were
        raise LlamalabError(
            f"run {record.id} was trained on {base.name} revision {run.model.revision}, "
            f"but the installed one is {base.revision}"
        )
    label = f"{run.experiment}@{record.id[-4:]}"  # the run id's random suffix; JSON has the full id
    trained_format = run.prompt.format
    adapter, merged = record.folder / "adapter", record.folder / "model"
    if (adapter / "adapter_config.json").is_file():
        return System(label, "finetuned", base, adapter, record.id, trained_format)
    if (merged / "config.json").is_file():
        weights = ModelRef(base.name, str(merged), base.revision)
        return System(label, "finetuned", weights, None, record.id, trained_format)
    raise LlamalabError(f"run {record.id} has no trained weights (adapter/ or model/)")


def _not_a_system(lab: Lab, name: str, exc: LlamalabError) -> NoReturn:
    evaluations = matching_runs(lab.runs_dir, name, "eval") if "/" not in name else []
    if len(evaluations) == 1:  # the id of an evaluation: say what it evaluated
        run = evaluations[0].run
        trained = f"; its train run is {run.system.train_run}" if run.system.train_run else ""
        raise LlamalabError(f"{name!r} names evaluation run {evaluations[0].id} (of {run.system.label}), "
                            f"not a train run or a model{trained}") from None
    raise LlamalabError(f"no train run or API model named {name!r} in this lab, and {exc}") from None


def exported_from(lab: Lab, name: str) -> System | None:
    """For a GGUF export with the record of what it was made from next to it (a quantization study's, in
    runs/.gguf/, or `llamalab export RUN OUT --gguf TYPE`'s, anywhere, which records its type too), the system it
    is: the fine-tuned run's (kind, run, trained format) or the base model's, at the file's type; its model is not
    resolved. None for any other model."""
    path = local_path(name, lab.root)
    made_from = path.with_name(path.name + ".source.json")
    if path.suffix != ".gguf" or not made_from.is_file():
        return None
    try:
        recorded = json.loads(made_from.read_text())
        source = recorded["system"]
    except (ValueError, OSError, KeyError, TypeError):
        return None
    if isinstance(recorded.get("type"), str):  # `llamalab export`'s: the file is named as its user chose
        quantized = recorded["type"] if recorded["type"] in GGUF_TYPES else None
    else:  # a study's, named by its type, in runs/.gguf/ (a file put there by hand is no export)
        in_study = path.resolve().is_relative_to((lab.runs_dir / ".gguf").resolve())
        quantized = gguf_export_type(path.name) if in_study else None
    if quantized is None:
        return None
    record = None
    with contextlib.suppress(LlamalabError):  # a run deleted since, or now ambiguous: the file as a base model
        record = _train_run(lab, source) if isinstance(source, str) else None
    if record is None:  # a base model's export: named by the model, as a fine-tune's is by its run
        label = f"{base_label(lab, source)} {quantized}" if isinstance(source, str) else base_label(lab, name)
        return System(label=label, kind="base", quantized=quantized)
    return System(f"{record.run.experiment}@{record.id[-4:]} {quantized}", "finetuned", train_run=record.id,
                  trained_format=record.run.prompt.format, quantized=quantized)


def resume_hint(lab: Lab, record: RunRecord) -> str:
    """How to continue this run: the `llamalab train ... --resume` of its experiment with the overrides it was
    started with (the settings where its config.yaml differs from the experiment file now), or, for a run started
    from Python under a name of its own (no experiment file of that name), the `train` call."""
    from llamalab.runs.record import overrides_of
    from llamalab.training.experiment import LATER_SETTINGS, load_experiment

    name = record.run.experiment
    if not (lab.root / "experiments" / f"{name}.yaml").is_file():
        return (f"`train(lab, experiment, name={name!r}, resume=True)` in Python, with the experiment it was "
                "started from (its settings are in the run's config.yaml)")
    try:
        _, now = load_experiment(lab.experiment_path(name))
    except LlamalabError:
        return f"`llamalab train {name} --resume`"
    overrides = overrides_of(record.config, now, dict(LATER_SETTINGS))
    return f"`llamalab train {name} --resume{' ' + overrides if overrides else ''}`"


def canonical_name(lab: Lab, name: str) -> str:
    """One spelling per system, for the settings an evaluation records and is found by: a train run by its full
    id (not a unique part of it), a model folder or file inside the lab by its path from the lab root
    (`./models/x`, `models/x/` and an absolute path are one model; one at the root as `./x`, which no run id
    is taken for); anything else as given (without a trailing slash)."""
    if name in lab.config.api_models:
        return name
    if (record := _train_run(lab, name)) is not None:
        return record.id
    return canonical_model_name(lab, name)


def canonical_model_name(lab: Lab, name: str) -> str:
    """A base model's one spelling (`canonical_name`'s for a model): a train run records its base model so, and
    an evaluation of that model records the same name."""
    path = local_path(name, lab.root)
    if not path.exists():
        return name
    resolved, root = path.resolve(), lab.root.resolve()
    if not resolved.is_relative_to(root):
        return name.rstrip("/") or name
    inside = resolved.relative_to(root).as_posix()
    return inside if "/" in inside else f"./{inside}"


def system_outline(lab: Lab, name: str) -> System:
    """What an evaluation's settings depend on (kind, trained format), loading and hashing nothing: the System
    `resolve_system` gives, without its model."""
    if name in lab.config.api_models:
        return System(label=name, kind="api", trained_format="chat")
    record = _train_run(lab, name)
    if record is None:
        return exported_from(lab, name) or System(label=base_label(lab, name), kind="base")
    return System(label=name, kind="finetuned", train_run=record.id, trained_format=record.run.prompt.format)


def _train_run(lab: Lab, name: str) -> RunRecord | None:
    """The train run `name` names (see `matching_runs`), or None when it names none (then it is a model)."""
    if "/" in name:
        return None
    if (lab.runs_dir / name / RUN_FILE).is_file():
        record = RunRecord.load(lab.runs_dir / name)
        if record.run.kind != "train":
            raise LlamalabError(f"run {record.id} is an {record.run.kind} run; name a train run or a model")
        return record
    matches = matching_runs(lab.runs_dir, name, "train")
    if len(matches) > 1:
        raise LlamalabError(f"{name!r} names several train runs: {', '.join(r.id for r in matches)}; give more of "
                            "the run id")
    return matches[0] if matches else None
