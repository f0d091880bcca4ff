"""Training throughput: llamalab's recipe vs TRL's default SFT recipe, same model, data and steps, one process.

    .venv/bin/python bench/train_throughput.py [--examples 240] [--steps 30]

The peer is what a lab member would write from TRL's docs: SFTTrainer on a prompt/completion dataset with its
default SFTConfig (only `use_cpu`, and `bf16` set to what llamalab's `bf16: auto` picks on this machine, so both
train in the same precision: bf16 autocast where the CPU has native bf16, float32 elsewhere), plus PEFT LoRA r=16
on all linear layers. Both see the same examples in the same prompt format, for the same number of optimizer
steps, each after two untimed warm-up steps. Prints real (non-pad) training tokens/s of each and the ratio. Run it
on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME, load_tokenizer, resolve_model
from llamalab.tasks.data import load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task
from llamalab.training.experiment import load_experiment
from llamalab.training.trainer import _use_bf16, train, training_subset


def trl_default(lab, examples: int, steps: int, bf16: bool) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    ref = resolve_model(EMBEDDED_NAME)
    tokenizer = load_tokenizer(ref)
    task = load_task(lab.task_path("sentiment"), lab.root)
    prompter = Prompter(task, tokenizer, "plain")
    rows = [
        {"prompt": prompter.prompt(ex), "completion": prompter.continuation(ex.answer)}
        for ex in training_subset(load_task_data(task).split("train"), examples, seed=0)
    ]
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(output_dir=out, bf16=bf16, use_cpu=True, max_steps=steps, report_to=[],
                           save_strategy="no", disable_tqdm=True)
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(ref.path), args=config, train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        # TRL logs `num_tokens` (real tokens, no padding); num_input_tokens_seen would count the pads too.
        return max(h.get("num_tokens", 0) for h in trainer.state.log_history) / seconds


def llamalab_recipe(lab, examples: int, steps: int) -> float:
    record = train(lab, "sentiment-lora", train_examples=examples, max_steps=steps, save_steps=1000, seed=0)
    return record.run.throughput["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        bf16 = _use_bf16(load_experiment(lab.experiment_path("sentiment-lora"))[0])
        # Two untimed steps of each first: whichever ran first would otherwise pay the process's one-time costs
        # (kernel selection, allocator growth) inside its timing.
        trl_default(lab, args.examples, 2, bf16)
        llamalab_recipe(lab, args.examples, 2)
        peer = trl_default(lab, args.examples, args.steps, bf16)
        ours = llamalab_recipe(lab, args.examples, args.steps)
    print(f"both in {'bf16 autocast' if bf16 else 'float32'}, {args.steps} steps on {args.examples} examples")
    print(f"TRL default recipe : {peer:8.1f} tokens/s")
    print(f"llamalab recipe    : {ours:8.1f} tokens/s")
    print(f"ratio (llamalab / TRL default): {ours / peer:.2f}x")
    # How close to the machine's own limit: model FLOPs (4 P per trained token) against a matmul measured now on
    # the same threads, in float32 and, where the CPU has native bf16, in bfloat16 (the ceiling of a bf16 run).
    from run_all import matmul_rates

    from llamalab.runs.record import cpu_name
    from llamalab.training.plan import Shape, flops_per_token

    rates = matmul_rates()
    per_token = flops_per_token(Shape.of_folder(Path(resolve_model(EMBEDDED_NAME).path)), "lora")  # 4 P
    shares = "; ".join(f"{dtype} matmul {rate:.0f} GFLOP/s: llamalab {per_token * ours / 1e9 / rate:.0%} of it, "
                       f"TRL {per_token * peer / 1e9 / rate:.0%}" for dtype, rate in rates.items())
    print(f"machine: {cpu_name()}; llamalab trained at {per_token * ours / 1e9:.0f} model GFLOP/s, TRL's default at "
          f"{per_token * peer / 1e9:.0f}; {shares}")

if __name__ == "__main__":
    main()
