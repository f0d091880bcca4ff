"""Every inference backend, once: its name, what it can run, which settings it honours, and how to open it.

`llamalab eval --backend`, `EvalSettings.backend` and `System.open` all read this one tuple. Importing it
imports no inference library: each `open` function imports its backend (torch, llama_cpp, vllm) when called.

A backend that cannot honour a setting refuses it before any model loads, so no record ever states a setting
that was not applied: `--precision bfloat16` is the hf backend's (bfloat16 autocast with float32 re-checks);
llama.cpp scores in the GGUF file's own precision, vLLM in its automatic dtype, and chat APIs on the provider's
servers. Left at its default ("float32"), precision means "the backend's own", which the record then names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from llamalab.config import LlamalabError

if TYPE_CHECKING:
    from llamalab.backends.api import ApiModel
    from llamalab.backends.base import Backend
    from llamalab.models import ModelRef

DEFAULT_PRECISION = "float32"  # EvalSettings.precision's default: no reduced-precision shortcut asked for


class Openable(Protocol):
    """What a backend is opened on (evaluate.systems.System provides it)."""

    label: str
    model: ModelRef | None
    adapter: Path | None
    api: ApiModel | None


@dataclass(frozen=True)
class BackendSpec:
    name: str
    description: str  # for --help
    open_backend: Callable[[Openable], Backend]  # imports the backend's libraries only when called
    precisions: tuple[str, ...] = ()  # --precision values it computes in; () = only the default, meaning:
    native_precision: str | None = None  # what it scores in instead (recorded; reads "<this> precision")
    precision_advice: str = "drop --precision or use --backend hf"
    gguf_only: bool = False  # runs a GGUF file (a .gguf base model or the embedded default), nothing else
    accepts_adapter: bool = True  # can evaluate a fine-tuned run's LoRA adapter
    loglikelihood: bool = True  # can score labels (--protocol loglikelihood)
    selectable: bool = True  # a --backend choice; False: chosen by the system itself (API models)

    def check(self, system: Openable, precision: str = DEFAULT_PRECISION) -> None:
        """Refuse, naming the backend, the setting and what to do, what this backend cannot honour."""
        self.check_precision(precision)
        if self.gguf_only and (system.model is None or system.model.gguf is None or system.adapter is not None):
            raise LlamalabError(f"the {self.name} backend runs GGUF files: name a .gguf base model (or the embedded "
                                "default); export fine-tuned runs and convert them to GGUF first")
        if system.adapter is not None and not self.accepts_adapter:
            raise LlamalabError(f"the {self.name} backend cannot apply the LoRA adapter of {system.label}: "
                                "use --backend hf")
        if self.selectable and system.model is None:
            raise LlamalabError(f"{system.label} has no local weights: the {self.name} backend runs local models")

    def check_precision(self, precision: str) -> None:
        if precision in self.precisions or (not self.precisions and precision == DEFAULT_PRECISION):
            return
        if not self.precisions:
            raise LlamalabError(f"the {self.name} backend ({self.description}) runs in {self.native_precision} "
                                f"precision and cannot apply --precision {precision}: {self.precision_advice}")
        raise LlamalabError(f"the {self.name} backend takes --precision {' or '.join(self.precisions)}, "
                            f"not {precision!r}")

    def recorded_precision(self, precision: str) -> str:
        """The precision label scores are computed in, as the record states it (after `check_precision`)."""
        return precision if self.precisions else str(self.native_precision)

    def open(self, system: Openable, precision: str = DEFAULT_PRECISION) -> Backend:
        """A ready backend for `system`, after refusing any setting it cannot honour."""
        self.check(system, precision)
        return self.open_backend(system)


def _local_provenance(system: Openable) -> dict[str, Any]:
    assert system.model is not None
    return {"model": system.model.name, "revision": system.model.revision,
            "adapter": str(system.adapter.name) if system.adapter else None}


def _open_hf(system: Openable) -> Backend:
    from llamalab.backends.hf import HFBackend, load_hf

    assert system.model is not None
    model, tokenizer = load_hf(system.model, system.adapter)
    return HFBackend(model, tokenizer, _local_provenance(system))


def _open_llama_cpp(system: Openable) -> Backend:
    """llama.cpp runs the GGUF file itself: only the tokenizer is read from it (never `system.model.path`, which
    would dequantize the whole file into a float32 Hugging Face folder)."""
    from llamalab.backends.llamacpp import LlamaCppBackend
    from llamalab.models import load_tokenizer

    assert system.model is not None and system.model.gguf is not None
    return LlamaCppBackend(Path(system.model.gguf), load_tokenizer(system.model), _local_provenance(system))


def _open_vllm(system: Openable) -> Backend:
    from llamalab.backends.vllm import VLLMBackend
    from llamalab.models import load_tokenizer

    assert system.model is not None
    adapter = str(system.adapter) if system.adapter else None
    return VLLMBackend(system.model.path, load_tokenizer(system.model), _local_provenance(system), adapter)


def _open_chat_api(system: Openable) -> Backend:
    from llamalab.backends.chat import ChatApiBackend
    from llamalab.models import cache_dir

    assert system.api is not None
    cache = os.environ.get("LLAMALAB_API_CACHE") or cache_dir() / "api-requests.sqlite"
    return ChatApiBackend(system.label, system.api, Path(cache))


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("hf", "transformers, CPU or GPU", _open_hf, precisions=("float32", "bfloat16")),
    BackendSpec("llama.cpp", "a GGUF file on the CPU", _open_llama_cpp, native_precision="the GGUF file's own",
                gguf_only=True, accepts_adapter=False),
    BackendSpec("vllm", "GPU", _open_vllm, native_precision="vLLM's automatic (dtype auto)"),
    BackendSpec("api", "a chat API model from lab.yaml", _open_chat_api,
                native_precision="the provider's own", precision_advice="drop --precision",
                accepts_adapter=False, loglikelihood=False, selectable=False),
)
BACKEND_NAMES: tuple[str, ...] = tuple(spec.name for spec in BACKENDS if spec.selectable)  # --backend choices
BackendName = Literal[BACKEND_NAMES]  # type: ignore[valid-type] - Literal["hf", "llama.cpp", "vllm"]


def backend_spec(name: str) -> BackendSpec:
    for spec in BACKENDS:
        if spec.name == name:
            return spec
    raise LlamalabError(f"unknown backend {name!r}: use {_choices()}")


def backend_for(system: Openable, backend: str = "hf") -> BackendSpec:
    """The backend that runs `system`: its API for an API model, else the named local backend."""
    if system.api is not None:
        return backend_spec("api")
    spec = backend_spec(backend)
    if not spec.selectable:
        raise LlamalabError(f"the {spec.name} backend runs API models from lab.yaml: use {_choices()}")
    return spec


def backend_help() -> str:
    return ", ".join(f"{spec.name} ({spec.description})" for spec in BACKENDS if spec.selectable)


def _choices() -> str:
    return ", ".join(BACKEND_NAMES[:-1]) + f" or {BACKEND_NAMES[-1]}"
