"""Training and scoring on one GPU against the card's own matmul rate and TRL's default recipe, in one call.

    python bench/gpu_train.py [--shapes 1b,7b] [--steps 30] [--batch 16] [--out results.json]
    python bench/gpu_train.py --shapes tiny --steps 3      # the same script on a CPU, to check it runs

Models are random-weight Llama shapes with the embedded model's tokenizer (no hub needed): `1b` has TinyLlama's
dimensions, `7b` Llama-2-7B's. Rows are gsm8k prompt + answer (the longest task in the example lab). For each
shape it runs, in this process:

- TRL's default recipe: SFTTrainer with its default SFTConfig (activation checkpointing on) on prompt/completion
  rows, PEFT LoRA r=16 on all linear layers, the same batch and steps;
- `llamalab train` with LoRA on the same rows (plain format; activation_checkpointing: auto on the card's
  memory); for 7B also told the card has 24 GB (`memory_limit: 24GB`), and `method: qlora` told the same;
- label scoring (`llamalab eval` on sentiment) of the 1B shape.

First it checks that row-by-row attention (how llamalab trains padding-free batches; tested on CPUs only) gives the
numbers here too: its largest difference from each row attended alone in float32 (bf16's own rounding is ~1e-2).
Then it prints tokens/s, model TFLOP/s (4 P per trained token, as TRL comparisons count; 2 P per token the model
computed when scoring, without the embedding table, which is looked up, and the output layer, which runs at a few
positions) and the share of the card's bf16 matmul rate measured at the start; the same over the later half of
the steps, with the first step's and the median step's seconds (a per-step cost, or a start-up one?); peak GPU
memory (allocated, from before the model loaded; and what the allocator reserved) against `llamalab plan`'s
prediction, and the ratio to TRL (also over the later half of the steps: TRL runs first, paying start-up costs).
Label scoring runs in bfloat16 on a GPU, its batch sized to the card (`--score-batch auto`), twice: once as
`llamalab eval` does, which scores close calls again in float32 (a random model's two labels are near ties, so
nearly all: their count is printed, and their second pass is time not counted as FLOPs), and once in bfloat16
alone, the rate that is compared with the card's bf16 matmul rate. Each run's result (or its error: one failing
run, or a shape that could not be made, does not stop the others) is printed, and written to --out, as it ends.
All runs share one deadline (--budget-s): each gets at most the time left, and one with too little left is
recorded as skipped; a SIGTERM (`timeout`) writes what finished before the process ends.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import tempfile
import time
from functools import partial
from pathlib import Path

SHAPES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
           "num_key_value_heads": 4},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32},
}


def make_model(shape: str, folder: Path, weights: bool = True, tokenizer_from: str | None = None) -> int:
    """A random Llama of `shape` with the embedded tokenizer (or the one in the folder `tokenizer_from`) in `folder`
    (config only without `weights`); returns its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.models import EMBEDDED_NAME, ModelRef, load_tokenizer, resolve_model
    from llamalab.training.plan import Shape

    tokenizer = load_tokenizer(ModelRef(tokenizer_from, tokenizer_from, "local") if tokenizer_from
                               else resolve_model(EMBEDDED_NAME))
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    if not weights:
        config.save_pretrained(folder)
        return Shape.of(config.to_dict()).params
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    _release()
    return params


