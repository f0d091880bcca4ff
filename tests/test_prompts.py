from __future__ import annotations

import random

import pytest

from llamalab.config import LlamalabError
from llamalab.tasks.data import Example
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import Task

EX = Example("f:1", {"text": "a gripping , funny film ."}, "positive", "f:1")


def task(**prompt) -> Task:
    return Task.model_validate({
        "name": "sentiment",
        "data": {"files": [{"path": "x.jsonl", "split": "train"}]},
        "prompt": {"template": "Review: {{ text }}\nSentiment:", **prompt},
        "answer": {"labels": ["negative", "positive"], "verbalizers": {"positive": "good"}},
    })


def test_plain_prompt_and_training_target(tokenizer):
    prompter = Prompter(task(), tokenizer, "plain")
    assert prompter.prompt(EX) == "Review: a gripping , funny film .\nSentiment:"
    assert prompter.completion(EX) == " good" + tokenizer.eos_token  # verbalizer, delimiter, end marker
    encoded = prompter.encode_training(EX)
    assert tokenizer.decode(encoded.prompt_ids) == prompter.prompt(EX)
    assert tokenizer.decode(encoded.answer_ids) == " good" + tokenizer.eos_token
    # The label scored at evaluation is exactly the start of the training target.
    scored = prompter.encode(prompter.prompt(EX), prompter.continuation("good"))
    assert scored.prompt_ids == encoded.prompt_ids
    assert encoded.answer_ids[: len(scored.answer_ids)] == scored.answer_ids


