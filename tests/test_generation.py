from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from llamalab.backends.hf_generation import generate_greedy
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.evaluation.parsing import parse_label

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
    ("Sure!\nPositive", "positive"),  # a chatty opener: the label on a later line
    ("Sure, negative.\nOr positive", "negative"),  # the first line decides when it names one
])
def test_parse_label(text, label):
    assert parse_label(text, LABELS) == label


def test_underscored_labels_match_spoken_answers():
    assert parse_label("Card arrival", {"card_arrival": "card_arrival", "card_linking": "card_linking"}) == (
        "card_arrival"
    )


def test_verbalizers_without_words_match_nothing_and_collisions_are_refused_before_a_run(lab):
    from llamalab.config import LlamalabError
    from llamalab.evaluation.parsing import unparseable_verbalizers

    assert parse_label("", {"a": "yes", "b": "?"}) is None
    assert parse_label("", {"up": "+", "down": "-"}) is None
    assert "no letters or digits" in unparseable_verbalizers({"up": "+", "down": "-"})
    assert "read the same" in unparseable_verbalizers({"Positive": "Positive", "positive": "positive"})
    assert unparseable_verbalizers(LABELS) is None
    task = lab.task_path("sentiment")
    task.write_text(task.read_text().replace("labels: [negative, positive]", "labels: [negative, positive]\n"
                                             "  verbalizers: {negative: '-', positive: '+'}"))
    assert "'+'" in task.read_text()
    before = sorted(lab.runs_dir.glob("*")) if lab.runs_dir.exists() else []
    with pytest.raises(LlamalabError, match="no letters or digits.*--protocol loglikelihood"):
        evaluate(lab, EvalSettings(system="smollm2-135m-instruct", task="sentiment", protocol="generate", limit=2))
    assert (sorted(lab.runs_dir.glob("*")) if lab.runs_dir.exists() else []) == before  # no run folder


def _argmax_continuation(model, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_greedy_is_the_argmax_whatever_the_models_generation_config_says(tiny_model_dir, tokenizer):
    """generate() merges the model's generation_config.json into every call: a repetition penalty or a no-repeat
    n-gram size there would make "greedy" something else."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model.generation_config.eos_token_id = None  # run the whole budget: the argmax loop does not stop either
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20], [300, 301]]
    expected = [_argmax_continuation(model, p, 12) for p in prompts]
    model.generation_config.repetition_penalty = 5.0
    model.generation_config.no_repeat_ngram_size = 2
    leaked = model.generate(torch.tensor([prompts[0]]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, 3:].tolist()
    assert leaked != expected[0]  # the config does change plain generate()'s tokens
    tokenizer_ends = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    texts = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    for text, tokens in zip(texts, expected, strict=True):
        kept = tokens[:next((k for k, t in enumerate(tokens) if t in tokenizer_ends), len(tokens))]
        assert text == tokenizer.decode(kept, skip_special_tokens=True)
    assert model.generation_config.repetition_penalty == 5.0  # the model's own config is put back
    # the model's own end tokens stop it too (a model whose end of turn is not the tokenizer's end token)
    model.generation_config = type(model.generation_config)()
    prompt = [4444, 12, 999]
    tokens = _argmax_continuation(model, prompt, 12)
    end = next(t for t in tokens if t != tokens[0])  # the tiny model repeats a token, then changes to another
    assert end not in tokenizer_ends and tokens.index(end) < 11
    model.generation_config.eos_token_id = [end]
    (text,) = generate_greedy(model, tokenizer, [prompt], max_new_tokens=12)
    assert text == tokenizer.decode(tokens[:tokens.index(end) + 1], skip_special_tokens=True)  # the end kept, as
    # generate() keeps it (a real model's end tokens are special tokens, which decoding drops)
    # and which outputs the budget cut off is said: an ended one was not, one without an end token in its 12 was
    endless = next(p for p in ([n, n + 1] for n in range(100, 400, 7)) if end not in _argmax_continuation(model, p, 12))
    heard = []
    generate_greedy(model, tokenizer, [prompt, endless], max_new_tokens=12, batch_size=2,
                    on_batch=lambda indices, texts, cut: heard.extend(zip(indices, cut, strict=True)))
    assert sorted(heard) == [(0, False), (1, True)]


def test_batched_greedy_generation_matches_one_by_one(tiny_model_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14], [20]]
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=5, batch_size=3)
    single = [generate_greedy(model, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == single
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=5, batch_size="auto") == single  # 16 on a CPU
    with torch.no_grad():  # greedy: the first generated token is the argmax after the prompt
        first = model(torch.tensor([prompts[1]])).logits[0, -1].argmax().item()
    assert batched[1].startswith(tokenizer.decode([first], skip_special_tokens=True))


def test_generate_protocol_records_raw_text_and_parsed_label(lab, tiny_model_dir):
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sentiment", limit=12,
                                        protocol="generate", max_new_tokens=3))
    assert record.run.scoring.protocol == "generate"
    rows = [json.loads(line) for line in (record.folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and all("generation" in r for r in rows)
    # A random tiny model rarely says a label: unparseable answers are kept as null and counted wrong.
    assert all(r["prediction"] in (None, "negative", "positive") for r in rows)
    assert record.run.metrics["accuracy"].n == 12


def test_score_generation_per_answer_type():
    from llamalab.evaluation.metrics import score_generation
    from llamalab.tasks.task import AnswerSpec

    gold_entities = '[{"type": "person", "text": "Lady  Gaga"}, {"type": "location", "text": "Paris"}]'
    perfect = score_generation(AnswerSpec(type="entities"), gold_entities,
                               'Sure: ```json\n[{"type": "Person", "text": "Lady Gaga"}, {"type": "location", '
                               '"text": "Paris"}]\n```')
    assert (perfect["tp"], perfect["fp"], perfect["fn"], perfect["valid_json"]) == (2, 0, 0, True)
    broken = score_generation(AnswerSpec(type="entities"), gold_entities, "[{'type': person")
    assert (broken["tp"], broken["fp"], broken["fn"], broken["valid_json"]) == (0, 0, 2, False)

    number = score_generation(AnswerSpec(type="number"), "She pays 3 * 4 = <<3*4=12>>12.\n#### 1,200",
                              "So the total is $1200.")
    assert number["correct"] and number["gold_number"] == "1200"

    text = score_generation(AnswerSpec(type="text"), '["The cat sat.", "A cat is sitting."]', "the cat sat")
    assert text["correct"] and text["rouge1"] == 1.0
