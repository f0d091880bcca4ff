"""GGUF export: llama.cpp's converter and quantizer write files that llama.cpp loads and that compute what the
Hugging Face model computes, to the precision of the type."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from llamalab.config import LlamalabError
from llamalab.export import CONVERTER_ENV, GGUF_TYPES, export_gguf, find_converter, gguf_type, install_converter

PROMPT = "The capital of France is Paris, a city of"


# --- fast: checks made before anything heavy runs ---------------------------------------------------------------

def test_unknown_type_names_the_valid_ones(tmp_path):
    with pytest.raises(LlamalabError) as error:
        export_gguf(tmp_path, tmp_path / "model.gguf", "q3_xyz")
    message = str(error.value)
    assert "unknown GGUF type 'q3_xyz'" in message
    assert all(name in message for name in ("f16", "q8_0", "q4_k_m", "q4_0", "q4_1"))
    assert gguf_type(" Q4_K_M ") == "q4_k_m"
    assert set(GGUF_TYPES) >= {"f16", "q8_0", "q4_k_m", "q4_0", "q4_1"}
    assert not any(tmp_path.iterdir())


def test_bad_targets_and_folders(tmp_path):
    with pytest.raises(LlamalabError, match="must end in .gguf"):
        export_gguf(tmp_path, tmp_path / "model.bin", "f16")
    with pytest.raises(LlamalabError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "model.gguf", "f16")


def test_missing_converter_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    monkeypatch.setenv("LLAMALAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(LlamalabError, match=r"-m llamalab\.export --install-converter"):
        find_converter()
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(LlamalabError, match="has no convert_hf_to_gguf.py"):
        find_converter()


def test_install_converter_keeps_only_the_converter(tmp_path, monkeypatch):
    """From a (fake) llama-cpp-python sdist: the script, its packages and the licence; nothing else, nothing outside."""
    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    monkeypatch.setenv("LLAMALAB_CACHE", str(tmp_path / "cache"))
    sdist = tmp_path / "llama_cpp_python-0.0.0.tar.gz"
    files = {
        "vendor/llama.cpp/convert_hf_to_gguf.py": "print('converter')\n",
        "vendor/llama.cpp/LICENSE": "MIT\n",
        "vendor/llama.cpp/conversion/__init__.py": "",
        "vendor/llama.cpp/gguf-py/gguf/__init__.py": "",
        "vendor/llama.cpp/src/llama.cpp": "// not kept\n",
        "vendor/llama.cpp/conversion/../../../escape.py": "# not kept\n",
        "llama_cpp/llama.py": "# not kept\n",
    }
    with tarfile.open(sdist, "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(f"llama_cpp_python-0.0.0/{name}")
            info.size = len(text.encode())
            archive.addfile(info, io.BytesIO(text.encode()))
    script = install_converter(sdist)
    assert script == find_converter()
    kept = sorted(str(p.relative_to(script.parent)) for p in script.parent.rglob("*") if p.is_file())
    assert kept == ["LICENSE", "SOURCE.txt", "conversion/__init__.py", "convert_hf_to_gguf.py",
                    "gguf-py/gguf/__init__.py"]
    assert not list(tmp_path.rglob("escape.py"))


def test_cli_checks_the_type_before_loading_a_model(lab, tmp_path):
    target = tmp_path / "model.gguf"
    result = subprocess.run([sys.executable, "-m", "llamalab.cli", "export", "no-such-run", str(target),
                             "--gguf", "q3_xyz", "--lab", str(lab.root)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown GGUF type 'q3_xyz'" in result.stderr and "q4_k_m" in result.stderr
    assert not target.exists()


def test_importing_the_module_stays_light():
    code = ("import sys, llamalab.export; "
            "print(sorted(m for m in ('torch', 'transformers', 'gguf', 'llama_cpp') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- slow: real conversions -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def converter() -> Path:
    try:
        return find_converter()
    except LlamalabError as exc:  # make test installs it (scripts/install-llama-server.sh): missing is a failure
        pytest.fail(str(exc))


def hf_logprobs(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=model.device)).logits[0]
    return torch.log_softmax(logits.double(), -1).cpu().numpy()


def gguf_logprobs(path: Path, ids: list[int], text: str | None = None) -> tuple[np.ndarray, int, list[int] | None]:
    """llama.cpp's log-probs for the same token ids, its vocabulary size, and its own tokenization of `text`."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, logits_all=True, verbose=False, seed=0)
    try:
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True) if text is not None else None
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), llm.n_vocab(), tokens
    finally:
        llm.close()