def test_chat_prompt_uses_the_tokenizers_own_template(tokenizer):
    prompter = Prompter(task(system="You rate reviews."), tokenizer, "chat")
    expected = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You rate reviews."},
         {"role": "user", "content": "Review: a gripping , funny film .\nSentiment:"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert prompter.prompt(EX) == expected
    assert prompter.completion(EX) == "good<|im_end|>\n"
    encoded = prompter.encode_training(EX)
    assert tokenizer.decode(encoded.answer_ids) == "good<|im_end|>\n"
    assert tokenizer.decode(encoded.prompt_ids) == expected


def test_k_shot_examples_come_before_the_query(tokenizer):
    shot = Example("f:9", {"text": "dull ."}, "negative", "f:9")
    prompter = Prompter(task(), tokenizer, "plain", shots=(shot,))
    assert prompter.prompt(EX) == "Review: dull .\nSentiment: negative\n\nReview: a gripping , funny film .\nSentiment:"
    chat = Prompter(task(), tokenizer, "chat", shots=(shot,))
    assert chat.prompt(EX).count("<|im_start|>assistant") == 2  # the shot's answer turn + the generation prompt


def test_a_plain_answer_ends_where_the_model_starts_another_example(tokenizer):
    """In plain format a model runs on past its answer into a made-up next example, as the shots taught it: the
    answer is the text before a blank line followed by the prompt's opening words; chat answers are untouched."""
    shot = Example("f:9", {"text": "dull ."}, "negative", "f:9")
    plain = Prompter(task(), tokenizer, "plain", shots=(shot,))
    run_on = " good\n\nReview: a bad film .\nSentiment: bad"
    assert plain.answer_text(run_on) == " good"
    assert plain.answer_text(" good\n\nthe end\nReview: x") == " good\n\nthe end\nReview: x"  # no new example
    assert Prompter(task(), tokenizer, "chat").answer_text(run_on) == run_on
    listed = Prompter(task(), tokenizer, "plain", list_labels=True)
    assert listed.answer_text(" good\n \nAnswer with exactly one of: good, negative.") == " good"
    assert Prompter(task(template="{{ text }} ->"), tokenizer, "plain").answer_text(run_on) == run_on


def test_a_template_that_starts_with_a_field_is_recognised_by_its_first_literal_line(tokenizer):
    """`{{ text }}\nSentiment:` has no opening words: a made-up example is a blank line, its text, then the
    template's first literal line; the label in it is not the answer."""
    plain = Prompter(task(template="{{ text }}\nSentiment:"), tokenizer, "plain")
    assert plain.answer_text(" good\n\na bad film .\nSentiment: negative") == " good"
    assert plain.answer_text(" good\n\nthe end .") == " good\n\nthe end ."  # no literal line: no new example
    assert plain.answer_text(" good\n\nmore\n\nx\nSentiment: bad") == " good\n\nmore"  # the example's own blank
    assert plain.answer_text(" good\n\nmore\n\nx Sentiment: bad") == " good\n\nmore\n\nx Sentiment: bad"  # no line
    # the template's own blank lines and line breaks are the made-up example's: a paragraph of the answer that
    # merely contains the literal words is not cut, and a passage-first example is cut before its passage
    passage = Prompter(task(template="{{ text }}\n\nQuestion: {{ text }}\nAnswer:"), tokenizer, "plain")
    assert passage.answer_text(" Paris\n\nSome other passage.\n\nQuestion: who?\nAnswer: Bob") == " Paris"
    question = Prompter(task(template="{{ text }}\nAnswer:"), tokenizer, "plain")
    assert question.answer_text(" Step one.\n\nAnswer: 7") == " Step one.\n\nAnswer: 7"
    # control blocks and trimmed whitespace render otherwise than written: the literal line after a field
    optional = Prompter(task(template="{% if text %}{{ text }}\n\n{% endif %}Question: {{ text }}\nAnswer:"),
                        tokenizer, "plain")
    assert optional.answer_text("positive\n\nQuestion: q2\nAnswer: negative") == "positive"
    trimmed = Prompter(task(template="{{ text -}}\n\nSentiment:"), tokenizer, "plain")
    assert trimmed.answer_text("positive\n\ngreatSentiment: negative") == "positive"
    inline = Prompter(task(template="{# a comment #}{{ text }} ->{% if true %} label:{% endif %}"), tokenizer, "plain")
    assert inline.answer_text(" good\n\nsome film -> bad") == " good"
    assert Prompter(task(template="{{ text }}"), tokenizer, "plain").answer_text(" a\n\nb") == " a\n\nb"


def test_trailing_space_moves_to_the_answer(tokenizer):
    prompter = Prompter(task(template="Review: {{ text }}\nSentiment: "), tokenizer, "plain")
    encoded = prompter.encode(prompter.prompt(EX), "good")
    assert tokenizer.decode(encoded.prompt_ids).endswith("Sentiment:")
    assert tokenizer.decode(encoded.answer_ids) == " good"


def test_template_errors_name_the_field(tokenizer):
    prompter = Prompter(task(template="{{ review }}"), tokenizer, "plain")
    with pytest.raises(LlamalabError, match="uses field 'review', which example .* does not have; its fields: text"):
        prompter.prompt(EX)


@pytest.mark.parametrize("seed", range(40))
def test_a_run_on_example_is_cut_off_for_random_templates_and_texts(tokenizer, seed):
    """Whatever the template (opening words or a field first) and texts: an answer followed by a blank line and
    the template rendered on made-up text (what the shots teach) comes back as that answer."""
    rng = random.Random(seed)
    words = ["good", "bad", "film", "the", "Review", "->", "is", ":", "plot", "42", "ok."]

    def text(lines: int) -> str:
        return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) for _ in range(lines))

    opening = rng.choice(["", "Review:", "Text of the review:"])
    closing = rng.choice(["\nSentiment:", " ->", "\nQ: is it good?\nA:", "\n\nQuestion: {{ text }}\nAnswer:"])
    template = f"{opening} {{{{ text }}}}{closing}".lstrip()
    prompter = Prompter(task(template=template), tokenizer, "plain", shots=(EX,))
    answer = " " + text(rng.randint(1, 3))  # no blank line inside
    made_up = Example("f:2", {"text": text(rng.randint(1, 2))}, "negative", "f:2")
    run_on = answer + rng.choice(["\n\n", "\n \n", "\n\n\n"]) + prompter.user_text(made_up) + " bad"
    assert prompter.answer_text(run_on) == answer
    assert prompter.answer_text(answer) == answer


@pytest.mark.parametrize(("template", "answer", "says"), [
    ("Review: {{ text }}\nSentiment:", {"type": "text"}, "opening words"),
    ("{{ text }}\nSummary:", {"type": "text"}, "its line breaks as written"),
    ("{% if text %}{{ text }}{% endif %}\nSummary:", {"type": "text"}, "text without a blank line and then"),
    ("{{ text }}", {"type": "text"}, None),
    ("{{ text }}", {"labels": ["a", "b"]}, "opening words"),  # generated labels: the listed-labels line opens
])
def test_the_recorded_parsing_says_how_a_run_on_answer_was_cut(template, answer, says):
    from llamalab.evaluation.evaluate import EvalSettings, scoring_provenance

    spec = task(template=template).model_copy(update={"answer": task().answer.model_validate(answer)})
    for fmt, expected in (("plain", says), ("chat", None)):
        parsing = scoring_provenance(spec, EvalSettings(system="s", task="t", protocol="generate", format=fmt))[
            "parsing"]
        assert ("another example" in parsing) == (expected is not None)
        assert expected is None or expected in parsing
