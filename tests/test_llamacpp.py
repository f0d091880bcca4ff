"""The llama.cpp backend runs the embedded GGUF itself; its label scores track the dequantized HF model's."""

from __future__ import annotations

import pytest

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.models import EMBEDDED_NAME
from llamalab.runs.files import read_jsonl

pytestmark = pytest.mark.slow


def test_llama_cpp_backend_agrees_with_transformers(lab):
    settings = {"system": EMBEDDED_NAME, "task": "sentiment", "limit": 24}
    cpp = evaluate(lab, EvalSettings(**settings, backend="llama.cpp"))
    hf = evaluate(lab, EvalSettings(**settings))
    assert cpp.run.backend.backend == "llama.cpp"
    assert cpp.run.backend.model_extra["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    cpp_rows = {r["id"]: r for r in read_jsonl(cpp.folder / "predictions.jsonl")}
    hf_rows = read_jsonl(hf.folder / "predictions.jsonl")
    assert len(cpp_rows) == 24
    # Same weights (the GGUF, dequantized for transformers); llama.cpp multiplies in quantized form.
    gaps = [abs(cpp_rows[r["id"]]["scores"][label] - r["scores"][label]) for r in hf_rows for label in r["scores"]]
    assert max(gaps) < 0.5
    agreement = sum(cpp_rows[r["id"]]["prediction"] == r["prediction"] for r in hf_rows) / len(hf_rows)
    assert agreement >= 0.9


def test_llama_cpp_generation(lab):
    record = evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task="sentiment", limit=4, backend="llama.cpp",
                                        protocol="generate", max_new_tokens=4))
    rows = read_jsonl(record.folder / "predictions.jsonl")
    assert len(rows) == 4 and all(isinstance(r["generation"], str) for r in rows)


def test_llama_cpp_generation_refuses_a_budget_its_context_would_cut(lab):
    from llamalab.config import LlamalabError

    with pytest.raises(LlamalabError, match=r"context holds 2048 tokens: the longest prompt \(\d+ tokens\) leaves "
                                            r"\d+ of the max_new_tokens 2040 asked for; lower max_new_tokens"):
        evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task="sentiment", limit=4, backend="llama.cpp",
                                   protocol="generate", max_new_tokens=2040))


def test_llama_cpp_label_scoring_past_its_context_is_refused_clearly(lab):
    """A prompt and label longer than llama.cpp's context failed deep inside it ("failed to find a memory slot")."""
    from llamalab.config import LlamalabError

    task = lab.task_path("sentiment")
    task.write_text(task.read_text().replace("{{ text }}", "{% for _ in range(150) %}{{ text }} {% endfor %}"))
    with pytest.raises(LlamalabError, match=r"context holds 2048 tokens: the longest prompt with its longest label "
                                            r"needs \d+; shorten the prompts"):
        evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task="sentiment", limit=2, backend="llama.cpp"))