@pytest.fixture(scope="module")
def tiny_exports(converter, tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("gguf")
    return {quant: export_gguf(tiny_model_dir, folder / f"tiny-{quant}.gguf", quant)
            for quant in ("f16", "q8_0", "q4_0", "q4_k_m")}


@pytest.mark.slow
def test_tiny_model_exports_load_and_match_transformers(tiny_exports, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from llamalab.export import gguf_tensor_types

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    reference = hf_logprobs(model, ids)
    errors = {}
    for quant, path in tiny_exports.items():
        logprobs, n_vocab, tokens = gguf_logprobs(path, ids, PROMPT)
        assert n_vocab == len(tokenizer) == model.config.vocab_size, quant
        assert tokens == ids, quant  # the GGUF's own tokenizer (BPE + SmolLM2's pre-tokenizer) agrees
        errors[quant] = float(np.abs(logprobs - reference).max())
    # f16 keeps an 11-bit significand and llama.cpp rounds activations to f16 for f16 matmuls: log-probs move by
    # ~1e-4 on this model (measured 3e-4), far less than q8_0 moves them (measured 7e-3).
    assert errors["f16"] < 2e-3, errors
    assert errors["q8_0"] > 3 * errors["f16"], errors  # the comparison can tell the precisions apart
    assert errors["q4_0"] < 0.5 and errors["q4_k_m"] < 0.5, errors

    sizes = {quant: path.stat().st_size for quant, path in tiny_exports.items()}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_0"], sizes
    types = {quant: gguf_tensor_types(path) for quant, path in tiny_exports.items()}
    assert set(types["f16"]) == {"F16", "F32"}  # 1-D tensors (norms) stay f32 in every type
    assert set(types["q8_0"]) == {"Q8_0", "F32"}
    # q4_0: every layer matrix is 4-bit; the tied embedding (also the output layer) gets llama.cpp's output type,
    # q6_k, which falls back to q8_0 on rows of 32 -- and dominates this tiny model's size, so q4_0 < q8_0 only just.
    assert types["q4_0"] == {"Q4_0": 14, "F32": 5, "Q8_0": 1}
    # k-quants need rows of 256: on the tiny model's 32/64-wide rows llama.cpp falls back for every tensor.
    assert "Q4_K" not in types["q4_k_m"] and "Q5_0" in types["q4_k_m"]


@pytest.mark.slow
def test_exporting_a_run_through_the_cli(lab, tiny_model_dir, tmp_path, converter):
    from typer.testing import CliRunner

    from llamalab.cli import app
    from llamalab.evaluation.systems import resolve_system
    from llamalab.models import load_model, resolve_model
    from llamalab.training.trainer import train
    from tests.test_train import tiny_experiment

    record = train(lab, tiny_experiment(lab, tiny_model_dir, max_steps=4, learning_rate=5e-2))
    target = tmp_path / "out" / "run.gguf"
    result = CliRunner().invoke(app, ["export", record.id, str(target), "--gguf", "f16", "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    assert "f16 GGUF written to" in result.output and "MiB" in result.output
    # no merged folder or partial file left; what the file is made from next to it
    assert sorted(p.name for p in target.parent.iterdir()) == ["run.gguf", "run.gguf.source.json"]
    # evaluated, the file is the run's weights at f16 (it was recorded, and drawn in figures, as a base model)
    from llamalab.evaluation.evaluate import evaluate

    exported = evaluate(lab, str(target), task="sentiment", backend="llama.cpp", limit=4)
    assert exported.run.system.kind == "finetuned" and exported.run.system.train_run == record.id
    assert exported.run.system.quantized == "f16" and exported.run.system.label.endswith(" f16")

    merged, tokenizer = resolve_system(lab, record.id).load()
    ids = tokenizer(PROMPT, add_special_tokens=False).input_ids
    logprobs, _, _ = gguf_logprobs(target, ids)
    merged_error = np.abs(logprobs - hf_logprobs(merged, ids)).max()
    base_error = np.abs(logprobs - hf_logprobs(load_model(resolve_model(str(tiny_model_dir))), ids)).max()
    assert merged_error < 2e-3 and base_error > 5 * merged_error, (merged_error, base_error)  # the LoRA is in it

    again = CliRunner().invoke(app, ["export", record.id, str(target), "--gguf", "f16", "--lab", str(lab.root)])
    assert again.exit_code != 0 and "exists" in str(again.exception)


@pytest.mark.slow
def test_embedded_model_round_trips_to_its_shipped_q4_1_file(converter, tmp_path):
    """The embedded model's folder is its Q4_1 GGUF dequantized: exporting it at q4_1 gives back the same tensors,
    bit for bit -- the converter (names, layouts, Q/K permutation) and the quantizer are both exact."""
    from gguf import GGUFReader

    from llamalab.models import EMBEDDED_NAME, resolve_model

    ref = resolve_model(EMBEDDED_NAME)
    exported = export_gguf(Path(ref.path), tmp_path / "smollm2-q4_1.gguf", "q4_1")
    shipped = {t.name: t for t in GGUFReader(ref.gguf).tensors}
    ours = {t.name: t for t in GGUFReader(str(exported)).tensors}
    assert shipped.keys() == ours.keys()
    for name, tensor in shipped.items():
        assert tensor.tensor_type == ours[name].tensor_type, name
        assert np.array_equal(np.asarray(tensor.data), np.asarray(ours[name].data)), name


def test_what_a_killed_export_left_is_cleared_by_the_next(tmp_path):
    """A kill -9 mid-export leaves its working folders (a merged model can be tens of GB) next to the file; the
    next export of that file removes those of processes that are gone, and never a live one's."""
    import os
    import subprocess
    import sys

    from llamalab.export import _clear_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)
    for name in (f".m.gguf.{gone}.abc.merged", f".m.gguf.{gone}.def.partial", f".m.gguf.{os.getpid()}.x.partial",
                 f".other.gguf.{gone}.y.merged"):
        (tmp_path / name).mkdir()
    (tmp_path / ".m.gguf.notes").write_text("not ours")
    _clear_stale(tmp_path / "m.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".m.gguf.{os.getpid()}.x.partial", f".other.gguf.{gone}.y.merged", ".m.gguf.notes"])


def test_a_quantization_study_without_the_converter_fails_before_any_model_loads(lab, tmp_path, monkeypatch):
    """It loaded (and merged) each system first, then found the converter missing."""
    from rich.console import Console

    from llamalab.studies.quantization import run_quantization
    from llamalab.studies.spec import load_study

    monkeypatch.delenv(CONVERTER_ENV, raising=False)
    monkeypatch.setenv("LLAMALAB_CACHE", str(tmp_path / "cache"))
    (lab.root / "studies").mkdir(exist_ok=True)
    (lab.root / "studies" / "q.yaml").write_text("kind: quantization\nquantize: {systems: [no-such-model-here], "
                                                 "types: [f16, q8_0]}\neval: {task: sentiment, limit: 4}\n")
    with pytest.raises(LlamalabError, match=r"--install-converter"):  # not "no train run or API model named"
        run_quantization(lab, load_study(lab, "q"), Console(stderr=True))