def _release() -> None:
    """Free what the last run left (accelerate's wrapped forward keeps a model in a reference cycle): the next
    run's peak memory is its own."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reserved_mib() -> float | None:
    """The most memory the allocator held since the peaks were last reset (more than was allocated: its cache)."""
    import torch

    return torch.cuda.max_memory_reserved() / 2**20 if torch.cuda.is_available() else None


def step_clock():
    """A TrainerCallback noting when each step ends: the steady rate (after the first steps, which carry one-time
    costs such as kernel selection and the optimizer's first allocation) tells a per-step cost from a start-up one."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.ends = [_synchronized_clock()]

        def on_step_end(self, args, state, control, **kwargs):  # when the card has finished the step's work
            self.ends.append(_synchronized_clock())

        def timing(self, tokens: float) -> dict:
            """Seconds of the first step, median seconds per later step, and the tokens/s over the later half
            (taking the steps' tokens as equal: rows are drawn from one distribution)."""
            import statistics

            steps = [b - a for a, b in itertools.pairwise(self.ends)]
            if len(steps) < 4:
                return {"first_step_s": round(steps[0], 3) if steps else None}
            half = len(steps) // 2
            return {"first_step_s": round(steps[0], 3), "median_step_s": round(statistics.median(steps[1:]), 4),
                    "steady_tokens_per_s": tokens * (len(steps) - half) / len(steps) / sum(steps[half:])}

    return StepClock()


def _synchronized_clock() -> float:
    """perf_counter once the GPU has done what was queued (a step's backward and optimizer work otherwise land in
    the next step's time, unevenly between the two recipes)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _rows(lab, folder: Path, count: int) -> list[dict]:
    from llamalab.models import load_tokenizer, resolve_model
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task
    from llamalab.training.trainer import training_subset

    task = load_task(lab.task_path("gsm8k"), lab.root)
    prompter = Prompter(task, load_tokenizer(resolve_model(str(folder))), "plain")
    return [{"prompt": prompter.prompt(ex), "completion": prompter.continuation(ex.answer)}
            for ex in training_subset(load_task_data(task).split("train"), count, seed=0)]


def trl_default(lab, folder: Path, batch: int, steps: int) -> dict:
    """TRL's default SFT recipe with PEFT LoRA: tokens/s and peak memory."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from llamalab.models import load_tokenizer, resolve_model

    cuda = torch.cuda.is_available()
    _release()
    before = 0
    if cuda:  # counted from what was held before the model loaded, as llamalab counts its peak
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, report_to=[],
                           save_strategy="no", disable_tqdm=True, bf16=cuda, use_cpu=not cuda)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if cuda else torch.float32)
        trainer = SFTTrainer(
            model=model, args=config, train_dataset=Dataset.from_list(_rows(lab, folder, batch * steps)),
            processing_class=load_tokenizer(resolve_model(str(folder))),
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[clock := step_clock()],
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if cuda else None
        reserved = _reserved_mib()
    del trainer, model
    _release()
    return {"tokens_per_s": tokens / seconds, "peak_mib": peak, "reserved_mib": reserved, **clock.timing(tokens)}


def llamalab_train(lab, folder: Path, batch: int, steps: int, **settings) -> dict:
    from llamalab.runs.files import read_jsonl
    from llamalab.runs.record import TRAIN_LOG
    from llamalab.training.experiment import Experiment
    from llamalab.training.trainer import train

    # plain rows, as TRL's prompt/completion rows (`_rows`): both train on the same text
    experiment = Experiment(task="gsm8k", base_model=str(folder), batch_size=batch, max_steps=steps,
                            train_examples=batch * steps, save_steps=10**6, max_length=1024, format="plain",
                            **settings)
    clock = step_clock()
    record = train(lab, experiment, name=f"bench-{folder.name}-{'-'.join(map(str, settings.values())) or 'lora'}",
                   callbacks=[clock])
    reserved = _reserved_mib()  # what the allocator held at most (since training reset the peaks): what must fit
    _release()
    memory = record.run.memory
    tokens = max(row["num_input_tokens_seen"] for row in read_jsonl(record.folder / TRAIN_LOG))
    return {"tokens_per_s": record.run.throughput["tokens_per_s"], "peak_mib": memory.measured_mb,
            "reserved_mib": reserved,
            "predicted_mib": memory.predicted_mb, "checkpointing": memory.activation_checkpointing,
            "reason": memory.reason, **clock.timing(tokens)}


def label_scoring(lab, folder: Path, limit: int, batch: int | str, recheck: bool = True) -> dict:
    """`llamalab eval` of the sentiment labels: in bfloat16 on a GPU (the rate it is compared with), float32 on a
    CPU; the tokens the model computed (a shared prefix once, no padding) per second. Without `recheck`, no close
    call is scored again in float32: the bf16 pass alone (a random model's labels are near ties, all rescored)."""
    from unittest import mock

    import torch

    from llamalab.backends import hf_scoring
    from llamalab.evaluation.evaluate import evaluate

    precision = "bfloat16" if torch.cuda.is_available() else "float32"
    never_close = mock.patch.object(hf_scoring, "_too_close", lambda *args, **kwargs: False)
    with contextlib.nullcontext() if recheck else never_close:
        record = evaluate(lab, str(folder), task="sentiment", limit=limit, precision=precision, batch_size=batch)
    _release()
    throughput = record.run.throughput
    return {"examples_per_s": throughput["examples_per_s"], "tokens_per_s": throughput["tokens_per_s"],
            "forward_tokens_per_s": throughput.get("forward_tokens_per_s"), "precision": precision,
            "batch_size": batch, "largest_batch_rows": throughput.get("largest_batch_rows", batch), "examples": limit,
            "rechecked_float32": throughput.get("rechecked_float32")}


def rows_attention_error(seed: int = 0) -> float:
    """The largest difference, on this device in its training precision, between row-by-row attention over a
    padding-free batch and each row attended alone in float32 (the reference): a check that it computes the same
    numbers here (it is tested on CPUs only)."""
    import torch

    from llamalab.training.attention import rows_attention

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 200, (8,), generator=generator)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    tokens, heads, kv_heads, dim = int(starts[-1]), 32, 8, 64

    def random(count: int) -> torch.Tensor:
        return torch.randn(1, count, tokens, dim, generator=generator).to(device, dtype)

    query, key, value = random(heads), random(kv_heads), random(kv_heads)

    class Layer(torch.nn.Module):
        is_causal = True

    with torch.autocast(device, torch.bfloat16, enabled=cuda):  # as the Trainer runs it on the card
        out, _ = rows_attention(Layer(), query, key, value, None, scaling=dim**-0.5,
                                cu_seq_lens_q=starts.to(device), max_length_q=int(lengths.max()))
    worst = 0.0
    for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
        row = [t[:, :, a:b].float() for t in (query, key, value)]
        alone = torch.nn.functional.scaled_dot_product_attention(*row, is_causal=True, scale=dim**-0.5,
                                                                 enable_gqa=True)
        worst = max(worst, (out[0, a:b].float() - alone[0].transpose(0, 1)).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1b,7b", type=_shapes, help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--score-limit", type=int, default=1000)
    parser.add_argument("--score-batch", type=lambda v: v if v == "auto" else int(v), default=None,
                        help="label scoring batch: rows, or auto (sized to the card's free memory; the default on a "
                             "GPU, 16 on a CPU)")
    parser.add_argument("--tokenizer", default=None,
                        help="a folder with the tokenizer files to use (default: the embedded model's)")
    parser.add_argument("--work", type=Path, default=None, help="where the random models go (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--budget-s", type=float, default=520,
                        help="seconds for the whole bench (under the call's own limit): later runs get what is left")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget_s

    from llamalab.lab import init_lab
    from llamalab.training.plan import measure_matmul_tflops, resolve_device

    device = resolve_device()
    rate = measure_matmul_tflops(device)
    print(f"device: {device.describe()}; measured matmul rate {rate:,.3g} TFLOP/s "
          f"({'bf16 8192²' if device.kind == 'cuda' else 'fp32 2048²'})", flush=True)
    error = _attempt(rows_attention_error, deadline)
    print(f"row-by-row attention against each row alone in float32: largest difference {error}", flush=True)
    results: dict = {"device": device.describe(), "matmul_tflops": rate, "rows_attention_error": error,
                     "shapes": {}}
    score_batch = args.score_batch or ("auto" if device.kind == "cuda" else 16)

    def save() -> None:  # after every run: a later failure or a timeout keeps what finished
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    def stopped(*_) -> None:  # `timeout` ends the call: what finished is written first
        save()
        raise SystemExit(124)

    signal.signal(signal.SIGTERM, stopped)
    save()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        lab = init_lab(Path(tmp) / "lab")
        for shape in args.shapes:
            folder = Path(tmp) / f"llama-{shape}"
            params = _attempt(partial(make_model, shape, folder, tokenizer_from=args.tokenizer), deadline, 400)
            if isinstance(params, dict):  # could not be made (a full disk?): the next shape may still run
                results["shapes"][shape] = params
                print(f"{shape}: {json.dumps(params)}", flush=True)
                save()
                _remove(folder)
                continue
            runs: dict = {}
            results["shapes"][shape] = {"params": params, "scoring_flops_per_token": _scoring_flops(folder),
                                        "runs": runs}
            trained = partial(llamalab_train, lab, folder, args.batch, args.steps)
            todo = {"TRL default": partial(trl_default, lab, folder, args.batch, args.steps), "llamalab": trained}
            if shape == "7b":
                todo["llamalab, 24 GB"] = partial(trained, memory_limit="24GB")
                todo["llamalab QLoRA, 24 GB"] = partial(trained, method="qlora", memory_limit="24GB")
            if shape in ("1b", "tiny"):
                todo["label scoring"] = partial(label_scoring, lab, folder, args.score_limit, score_batch)
                todo["label scoring, bf16 alone"] = partial(label_scoring, lab, folder, args.score_limit,
                                                            score_batch, recheck=False)
            for name, run in todo.items():
                runs[name] = _attempt(run, deadline)
                print(f"{shape} {name}: {json.dumps(runs[name])}", flush=True)
                save()
            _print(shape, params, results["shapes"][shape]["scoring_flops_per_token"], runs, rate)
            _remove(folder)
    save()


