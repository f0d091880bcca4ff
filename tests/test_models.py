"""Naming a model that is not there, or whose files are damaged: one error that names the file and says what to
do, never a traceback, and no hub lookup for what is plainly a local path (a hub id's error says when a local
folder of that name is missing too)."""

from __future__ import annotations

import shutil

import pytest

from llamalab.config import LlamalabError
from llamalab.models import load_model, load_tokenizer, resolve_model


def test_a_mistyped_local_path_is_not_looked_up_on_the_hub(tmp_path, monkeypatch):
    (tmp_path / "m" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    for name in ("models/x.gguf", "x.gguf", "./nope/x", "m/a/b"):
        with pytest.raises(LlamalabError, match=r"no such model file or folder \(looked for .*\): check the path"):
            resolve_model(name)
    # an org's folder here may hold others of its models: still a hub id (offline here), which the error says
    with pytest.raises(LlamalabError, match=rf"Hugging Face hub .*\(nor is there a local folder {tmp_path}/m/aa\)"):
        resolve_model("m/aa")
    lab = tmp_path / "lab"
    (lab / "models").mkdir(parents=True)
    with pytest.raises(LlamalabError, match=rf"looked for {tmp_path}/models/y and {lab}/models/y\)"):
        resolve_model("models/y", lab)  # a lab's relative path: both places named
    with pytest.raises(LlamalabError, match="not found: use 'smollm2-135m-instruct'"):
        resolve_model("llama")


def test_damaged_model_files_are_one_error_naming_them(tmp_path, tiny_model_dir):
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(LlamalabError, match=rf"cannot read GGUF file {garbage}: .*download or export it again"):
        load_tokenizer(resolve_model(str(garbage)))

    cut = tmp_path / "cut"
    shutil.copytree(tiny_model_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(LlamalabError, match=rf"cannot load model '{cut}' from {cut}: .*download or write them again"):
        load_model(resolve_model(str(cut)))

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(LlamalabError) as error:
        load_model(resolve_model(str(broken)))
    assert "Offline" not in str(error.value) and ".." not in str(error.value)  # a local folder: no hub hint


def test_running_out_of_memory_while_loading_is_not_called_a_damaged_file(tiny_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        load_model(resolve_model(str(tiny_model_dir)))
