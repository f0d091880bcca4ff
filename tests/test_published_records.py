"""Records written before run.json had a schema version publish exactly as they did then.

tests/fixtures/records holds a real eval run and a real train run of that format (predictions cut to 20 rows);
tests/fixtures/report-v0 holds the report the llamalab of that time built from them (`build_report(lab, "v0",
split="dev")` on a lab made by `init_lab`). If the example lab or the report's wording changes on purpose,
rebuild the expected files the same way and review the diff.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from llamalab import build_report, init_lab

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEXT_FILES = ["README.md", "methods.md", "report.tex", "results.json", "tables/sentiment.md", "tables/sentiment.tex"]


def test_previous_format_records_publish_byte_for_byte(tmp_path: Path) -> None:
    lab = init_lab(tmp_path / "lab")
    for run in (FIXTURES / "records").iterdir():
        shutil.copytree(run, lab.runs_dir / run.name)
    before = {p: p.read_bytes() for p in lab.runs_dir.rglob("*") if p.is_file()}
    out = build_report(lab, "v0", split="dev")
    for name in TEXT_FILES:
        assert (out / name).read_bytes() == (FIXTURES / "report-v0" / name).read_bytes(), name
    assert {p: p.read_bytes() for p in lab.runs_dir.rglob("*") if p.is_file()} == before  # reading rewrote nothing
