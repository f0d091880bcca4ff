"""`make bench`: every CPU bench in turn, with the machine's own matmul rates, into bench/results/<cpu>.json.

    .venv/bin/python bench/run_all.py [--quick]

Measures the float32 (and, where the CPU has native bf16, bfloat16) matmul rate first, then runs each bench as a
subprocess and keeps what it printed (each bench prints its ratio against its peer and its share of the matmul
rate). `--quick` runs smaller versions to check that everything works. Run it on an otherwise idle machine: the
results name the CPU, and only ratios taken in one run compare.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ["train_throughput.py"],
    ["vs_lm_eval.py", "--task", "sentiment"],
    ["vs_lm_eval.py", "--task", "intent", "--limit", "60"],
    ["prompt_prefix.py"],
    ["bfloat16_error.py", "--examples", "1066"],  # the bound bf16 scoring relies on, checked on this CPU
]
QUICK = {"train_throughput.py": ["--examples", "48", "--steps", "4"], "prompt_prefix.py": ["--examples", "32"],
         "vs_lm_eval.py": ["--limit", "24"],
         "bfloat16_error.py": ["--examples", "24", "--intent-examples", "4"]}


def matmul_rates() -> dict[str, float]:
    """GFLOP/s of a 2048 x 2048 matmul on all threads: float32, and bfloat16 where the CPU computes it natively."""
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    dtypes = [torch.float32] + ([torch.bfloat16] if "amx_bf16" in flags or "avx512_bf16" in flags else [])
    rates = {}
    for dtype in dtypes:
        a = torch.randn(2048, 2048, dtype=dtype)
        best = float("inf")
        for _ in range(6):
            started = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - started)
        rates[str(dtype).removeprefix("torch.")] = round(2 * 2048**3 / best / 1e9, 1)
    return rates


def _with(options: list[str], changes: list[str]) -> list[str]:
    """`options` (pairs of --name value) with those `changes` names replaced and the rest of `changes` added."""
    merged = dict(zip(options[::2], options[1::2], strict=True)) | dict(zip(changes[::2], changes[1::2], strict=True))
    return [item for pair in merged.items() for item in pair]


def _commit() -> str | None:
    """The checkout's commit (with "+changes" when tracked files other than earlier results differ from it):
    results name the code they measured."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)bench/results")
    return (commit + ("+changes" if changed else "")) or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small versions, to check the benches run")
    args = parser.parse_args()
    from llamalab.runs.record import cpu_name

    cpu = cpu_name()
    results = {"cpu": cpu, "date": datetime.now(UTC).date().isoformat(), "commit": _commit(),
               "load_average": list(os.getloadavg()), "matmul_gflops": matmul_rates(), "benches": {}}
    print(f"{cpu}: matmul GFLOP/s {results['matmul_gflops']}", flush=True)
    benches = BENCHES + ([["vs_lm_eval.py", "--task", "sentiment", "--precision", "bfloat16"]]
                         if "bfloat16" in results["matmul_gflops"] else [])
    for bench in benches:
        quick = QUICK.get(bench[0], []) if args.quick else []
        command = [sys.executable, str(HERE / bench[0]), *_with(bench[1:], quick)]
        shown = " ".join([f"bench/{bench[0]}", *command[2:]])
        print(f"\n$ {shown}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        print("\n".join(lines) or done.stderr[-2000:], flush=True)
        results["benches"][shown] = {"exit_code": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                                     "output": lines, **({"error": done.stderr[-2000:]} if done.returncode else {})}
    if not args.quick:  # a check, not a measurement: nothing kept
        out = HERE / "results" / f"{re.sub(r'[^A-Za-z0-9]+', '-', cpu).strip('-').lower()}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwritten to {out}")
    if any(b["exit_code"] for b in results["benches"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
