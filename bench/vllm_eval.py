"""vLLM vs transformers on a GPU machine: same prompts, same label scoring, examples/s and agreement.

    pip install -e '.[vllm]'
    python bench/vllm_eval.py [--task sentiment] [--limit 1066]

Runs `llamalab eval` on the embedded model with the hf backend and then the vllm backend on the
same test examples, and prints the agreement of predictions, the largest log-likelihood gap, and
the ratio of examples/s. Needs a CUDA GPU; on a CPU-only machine it stops with vLLM's error.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.lab import init_lab
from llamalab.models import EMBEDDED_NAME
from llamalab.runs.files import read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lab = init_lab(Path(tmp) / "lab")
        records = {
            backend: evaluate(lab, EvalSettings(system=EMBEDDED_NAME, task=args.task, limit=args.limit,
                                                backend=backend, batch_size=args.batch_size))
            for backend in ("hf", "vllm")
        }
        rows = {b: {r["id"]: r for r in read_jsonl(rec.folder / "predictions.jsonl")} for b, rec in records.items()}
    hf, vllm = rows["hf"], rows["vllm"]
    agree = sum(hf[i]["prediction"] == vllm[i]["prediction"] for i in hf)
    gap = max(abs(hf[i]["scores"][k] - vllm[i]["scores"][k]) for i in hf for k in hf[i]["scores"])
    speed = {b: rec.run.throughput["examples_per_s"] for b, rec in records.items()}
    print(f"examples: {len(hf)}; prediction agreement {agree}/{len(hf)}; largest log-likelihood gap {gap:.2e}")
    print(f"hf   : {speed['hf']:8.1f} examples/s")
    print(f"vllm : {speed['vllm']:8.1f} examples/s")
    print(f"ratio (vllm / hf): {speed['vllm'] / speed['hf']:.2f}x")


if __name__ == "__main__":
    main()
