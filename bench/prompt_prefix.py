"""What few-shot and chat prompts cost against zero-shot, with and without computing their shared prefix once.

    .venv/bin/python bench/prompt_prefix.py [--task sentiment] [--examples 300] [--shots 4] [--rounds 2]

Label scoring of the embedded model on the task's dev examples, in the prompt setups the demo chooses its baseline
from: zero-shot plain, k-shot plain, zero-shot chat. Each is scored by the hf kernel with the shared prefix
computed once (what llamalab does) and computed for every example (the plain computation), in this process.
A CPU's speed drifts over minutes, so the setups run in `--rounds` rounds, in reverse order every other round, and
each keeps its fastest time. Prints seconds, examples/s, the cost relative to zero-shot, the speed-up from sharing,
and whether the predictions agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from llamalab.backends.base import ChoiceRequest
from llamalab.backends.hf_scoring import score_choices
from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME, load_model, load_tokenizer, resolve_model
from llamalab.runs.record import cpu_name
from llamalab.tasks.data import load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task


def requests_for(prompter: Prompter, task, examples) -> list[ChoiceRequest]:
    requests = []
    for example in examples:
        prompt = prompter.prompt(example)
        encoded = [prompter.encode(prompt, prompter.continuation(task.answer.verbalize(label)))
                   for label in task.answer.labels]
        requests.append(ChoiceRequest(encoded[0].prompt_ids, [e.answer_ids for e in encoded]))
    return requests


def timed(model, requests, share: bool) -> tuple[float, list[int]]:
    started = time.perf_counter()
    scores = score_choices(model, requests, batch_size=16, share_prefix=share)
    seconds = time.perf_counter() - started
    return seconds, [max(range(len(s)), key=lambda k: s[k].logprob) for s in scores]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    ref = resolve_model(EMBEDDED_NAME)
    tokenizer = load_tokenizer(ref)
    model = load_model(ref)
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        task = load_task(lab.task_path(args.task), lab.root)
        data = load_task_data(task)
    examples = data.split("dev")[: args.examples]
    shots = tuple(data.split("train")[: args.shots])
    setups = {"zero-shot plain": Prompter(task, tokenizer, "plain"),
              f"{args.shots}-shot plain": Prompter(task, tokenizer, "plain", shots=shots),
              "zero-shot chat": Prompter(task, tokenizer, "chat")}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads; {len(examples)} {args.task} dev examples")
    timed(model, requests_for(setups["zero-shot plain"], task, examples[:16]), True)  # warm-up
    requests = {name: requests_for(prompter, task, examples) for name, prompter in setups.items()}
    best: dict[tuple[str, bool], float] = {}
    predictions: dict[tuple[str, bool], list[int]] = {}
    for round_ in range(args.rounds):
        for name in list(setups)[:: -1 if round_ % 2 else 1]:
            for share in (True, False):
                seconds, predictions[name, share] = timed(model, requests[name], share)
                best[name, share] = min(seconds, best.get((name, share), seconds))
    base = best["zero-shot plain", True]
    for name in setups:
        mean_tokens = sum(len(r.prompt_ids) for r in requests[name]) / len(examples)
        shared_s, full_s = best[name, True], best[name, False]
        agree = sum(a == b for a, b in zip(predictions[name, True], predictions[name, False], strict=True))
        print(f"{name:16s} {mean_tokens:6.0f} prompt tokens  shared prefix {shared_s:6.1f} s "
              f"({len(examples) / shared_s:5.1f} ex/s, {shared_s / base:4.2f}x zero-shot)  every example "
              f"{full_s:6.1f} s ({full_s / base:4.2f}x)  sharing {full_s / shared_s:4.2f}x faster  "
              f"predictions {agree}/{len(examples)} identical")


if __name__ == "__main__":
    main()