def _shapes(text: str) -> list[str]:
    shapes = [s.strip() for s in text.split(",") if s.strip()]
    if unknown := [s for s in shapes if s not in SHAPES]:
        raise argparse.ArgumentTypeError(f"unknown shape(s) {', '.join(unknown)}: use {', '.join(SHAPES)}")
    return shapes


class RunTooLong(Exception):
    pass


RUN_LIMIT_S = 240  # one run that hangs or crawls (a library fallen back to its CPU code) does not take the others' time
MIN_RUN_S = 20  # less left of the bench's budget than this: a run is skipped, not started
SAVE_S = 10  # kept back from every run's time to write the results


def _attempt(run, deadline: float, limit_s: int = RUN_LIMIT_S):
    """The run's result, or {"error": ...} when it fails, takes more than `limit_s` or runs past the bench's
    `deadline` (one failing run does not lose the others); with under MIN_RUN_S left it is skipped."""
    import traceback

    left = int(deadline - time.monotonic()) - SAVE_S
    if left < MIN_RUN_S:
        return {"error": f"skipped: {max(left, 0)} s left of the bench's --budget-s"}
    limit_s = min(limit_s, left)

    def stop(*_):  # not a TimeoutError: that is an OSError, which loaders catch and carry on from
        raise RunTooLong(f"stopped after {limit_s} s (bench/gpu_train.py's limit for this run)")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(limit_s)
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported, and the bench goes on
        traceback.print_exc()
        error = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        with contextlib.suppress(Exception):  # a CUDA error that sticks to the device raises here again
            _release()
        return error
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _scoring_flops(folder: Path) -> float:
    from llamalab.training.plan import Shape, scoring_flops_per_token

    return scoring_flops_per_token(Shape.of_folder(folder))


