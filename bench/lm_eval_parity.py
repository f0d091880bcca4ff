"""llamalab vs lm-evaluation-harness on `sentiment`: same model, same prompt, one process.

    .venv/bin/pip install 'lm-eval==0.4.13'
    .venv/bin/python bench/lm_eval_parity.py [--limit 1066] [--batch-size 16]

Both score " negative" / " positive" after "Review: {text}\\nSentiment:" on the embedded model
(float32 weights). lm-eval runs its full pipeline (a task YAML over the same test examples,
`simple_evaluate` with the HF backend, per-sample logging). Prints the example-by-example
agreement of predictions, the largest log-likelihood difference, and examples/s of each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import textwrap
import time
from pathlib import Path

from llamalab.evaluate.evaluate import EvalSettings, evaluate
from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME, resolve_model
from llamalab.runs.files import read_jsonl

LABELS = ["negative", "positive"]


def run_lm_eval(model_path: str, rows: list[dict], batch_size: int, folder: Path) -> tuple[list[list[float]], float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    folder = folder / "lm-eval-task"  # its own folder: lm-eval registers every YAML it finds there
    folder.mkdir()
    data = folder / "test.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"], "label": LABELS.index(r["gold"])}) + "\n" for r in rows))
    (folder / "sentiment.yaml").write_text(textwrap.dedent(f"""
        task: llamalab_sentiment
        dataset_path: json
        dataset_kwargs:
          data_files: {{test: {data}}}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
        doc_to_target: label
        doc_to_choice: {LABELS}
        target_delimiter: " "
        metric_list:
          - metric: acc
    """))
    started = time.perf_counter()
    results = simple_evaluate(
        model="hf", model_args=f"pretrained={model_path},dtype=float32", tasks=["llamalab_sentiment"],
        batch_size=batch_size, device="cpu", log_samples=True, task_manager=TaskManager(include_path=str(folder)),
    )
    seconds = time.perf_counter() - started
    samples = sorted(results["samples"]["llamalab_sentiment"], key=lambda s: s["doc_id"])
    return [[float(r[0][0]) for r in s["resps"]] for s in samples], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="test examples (default: all 1,066)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        started = time.perf_counter()
        record = evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task="sentiment", format="plain", limit=args.limit,
                                            batch_size=args.batch_size))
        ours_s = time.perf_counter() - started
        ours = read_jsonl(record.folder / "predictions.jsonl")
        for row in ours:
            row["text"] = row["prompt"].removeprefix("Review: ").removesuffix("\nSentiment:")
        theirs, theirs_s = run_lm_eval(resolve_model(EMBEDDED_NAME).path, ours, args.batch_size, Path(tmp))

    agree = sum(row["prediction"] == LABELS[max(range(2), key=lambda k: t[k])] for row, t in zip(ours, theirs,
                                                                                              strict=True))
    gap = max(abs(row["scores"][label] - t[k]) for row, t in zip(ours, theirs, strict=True)
              for k, label in enumerate(LABELS))
    n = len(ours)
    print(f"examples: {n}")
    print(f"prediction agreement: {agree}/{n} ({agree / n:.2%}); largest log-likelihood difference {gap:.2e}")
    print(f"llamalab : {n / ours_s:7.1f} examples/s ({ours_s:.1f} s, model load included)")
    print(f"lm-eval  : {n / theirs_s:7.1f} examples/s ({theirs_s:.1f} s, model load included)")
    print(f"speed ratio (llamalab / lm-eval): {theirs_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
