"""Shared fixtures: a copy of the example lab, and a tiny randomly initialised Llama for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite checks what llamalab prints and what git records, so the shell it runs in must not change either:
# forced colours or a narrow terminal (rich and typer read these) would put escape codes or line breaks into
# messages; a user's git settings (commit signing, hooks) or a git repository it was started from would change
# what `llamalab init` does; a proxy would catch the requests the tests send to 127.0.0.1. Set before any import
# of rich, typer or llamalab, and inherited by every process the tests start.
for _name in ("FORCE_COLOR", "TTY_COMPATIBLE", "PY_COLORS", "GITHUB_ACTIONS", "COLUMNS", "LINES", "TERMINAL_WIDTH",
              "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
    os.environ.pop(_name, None)
os.environ.update(GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
for _name in ("NO_PROXY", "no_proxy"):
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

from llamalab.lab import Lab, init_lab  # noqa: E402 - after the environment above
from llamalab.models import EMBEDDED_NAME, load_tokenizer, resolve_model  # noqa: E402
from tests.llama_server import llama_server_fixture  # noqa: E402, F401 - the shared llama_server fixture

# Tests that use these load a model (the tiny one needs the embedded model's tokenizer, converted from its GGUF
# once per cache), start a server or drive a browser: they are slow, and `pytest -m "not slow"` leaves them out.
HEAVY_FIXTURES = {"tokenizer", "tiny_model_dir", "llama_server", "published_lab", "browser", "page"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _no_repository_above(tmp_path_factory) -> None:
    """Git looks for a repository no further up than the tests' temporary folder: a lab made there is never taken
    for part of one the machine happens to have above it."""
    os.environ["GIT_CEILING_DIRECTORIES"] = str(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def _example_lab(tmp_path_factory) -> Path:
    return init_lab(tmp_path_factory.mktemp("example") / "lab").root


@pytest.fixture
def lab(tmp_path: Path, _example_lab: Path) -> Lab:
    """A fresh copy of the shipped example lab (copied from one made by `init_lab` per session: its git commit
    is the slow part)."""
    import shutil

    from llamalab.lab import find_lab

    shutil.copytree(_example_lab, tmp_path / "lab", symlinks=True)
    return find_lab(tmp_path / "lab")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded model's real tokenizer (read from its GGUF once per cache; the weights are not converted)."""
    return load_tokenizer(resolve_model(EMBEDDED_NAME))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama with the real tokenizer: training and scoring run in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_experiment(lab: Lab, name: str, text: str) -> str:
    (lab.root / "experiments" / f"{name}.yaml").write_text(text)
    return name


@pytest.fixture(scope="session")
def published_lab(tmp_path_factory, tiny_model_dir, llama_server, monkeypatch_session) -> Lab:
    """A lab with real runs (tiny model, API model) and hostile text in every user- or model-written place."""
    from tests.llama_server import API_KEY
    from tests.published import KEY_ENV, build_published_lab

    monkeypatch_session.setenv(KEY_ENV, API_KEY)
    monkeypatch_session.setenv("LLAMALAB_API_CACHE", str(tmp_path_factory.mktemp("api-cache") / "cache.sqlite"))
    return build_published_lab(tmp_path_factory.mktemp("published") / "lab", tiny_model_dir, llama_server)


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
