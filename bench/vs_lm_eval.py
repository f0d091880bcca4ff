"""llamalab vs lm-evaluation-harness: parity and speed of label scoring, same model and prompt, one process.

    .venv/bin/pip install 'lm-eval==0.4.13'
    .venv/bin/python bench/vs_lm_eval.py --task sentiment            # parity: all 1,066 test examples
    .venv/bin/python bench/vs_lm_eval.py --task intent --limit 100   # 77 multi-token labels
    .venv/bin/python bench/vs_lm_eval.py --precision bfloat16        # llamalab in bf16 (CPUs with native bf16)

Both score every label (with a leading space) after the task's plain prompt on the embedded model,
in float32 (llamalab in bfloat16 with `--precision bfloat16`, which rescores in float32 any example whose best
two labels are close). lm-eval runs its full pipeline: a task YAML over the same test examples, `simple_evaluate`
with the HF backend, per-sample logging. Prints the example-by-example agreement of predictions, the
largest log-likelihood difference, and examples/s of each (model loading included on both sides).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME, resolve_model
from llamalab.runs.files import read_jsonl
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import Task, load_task


def run_lm_eval(task: Task, model_path: str, rows: list[dict], batch_size: int, folder: Path):
    """lm-eval's own pipeline on the same examples; returns per-example label log-likelihoods and seconds."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    labels = task.answer.labels
    folder = folder / "lm-eval-task"  # its own folder: lm-eval registers every YAML it finds there
    folder.mkdir()
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": labels.index(r["gold"])}) + "\n" for r in rows))
    template = task.prompt.template.replace("{{ text }}", "{{text}}").replace("\n", "\\n")
    (folder / "task.yaml").write_text(textwrap.dedent(f"""
        task: llamalab_{task.name}
        dataset_path: json
        dataset_kwargs:
          data_files: {{test: {data}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{template}"
        doc_to_target: label
        doc_to_choice: {json.dumps([task.answer.verbalize(label) for label in labels])}
        target_delimiter: " "
        metric_list:
          - metric: acc
    """))
    started = time.perf_counter()
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_path},dtype=float32", tasks=[f"llamalab_{task.name}"],
        batch_size=batch_size, device="cpu", log_samples=True, task_manager=TaskManager(include_path=str(folder)),
    )
    seconds = time.perf_counter() - started
    samples = sorted(results["samples"][f"llamalab_{task.name}"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment", choices=["sentiment", "intent"])
    parser.add_argument("--limit", type=int, default=None, help="test examples (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32", help="llamalab's")
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:  # before llamalab's half, not after it
        raise SystemExit("lm-evaluation-harness is not installed: .venv/bin/pip install -e '.[bench]' (or make bench)")
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        started = time.perf_counter()
        record = evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task=args.task, format="plain", limit=args.limit,
                                            batch_size=args.batch_size, precision=args.precision))
        ours_s = time.perf_counter() - started
        task = load_task(lab.task_path(args.task), lab.root)
        texts = {ex.id: ex.fields["text"] for ex in load_task_data(task).split("test")}
        ours = read_jsonl(record.folder / "predictions.jsonl")
        for row in ours:
            row["text"] = texts[row["id"]]
        theirs, theirs_s = run_lm_eval(task, resolve_model(EMBEDDED_NAME).path, ours, args.batch_size, Path(tmp))

    labels = task.answer.labels
    agree = sum(row["prediction"] == labels[max(range(len(labels)), key=lambda k: t[k])]
                for row, t in zip(ours, theirs, strict=True))
    gap = max(abs(row["scores"][label] - t[k]) for row, t in zip(ours, theirs, strict=True)
              for k, label in enumerate(labels))
    n = len(ours)
    print(f"task: {args.task} ({len(labels)} labels); llamalab in {args.precision}, lm-eval in float32")
    print(f"examples: {n}")
    print(f"prediction agreement: {agree}/{n} ({agree / n:.2%}); largest log-likelihood difference {gap:.2e}")
    print(f"llamalab : {n / ours_s:7.1f} examples/s ({ours_s:.1f} s, model load included)")
    print(f"lm-eval  : {n / theirs_s:7.1f} examples/s ({theirs_s:.1f} s, model load included)")
    print(f"speed ratio (llamalab / lm-eval): {theirs_s / ours_s:.2f}x")
    # How close to the machine's own limit: forward FLOPs (2 x non-embedding parameters per token the model had to
    # compute: a shared prompt prefix once, no padding) over the evaluation's time, against a matmul measured now on
    # the same threads, in float32 and, where the CPU has native bf16, in bfloat16 (the ceiling of a bf16 run).
    from run_all import matmul_rates

    from llamalab.runs.record import cpu_name
    from llamalab.training.plan import Shape, scoring_flops_per_token

    shape = Shape.of_folder(Path(resolve_model(EMBEDDED_NAME).path))
    gflops = scoring_flops_per_token(shape) * record.run.throughput["forward_tokens_per_s"] / 1e9
    shares = "; ".join(f"{dtype} matmul {rate:.0f} GFLOP/s: {gflops / rate:.0%} of it"
                       for dtype, rate in matmul_rates().items())
    print(f"machine: {cpu_name()}; llamalab's scoring ran at {gflops:.0f} GFLOP/s of forward FLOPs; {shares}")

if __name__ == "__main__":
    main()
