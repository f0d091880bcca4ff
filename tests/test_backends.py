"""The backend registry, refusals of settings a backend cannot honour, and the layers' import rules.

Fast: no model loads (the refusals come before any backend is opened)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import pytest

from llamalab.backends.registry import BACKEND_NAMES, BACKENDS, DEFAULT_PRECISION, backend_for, backend_spec
from llamalab.config import LlamalabError, parse_model
from llamalab.evaluation.evaluate import EvalSettings
from llamalab.evaluation.systems import System
from llamalab.models import ModelRef

SRC = Path(__file__).resolve().parents[1] / "src" / "llamalab"
GGUF_MODEL = ModelRef("tiny", "/nonexistent/tiny", "gguf-sha256:0", gguf="/nonexistent/tiny.gguf")
FOLDER_MODEL = ModelRef("tiny", "/nonexistent/tiny", "sha256:0")


def api_system() -> SimpleNamespace:
    return SimpleNamespace(label="gpt", model=None, adapter=None, api=object())


def test_one_registry_names_every_backend_once():
    names = [spec.name for spec in BACKENDS]
    assert len(names) == len(set(names))
    assert BACKEND_NAMES == ("hf", "llama.cpp", "vllm")  # the --backend choices; "api" is chosen by the system
    # the settings take the choices, and "api": what an API model's evaluation records (it runs on its API)
    choices, recorded = get_args(EvalSettings.model_fields["backend"].annotation)
    assert get_args(choices) == BACKEND_NAMES and get_args(recorded) == ("api",)
    for spec in BACKENDS:
        assert backend_spec(spec.name) is spec
        assert callable(spec.open_backend) and spec.description
        assert spec.precisions or spec.native_precision, f"{spec.name}: what does it score in?"
    assert backend_spec("hf").precisions == ("float32", "bfloat16")
    assert backend_spec("llama.cpp").gguf_only and not backend_spec("llama.cpp").accepts_adapter
    assert not backend_spec("api").loglikelihood and not backend_spec("api").selectable


def test_unknown_backend_names_the_choices():
    with pytest.raises(LlamalabError, match=r"unknown backend 'tgi': use hf, llama.cpp or vllm"):
        backend_spec("tgi")
    with pytest.raises(LlamalabError, match=r"key 'backend'.*'hf', 'llama.cpp' or 'vllm'"):
        parse_model(EvalSettings, {"system": "x", "task": "y", "backend": "tgi"}, "command line")
    with pytest.raises(LlamalabError, match="runs API models from lab.yaml"):
        backend_for(System("tiny", "base", FOLDER_MODEL), "api")


def test_api_models_use_their_api_whatever_the_backend_setting():
    for name in BACKEND_NAMES:
        assert backend_for(api_system(), name).name == "api"
    assert backend_for(System("tiny", "base", FOLDER_MODEL), "vllm").name == "vllm"


@pytest.mark.parametrize("name", ["llama.cpp", "vllm", "api"])
def test_backends_without_precision_refuse_bfloat16(name):
    spec = backend_spec(name)
    system = api_system() if name == "api" else System("tiny", "base", GGUF_MODEL)
    with pytest.raises(LlamalabError) as caught:
        spec.check(system, "bfloat16")
    message = str(caught.value)
    assert f"the {name} backend" in message and "--precision bfloat16" in message and "drop --precision" in message
    assert spec.native_precision in message
    spec.check(system, DEFAULT_PRECISION)  # the default asks for nothing: the backend's own precision
    assert spec.recorded_precision(DEFAULT_PRECISION) == spec.native_precision  # and the record says which


def test_llama_cpp_refusal_says_what_to_do():
    with pytest.raises(LlamalabError, match=r"GGUF file's own precision .* drop --precision or use --backend hf"):
        backend_spec("llama.cpp").check(System("tiny", "base", GGUF_MODEL), "bfloat16")


def test_hf_honours_both_precisions_and_records_them():
    spec = backend_spec("hf")
    for precision in ("float32", "bfloat16"):
        spec.check(System("tiny", "base", FOLDER_MODEL), precision)
        assert spec.recorded_precision(precision) == precision
    with pytest.raises(LlamalabError, match="takes --precision float32 or bfloat16, not 'float16'"):
        spec.check_precision("float16")


def test_system_open_refuses_before_loading_anything():
    # The model paths do not exist: any error but the refusal would mean a backend had started to load.
    with pytest.raises(LlamalabError, match=r"llama.cpp backend .* cannot apply --precision bfloat16"):
        System("tiny", "base", GGUF_MODEL).open("llama.cpp", "bfloat16")
    with pytest.raises(LlamalabError, match=r"vllm backend .* cannot apply --precision bfloat16"):
        System("tiny", "base", FOLDER_MODEL).open("vllm", "bfloat16")
    with pytest.raises(LlamalabError, match=r"api backend .* cannot apply --precision bfloat16: drop --precision$"):
        System.open(api_system(), "hf", "bfloat16")  # type: ignore[arg-type] - an API system without a lab.yaml
    with pytest.raises(LlamalabError, match="runs GGUF files: name a .gguf base model"):
        System("tiny", "base", FOLDER_MODEL).open("llama.cpp")
    with pytest.raises(LlamalabError, match="runs GGUF files"):
        System("tiny@abcd", "finetuned", GGUF_MODEL, adapter=Path("/nonexistent/adapter")).open("llama.cpp")


def test_backend_objects_refuse_precision_they_cannot_apply():
    from llamalab.backends.llamacpp import LlamaCppBackend
    from llamalab.backends.vllm import VLLMBackend

    for cls in (LlamaCppBackend, VLLMBackend):
        backend = object.__new__(cls)  # no model: the refusal comes first
        with pytest.raises(LlamalabError, match=rf"the {cls.name} backend .* --precision bfloat16"):
            backend.score_choices([], 1, lambda *_: None, "bfloat16")


def test_importing_the_registry_imports_no_inference_library():
    code = ("import sys, llamalab.backends.registry, llamalab.backends.base, llamalab.evaluation.systems; "
            "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp', 'vllm') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_publishing_and_comparing_never_import_torch():
    modules = ["llamalab.publish", *(f"llamalab.publish.{p.stem}" for p in sorted((SRC / "publish").glob("*.py"))
                                     if p.stem != "__init__"), "llamalab.evaluation.compare"]
    code = (f"import sys, {', '.join(modules)}; "
            "print(sorted(m for m in ('torch', 'transformers', 'llamalab.evaluation.evaluate') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_backends_never_import_evaluate():
    files = sorted((SRC / "backends").glob("*.py"))
    assert files
    offenders = {f.name: sorted(m for m in _imports(f) if (m + ".").startswith("llamalab.evaluation.")) for f in files}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_generation_refuses_a_precision_it_would_not_apply(lab):
    from llamalab.evaluation.evaluate import complete_settings
    from llamalab.tasks.task import load_task

    gsm8k = load_task(lab.task_path("gsm8k"), lab.root)
    sentiment = load_task(lab.task_path("sentiment"), lab.root)
    system = System("tiny", "base", FOLDER_MODEL)
    with pytest.raises(LlamalabError, match="applies to label scoring .* drop --precision"):
        complete_settings(EvalSettings(system="tiny", task="gsm8k", precision="bfloat16"), gsm8k, system)
    with pytest.raises(LlamalabError, match="applies to label scoring"):
        complete_settings(EvalSettings(system="tiny", task="sentiment", precision="bfloat16", protocol="generate"),
                          sentiment, system)
    scored = complete_settings(EvalSettings(system="tiny", task="sentiment", precision="bfloat16"), sentiment, system)
    assert scored.protocol == "loglikelihood" and scored.precision == "bfloat16"
