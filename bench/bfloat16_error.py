"""How far bfloat16 label log-likelihoods are from float32's: the measurement behind `hf_scoring.label_error`.

    .venv/bin/python bench/bfloat16_error.py [--examples 200] [--intent-examples 40]

Scores the embedded model's test examples of `sentiment` (2 one-token labels) and `intent` (77 labels of 3-17
tokens) in float32 and in bfloat16 with no close call scored again, and prints, per label length in tokens, the
largest error of a label's log-likelihood next to the bound `label_error` allows, and the share of examples whose
best two labels are close enough to be scored again in float32. Exits 1 if any error reaches its bound.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from llamalab.backends import hf_scoring
from llamalab.backends.base import ChoiceRequest
from llamalab.backends.hf_scoring import label_error, score_choices
from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME, load_model, load_tokenizer, resolve_model
from llamalab.runs.record import cpu_name
from llamalab.tasks.data import load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="sentiment test examples")
    parser.add_argument("--intent-examples", type=int, default=40, help="intent test examples (77 labels each)")
    args = parser.parse_args()
    ref = resolve_model(EMBEDDED_NAME)
    model, tokenizer = load_model(ref), load_tokenizer(ref)
    print(f"CPU: {cpu_name()}")
    worst_ratio = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        for name, n in (("sentiment", args.examples), ("intent", args.intent_examples)):
            task = load_task(lab.task_path(name), lab.root)
            prompter = Prompter(task, tokenizer, task.prompt.format)
            requests = []
            for example in load_task_data(task).split("test")[:n]:
                prompt = prompter.prompt(example)
                encoded = [prompter.encode(prompt, prompter.continuation(task.answer.verbalize(label)))
                           for label in task.answer.labels]
                requests.append(ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded]))
            exact = score_choices(model, requests, 8, precision="float32")
            close_call = hf_scoring._too_close
            hf_scoring._too_close = lambda *_: False  # every bfloat16 score as computed, none scored again
            try:
                reduced = score_choices(model, requests, 8, precision="bfloat16")
            finally:
                hf_scoring._too_close = close_call
            by_length: dict[int, float] = {}
            for ours, theirs in zip(exact, reduced, strict=True):
                for a, b in zip(ours, theirs, strict=True):
                    by_length[a.n_tokens] = max(by_length.get(a.n_tokens, 0.0), abs(a.logprob - b.logprob))
            rechecked = sum(close_call(scores) for scores in reduced) / len(reduced)
            print(f"{name}: {len(requests)} examples, {rechecked:.0%} close calls (scored again in float32)")
            for tokens, error in sorted(by_length.items()):
                ratio = error / label_error(tokens)
                worst_ratio = max(worst_ratio, ratio)
                print(f"  {tokens:>2} token(s): largest error {error:.3f} nats, bound {label_error(tokens):.2f} "
                      f"({ratio:.0%} of it)")
    print(f"largest error as a share of its bound: {worst_ratio:.0%}")
    return 0 if worst_ratio < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
