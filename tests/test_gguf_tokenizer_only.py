"""Evaluating a GGUF file on llama.cpp reads only its tokenizer: its weights are converted to a (float32, ~28 GB for
a 7B model) Hugging Face folder only for a backend that loads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.export import export_gguf, find_converter
from llamalab.models import gguf_revision, load_tokenizer, resolve_model

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_gguf(tiny_model_dir, tmp_path) -> Path:
    try:
        find_converter()
    except LlamalabError as exc:  # make test installs it: missing is a failure
        pytest.fail(str(exc))
    return export_gguf(tiny_model_dir, tmp_path / "tiny-f16.gguf", "f16")


def _weight_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.suffix in (".safetensors", ".bin")]


def test_llama_cpp_evaluation_converts_no_weights_and_hf_still_does(lab, tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMALAB_CACHE", str(cache))
    settings = {"system": str(tiny_gguf), "task": "sentiment", "limit": 3}

    cpp = evaluate(lab, EvalSettings(**settings, backend="llama.cpp"))
    assert cpp.run.backend.backend == "llama.cpp"
    assert _weight_files(cache) == []
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())
    tokenizer_only = load_tokenizer(resolve_model(str(tiny_gguf)))  # the cached tokenizer folder

    hf = evaluate(lab, EvalSettings(**settings))
    assert hf.run.backend.backend == "hf"
    assert [p.name for p in _weight_files(cache)] == ["model.safetensors"]  # converted now, for transformers

    # The model is recorded as before: its name and the GGUF file's hash, whichever backend ran it.
    for record in (cpp, hf):
        assert record.run.system.model.name == str(tiny_gguf)
        assert record.run.system.model.revision == gguf_revision(tiny_gguf)
    # The tokenizer read without the weights is the one the converted folder holds.
    converted = load_tokenizer(resolve_model(str(tiny_gguf)))
    text = "<|im_start|>user\nThe capital of France is Paris, héllo!<|im_end|>"
    assert tokenizer_only(text).input_ids == converted(text).input_ids
    assert tokenizer_only.chat_template == converted.chat_template
    assert (tokenizer_only.pad_token, tokenizer_only.eos_token) == (converted.pad_token, converted.eos_token)


def test_resolving_a_gguf_converts_nothing_until_its_weights_are_asked_for(tiny_gguf, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLAMALAB_CACHE", str(cache))
    ref = resolve_model(str(tiny_gguf))
    assert ref.revision == gguf_revision(tiny_gguf) and ref.gguf == str(tiny_gguf.resolve())
    assert _weight_files(cache) == []
    assert (Path(ref.path) / "config.json").is_file()  # the folder is made when its path is first read
    assert ref.to_dict() == {"name": str(tiny_gguf), "path": ref.path, "revision": ref.revision}
