from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llamalab.evaluate.evaluate import EvalSettings, evaluate
from llamalab.evaluate.generation import generate_greedy, parse_label

LABELS = {"negative": "negative", "positive": "positive", "very_positive": "very positive"}


@pytest.mark.parametrize(("text", "label"), [
    (" positive", "positive"),
    ("Positive.\nThe review praises the film", "positive"),
    (" very positive!", "very_positive"),
    ("I think it is negative, not positive", "negative"),
    ("**NEGATIVE**", "negative"),
    ("positively great", None),
    ("", None),
    ("no idea", None),
])
def test_parse_label(text, label):
    assert parse_label(text, LABELS) == label


def test_underscored_labels_match_spoken_answers():
    assert parse_label("Card arrival", {"card_arrival": "card_arrival", "card_linking": "card_linking"}) == (
        "card_arrival"
    )


def test_batched_greedy_generation_matches_one_by_one(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20]]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=5, batch_size=3)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single
    with torch.no_grad():  # greedy: the first generated token is the argmax after the prompt
        first = model(torch.tensor([prompts[1]])).logits[0, -1].argmax().item()
    assert batched[1].startswith(tokenizer.decode([first], skip_special_tokens=True))


def test_generate_protocol_records_raw_text_and_parsed_label(lab, tiny_model_dir):
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sentiment", limit=12,
                                        protocol="generate", max_new_tokens=3))
    assert record.data["scoring"]["protocol"] == "generate"
    rows = [json.loads(line) for line in (record.folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("generation" in r for r in rows)
    # A random tiny model rarely says a label: unparseable answers are kept as null and counted wrong.
    assert all(r["prediction"] in (None, "negative", "positive") for r in rows)
    assert record.data["metrics"]["accuracy"]["n"] == 12