def _print(shape: str, params: int, scoring_flops: float, runs: dict, rate: float) -> None:
    print(f"\n{shape}: {params / 1e9:.2f} B parameters")
    peer = runs.get("TRL default", {}).get("tokens_per_s")
    # a run left out for lack of time was skipped (its error says so), not failed
    fate = "skipped" if runs.get("TRL default", {}).get("error", "").startswith("skipped") else "failed"
    for name, run in runs.items():
        if "error" in run:
            skipped = run["error"].startswith("skipped")
            print(f"  {name:18s} {run['error'][:300] if skipped else 'failed: ' + run['error'][:300]}")
            continue
        if "examples_per_s" in run:
            computed = run.get("forward_tokens_per_s") or run["tokens_per_s"]
            tflops = scoring_flops * computed / 1e12
            rechecked = (f"; {run['rechecked_float32']} of {run['examples']} close calls scored again in float32: "
                         "their time counted, their FLOPs not" if run.get("rechecked_float32") else "")
            print(f"  {name:18s} {run['examples_per_s']:10,.1f} examples/s  {tflops:8.3g} forward TFLOP/s "
                  f"({tflops / rate:.0%} of the card; {run['precision']}, batch {run['batch_size']}, at most "
                  f"{run.get('largest_batch_rows', run['batch_size'])} rows{rechecked})")
            continue
        tflops = 4 * params * run["tokens_per_s"] / 1e12
        memory = f"peak {run['peak_mib'] / 1024:6.1f} GiB" if run.get("peak_mib") else "peak n/a"
        if run.get("predicted_mib"):
            error = (run["predicted_mib"] - run["peak_mib"]) / run["peak_mib"] if run.get("peak_mib") else None
            memory += f" (plan {run['predicted_mib'] / 1024:.1f} GiB" + (f", {error:+.0%})" if error is not None
                                                                          else ")")
            memory += f", checkpointing {'on' if run['checkpointing'] else 'off'}"
        ratio = f"{run['tokens_per_s'] / peer:.2f}x TRL default" if peer else f"TRL default {fate}"
        steady_peer = runs.get("TRL default", {}).get("steady_tokens_per_s")
        if steady_peer and run.get("steady_tokens_per_s") and name != "TRL default":
            ratio += f" ({run['steady_tokens_per_s'] / steady_peer:.2f}x over the later half: TRL runs first)"
        if run.get("reserved_mib"):
            memory += f", reserved {run['reserved_mib'] / 1024:.1f} GiB"
        print(f"  {name:18s} {run['tokens_per_s']:10,.0f} tokens/s  {tflops:8.3g} model TFLOP/s "
              f"({tflops / rate:.0%} of the card)  {memory}  {ratio}")
        if run.get("steady_tokens_per_s"):
            steady = 4 * params * run["steady_tokens_per_s"] / 1e12
            print(f"  {'':18s} {run['steady_tokens_per_s']:10,.0f} tokens/s over the later half of the steps "
                  f"({steady:.3g} TFLOP/s, {steady / rate:.0%}); first step {run['first_step_s']} s, then "
                  f"{run['median_step_s']} s a step (median)")


def _remove(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
