"""What `llamalab eval SYSTEM` can evaluate, and on which backend.

SYSTEM is an API model named in lab.yaml, a fine-tuned run from runs/, or a base model (the
embedded default, a folder, a .gguf file or a Hugging Face id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llamalab.config import LlamalabError
from llamalab.lab import ApiModelConfig, Lab
from llamalab.models import ModelRef, cache_dir, load_model, load_tokenizer, resolve_model
from llamalab.runs.record import RUN_FILE, RunRecord

BackendName = Literal["hf", "llama.cpp", "vllm"]


@dataclass(frozen=True)
class System:
    label: str  # how tables name it
    kind: str  # "base", "finetuned" or "api"
    model: ModelRef | None = None
    adapter: Path | None = None
    train_run: str | None = None
    trained_format: str | None = None  # a fine-tuned model is evaluated in the format it was trained in
    api: ApiModelConfig | None = None

    def to_dict(self) -> dict:
        info = {"label": self.label, "kind": self.kind, "train_run": self.train_run}
        if self.model is not None:
            info["model"] = {"name": self.model.name, "revision": self.model.revision}
        if self.api is not None:  # the endpoint and prices; never the key itself
            info["api"] = self.api.model_dump()
        return info

    def load(self):
        """The Hugging Face model (LoRA merged in, so inference costs the same as the base) and its tokenizer."""
        if self.model is None:
            raise LlamalabError(f"{self.label} is an API model: it has no local weights")
        tokenizer = load_tokenizer(self.model)
        model = load_model(self.model, adapter=self.adapter)
        if self.adapter is not None and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.eval()
        return model, tokenizer

    def open(self, backend: BackendName = "hf"):
        """A ready backend for this system."""
        if self.api is not None:
            from llamalab.backends.chat import ChatApiBackend

            cache = os.environ.get("LLAMALAB_API_CACHE") or cache_dir() / "api-requests.sqlite"
            return ChatApiBackend(self.label, self.api, Path(cache))
        assert self.model is not None
        provenance = {"model": self.model.name, "revision": self.model.revision,
                      "adapter": str(self.adapter.name) if self.adapter else None}
        if backend == "hf":
            from llamalab.backends.hf import HFBackend

            model, tokenizer = self.load()
            return HFBackend(model, tokenizer, provenance)
        if backend == "llama.cpp":
            from llamalab.backends.llamacpp import LlamaCppBackend

            if self.model.gguf is None or self.adapter is not None:
                raise LlamalabError("the llama.cpp backend runs GGUF files: name a .gguf base model (or the embedded "
                                    "default); export fine-tuned runs and convert them to GGUF first")
            return LlamaCppBackend(Path(self.model.gguf), load_tokenizer(self.model), provenance)
        if backend == "vllm":
            from llamalab.backends.vllm import VLLMBackend

            adapter = str(self.adapter) if self.adapter else None
            return VLLMBackend(self.model.path, load_tokenizer(self.model), provenance, adapter)
        raise LlamalabError(f"unknown backend {backend!r}: use hf, llama.cpp or vllm")


def resolve_system(lab: Lab, name: str) -> System:
    """An API model from lab.yaml, a train run id (or unique part of one), or else a base model."""
    if name in lab.config.api_models:
        return System(label=name, kind="api", api=lab.config.api_models[name], trained_format="chat")
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
