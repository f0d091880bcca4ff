"""What `llamalab eval SYSTEM` can evaluate: a base model, or a fine-tuned run from runs/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llamalab.config import LlamalabError
from llamalab.lab import Lab
from llamalab.models import ModelRef, load_model, load_tokenizer, resolve_model
from llamalab.runs.record import RUN_FILE, RunRecord


@dataclass(frozen=True)
class System:
    label: str  # how tables name it
    kind: str  # "base" or "finetuned"
    model: ModelRef
    adapter: Path | None = None
    train_run: str | None = None
    trained_format: str | None = None  # a fine-tuned model is evaluated in the format it was trained in

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "kind": self.kind,
            "model": {"name": self.model.name, "revision": self.model.revision},
            "train_run": self.train_run,
            "adapter": str(self.adapter) if self.adapter else None,
        }

    def load(self):
        """The model (LoRA merged in, so inference costs the same as the base) and its tokenizer."""
        tokenizer = load_tokenizer(self.model)
        model = load_model(self.model, adapter=self.adapter)
        if self.adapter is not None and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.eval()
        return model, tokenizer


def resolve_system(lab: Lab, name: str) -> System:
    """A run id (or unique prefix/suffix) in runs/ means a fine-tuned model; anything else a base model."""
    record = _train_run(lab, name)
    if record is None:
        return System(label=name, kind="base", model=resolve_model(name))
    if record.data.get("status") != "finished":
        raise LlamalabError(
            f"run {record.id} is {record.data.get('status')}, not finished: resume it with "
            f"`llamalab train {record.data['experiment']} --resume` before evaluating"
        )
    base = resolve_model(record.data["model"]["name"])
    if base.revision not in (record.data["model"]["revision"], "hub"):
        raise LlamalabError(
            f"run {record.id} was trained on {base.name} revision {record.data['model']['revision']}, "
            f"but the installed one is {base.revision}"
        )
    label = f"{record.data['experiment']}@{record.id[-4:]}"  # the run id's random suffix; JSON has the full id
    trained_format = record.data["prompt"]["format"]
    adapter, merged = record.folder / "adapter", record.folder / "model"
    if (adapter / "adapter_config.json").is_file():
        return System(label, "finetuned", base, adapter, record.id, trained_format)
    if (merged / "config.json").is_file():
        weights = ModelRef(base.name, str(merged), base.revision)
        return System(label, "finetuned", weights, None, record.id, trained_format)
    raise LlamalabError(f"run {record.id} has no trained weights (adapter/ or model/)")


def _train_run(lab: Lab, name: str) -> RunRecord | None:
    if not lab.runs_dir.is_dir() or "/" in name:
        return None
    folder = lab.runs_dir / name
    if (folder / RUN_FILE).is_file():
        record = RunRecord.load(folder)
    else:
        matches = [p for p in lab.runs_dir.glob(f"*{name}*") if (p / RUN_FILE).is_file() and "-train-" in p.name]
        if len(matches) != 1:
            return None
        record = RunRecord.load(matches[0])
    if record.data.get("kind") != "train":
        raise LlamalabError(f"run {record.id} is an {record.data.get('kind')} run; name a train run or a model")
    return record
