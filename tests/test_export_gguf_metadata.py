"""GGUF export is reproducible and its --install-converter fails clearly on a file that is not the sdist."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.export import CONVERTER_ENV, export_loaded, find_converter, main


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_two_exports_of_the_same_weights_are_the_same_bytes(tiny_model_dir, tokenizer, tmp_path, quant):
    """The merged model used to be saved in the temporary folder itself, `.NAME.PID.RANDOM.merged`, which the
    converter read general.finetune from: every export differed, and published that staging name."""
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    try:
        find_converter()
    except LlamalabError as exc:  # make test installs it: missing is a failure
        pytest.fail(str(exc))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    first = export_loaded(model, tokenizer, tmp_path / "a" / "first.gguf", quant, name="sentiment-lora@1a2b")
    second = export_loaded(model, tokenizer, tmp_path / "b" / "second.gguf", quant, name="sentiment-lora@1a2b")
    assert _sha256(first) == _sha256(second)

    strings = {}
    for field in GGUFReader(str(first)).fields.values():
        if field.name.startswith("general.") and field.types and field.types[0].name == "STRING":
            strings[field.name] = field.contents()
    assert strings["general.name"] == "sentiment-lora@1a2b"
    staging = ("merged", "partial", "first", str(os.getpid()))
    assert not [(key, value) for key, value in strings.items() if any(s in str(value) for s in staging)], strings
    assert sorted(p.name for p in first.parent.iterdir()) == ["first.gguf"]  # the working folder is gone


@pytest.fixture
def no_converter(tmp_path, monkeypatch) -> Path:
    """A cache of its own, with no converter installed in it, so nothing real is touched."""
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    monkeypatch.setenv("LLAMALAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _install_error(sdist: Path) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--install-converter", "--sdist", str(sdist)])
    assert isinstance(exit_.value.code, str), exit_.value.code  # a message, not a traceback
    return exit_.value.code


def test_install_converter_names_a_missing_sdist(tmp_path, no_converter):
    message = _install_error(tmp_path / "nowhere.tar.gz")
    assert message.startswith(f"error: --sdist {tmp_path / 'nowhere.tar.gz'}: no such file")
    assert "llama_cpp_python-" in message and ".tar.gz" in message
    assert not list(no_converter.rglob("convert_hf_to_gguf.py"))


@pytest.mark.parametrize("content", [b"not an archive\n", b"\x1f\x8b\x08\x00truncated gzip"])
def test_install_converter_names_an_sdist_it_cannot_read(tmp_path, no_converter, content):
    notes = tmp_path / "notes.tar.gz"
    notes.write_bytes(content)
    message = _install_error(notes)
    assert message.startswith(f"error: {notes}: not a readable .tar.gz archive")
    assert "llama_cpp_python-" in message
    assert not list(no_converter.rglob("convert_hf_to_gguf.py"))
    assert not [p for p in no_converter.rglob("*") if p.name.endswith(".partial")]  # no staging folder left
