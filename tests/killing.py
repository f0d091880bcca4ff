"""Run an evaluation in a child process and kill -9 it after a number of saved batches."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from llamalab.evaluation import evaluate as loop
    from llamalab.lab import find_lab

    original, calls = loop.append_jsonl, []

    def append_then_die(path, rows):
        original(path, rows)
        calls.append(1)
        if len(calls) == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

    loop.append_jsonl = append_then_die
    loop.evaluate(find_lab(sys.argv[1]), loop.EvalSettings(**json.loads(sys.argv[3])))
""")


def eval_killed_after(lab_root: Path, appends: int, settings: dict) -> subprocess.CompletedProcess:
    """Evaluate with `settings`; the child dies by SIGKILL right after its `appends`-th batch is written."""
    return subprocess.run([sys.executable, "-c", SCRIPT, str(lab_root), str(appends), json.dumps(settings)],
                          capture_output=True, timeout=300)
