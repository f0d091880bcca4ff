"""The README's "From Python" section runs as written (on the tiny model instead of the embedded one)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_section() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the From Python section holds one code block"
    return blocks[0]


@pytest.mark.slow
def test_readme_python_section_runs(tmp_path: Path, tiny_model_dir: Path) -> None:
    code = python_section()
    assert 'model = "smollm2-135m-instruct"' in code
    code = code.replace('model = "smollm2-135m-instruct"', f"model = {str(tiny_model_dir)!r}")
    out = io.StringIO()
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md (From Python)", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = out.getvalue()
    assert "accuracy " in printed and "n = 40" in printed
    assert (tmp_path / "my-lab" / "lab.yaml").is_file()
    runs = sorted(p.name for p in (tmp_path / "my-lab" / "runs").iterdir() if not p.name.startswith("."))
    assert sum("-train-" in r for r in runs) == 1 and sum("-eval-" in r for r in runs) == 3


def test_public_api_resolves_without_loading_torch() -> None:
    """Every public name resolves (a subpackage never shadows a function), and none imports torch: that waits
    until a model is loaded or training starts, so `import llamalab` and every error before that are quick."""
    code = ("import sys, llamalab\n"
            "from llamalab import Lab, train, evaluate, compare, build_site\n"
            "missing = [n for n in llamalab.__all__ if getattr(llamalab, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert set(llamalab.__all__) == set(llamalab._EXPORTS) | {'__version__'}\n"
            "assert callable(llamalab.train) and callable(llamalab.evaluate), 'a subpackage shadows the function'\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_readme_states_the_record_schema_version_runs_are_written_with() -> None:
    """It said 9 for a while after records were written at 10."""
    import re

    from llamalab.runs.schema import SCHEMA_VERSION

    stated = re.search(r"`schema_version` \(now (\d+):", README.read_text(encoding="utf-8"))
    assert stated and int(stated[1]) == SCHEMA_VERSION
    assert f"; {SCHEMA_VERSION} `" in README.read_text(encoding="utf-8")  # and the list says what it added
