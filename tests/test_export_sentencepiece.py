"""A Llama-2-style model (a sentencepiece tokenizer.model) exported to GGUF tokenizes as it was trained: transformers
saves only tokenizer.json, from which llama.cpp's converter took other merge scores, so the file split words
otherwise ("▁lively" as "▁li ve", not "▁l ive ly")."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.export import export_loaded, find_converter
from llamalab.lab import example_lab_source

pytestmark = pytest.mark.slow

TEXTS = ["a lively script , a rare gift !", "Review: it's 100% fun, and the cast is sharp .",
         "an unflinching impartiality"]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory) -> tuple:
    """A tiny random Llama with a sentencepiece BPE vocabulary trained here, loaded as transformers loads one."""
    import sentencepiece
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = tmp_path_factory.mktemp("spm")
    reviews = (example_lab_source() / "data" / "rt_polarity" / "rt-polarity.pos").read_text(encoding="utf-8")
    trained = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(reviews.splitlines()[:2000]), model_writer=trained, vocab_size=600, model_type="bpe",
        byte_fallback=True, character_coverage=0.999, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    (folder / "tokenizer.model").write_bytes(trained.getvalue())
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)).eval()
    return model, tokenizer, sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_a_sentencepiece_models_gguf_tokenizes_as_the_model_was_trained(sentencepiece_model, tmp_path: Path):
    from llama_cpp import Llama

    try:
        find_converter()
    except LlamalabError as exc:  # make test installs it: missing is a failure
        pytest.fail(str(exc))
    model, tokenizer, processor = sentencepiece_model
    path = export_loaded(model, tokenizer, tmp_path / "spm-f16.gguf", "f16", name="spm-tiny")
    llm = Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        for text in TEXTS:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            assert ids == processor.encode(text)  # transformers reads the sentencepiece model as it is
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
    finally:
        llm.close()
