"""Property tests: the cost and time per 1,000 examples read the same, correctly rounded, in every place they are
shown: `llamalab compare` as printed by the CLI, the report's Markdown table (`reports/NAME/tables/TASK.md`, as
`llamalab report` writes it) and the site's task page (`tasks/TASK/index.html`, with its sort keys).

Random labs: up to 4 systems on the sentiment test split, each a local model (timed over all its examples, or over
part of them after a resume from rows without their time), an API model with prices (its usage as recorded) or an
API model lab.yaml gives no prices; a random `local_compute_usd_per_hour` or none.

Expected values from the README's definitions, exactly (fractions) from what the records hold:
time per 1k = 1000 x predict_s / predict_examples (the examples it timed; all n where the record does not say);
local cost per 1k = that time at local_compute_usd_per_hour; API cost per 1k = the recorded list-price cost per 1k
examples (`usage.cost_per_1k_examples_usd`); "–" where unknown (no time, no rate, an API model without prices).
"""

from __future__ import annotations

import html
import re
from fractions import Fraction

import matplotlib.pyplot as plt
import numpy as np
import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.lab import find_lab
from llamalab.publish import report as report_module
from llamalab.publish.report import build_report
from llamalab.publish.site import build_site
from llamalab.runs.files import append_jsonl
from llamalab.runs.record import RunRecord
from tests.records import eval_fields

NAMES = ["alpha", "bravo", "charlie", "delta"]


def seconds_text(value: Fraction) -> str:
    """Whole seconds from 10 s, tenths below, rounded half up (the README's tables)."""
    if value >= 10:
        return f"{int((value + Fraction(1, 2)) // 1):,} s"
    tenths = int((value * 10 + Fraction(1, 2)) // 1)
    return f"{tenths // 10}.{tenths % 10} s"


def cost_text(value: Fraction, mark: str = "") -> str:
    """Dollars to 4 decimals; a non-zero cost under half a hundredth of a cent is `<$0.0001`; `~` marks a local
    estimate."""
    if 0 < value < Fraction(1, 20000):
        return f"{mark}<$0.0001"
    units = int((value * 10**4 + Fraction(1, 2)) // 1)
    return f"{mark}${units // 10**4}.{units % 10**4:04d}"


def choices(exact: Fraction, slack: Fraction, render) -> set[str]:
    return {render(exact - slack), render(exact), render(exact + slack)}


def make_lab(lab, rng):
    # only the sentiment task (and no studies): the site and report are then built in about a second
    for path in [*(lab.root / "tasks").glob("*.yaml"), *(lab.root / "studies").glob("*.yaml")]:
        if path.stem != "sentiment" or path.parent.name == "studies":
            path.unlink()
    rate = f"{rng.uniform(0.01, 9):.{int(rng.integers(1, 4))}f}" if rng.random() < 0.7 else None
    config = lab.root / "lab.yaml"
    config.write_text(re.sub(r"(?m)^local_compute_usd_per_hour:.*$", f"local_compute_usd_per_hour: {rate or 'null'}",
                             config.read_text()))
    return find_lab(lab.root), rate


def make_system(lab, rng, name: str) -> dict:
    """A finished evaluation of `name` with random time and, for an API model, random recorded usage. Returns
    what it should show: {"seconds": exact or None, "cost": (exact, mark) or None, "kind": ...}."""
    n = int(rng.integers(1, 120))
    record = RunRecord.create(lab.runs_dir, "eval", name, {"system": name}, **eval_fields(label=name, n=n))
    rows = []
    for i in range(n):
        gold = "positive" if i % 2 else "negative"
        ok = rng.random() < 0.7
        rows.append({"id": f"x:{i}", "prompt": f"Review: x{i}\nSentiment:", "gold": gold,
                     "prediction": gold if ok else ("negative" if gold == "positive" else "positive"),
                     "correct": bool(ok), "scores": {}})
    append_jsonl(record.folder / "predictions.jsonl", rows)
    expected: dict = {"kind": "local", "seconds": None, "cost": None}
    timed = None
    timed_kind = rng.random()
    if timed_kind < 0.85:  # as evaluate records it: seconds to 1/100 s, and the examples they timed
        predict_s = Fraction(int(rng.integers(1, 2 * 10**6)), 100) if rng.random() < 0.8 else \
            Fraction(int(rng.integers(1, 300)), 100)  # a fast or short run: well under a second
        timings: dict = {"predict_s": float(predict_s)}
        timed = n
        if rng.random() < 0.5:
            timed = int(rng.integers(1, n + 1))
            timings["predict_examples"] = timed
        record.update(timings=timings)
        expected["seconds"] = 1000 * predict_s / timed
    kind = rng.random()
    if kind < 0.5:
        pass  # a local model
    else:
        priced = kind < 0.85
        prices = (f"{rng.uniform(0, 20):.2f}", f"{rng.uniform(0.01, 60):.2f}") if priced else ("0", "0")
        record.update(system={**record.run.system.model_dump(), "kind": "api", "api": {
            "base_url": "http://127.0.0.1:9/v1", "model": name, "input_price_per_mtok": float(prices[0]),
            "output_price_per_mtok": float(prices[1])}})
        per_1k = Fraction(int(rng.integers(0, 10**8)), 10**6) if priced else Fraction(0)
        unmetered = int(rng.integers(1, 5)) if rng.random() < 0.2 else 0
        hits = int(rng.integers(1, n + 1)) if rng.random() < 0.4 else 0  # answers from the request cache
        record.update(usage={"input_tokens": 10 * n, "output_tokens": n, "cost_usd": float(per_1k * n / 1000),
                             "paid_now_usd": 0.0, "cost_per_1k_examples_usd": float(per_1k), "cache_hits": hits,
                             "content_filtered": unmetered, "content_filtered_unmetered": unmetered})
        if hits and timed is not None and timed + hits > n:  # timed the cache's answers too (recorded before
            expected["seconds"] = None  # the time left them out): how much of it was the API's is unknown
        expected["kind"] = "api" if priced else "unpriced"
        if priced:
            expected["cost"] = (per_1k, "≥" if unmetered else "")
    record.update(status="finished")
    return expected


def site_cells(page: str, system: str) -> tuple[list[str], list[str]]:
    """The cost and time cells of `system`'s row on a task page: (texts, data-values)."""
    rows = re.findall(r"<tr\b.*?</tr>", page, flags=re.S)
    [row] = [r for r in rows if html.escape(system, quote=False) in r and "<td" in r]
    cells = re.findall(r'<td class="r" data-value="([^"]*)">(.*?)</td>', row, flags=re.S)
    texts = [html.unescape(re.sub(r"<[^>]+>", "", t)).strip() for _, t in cells[-2:]]
    return texts, [v for v, _ in cells[-2:]]


@pytest.mark.parametrize("seed", range(12))
def test_cost_and_time_per_1k_read_the_same_correctly_rounded_everywhere(lab, tmp_path, monkeypatch, seed):
    rng = np.random.default_rng(seed)
    lab, rate = make_lab(lab, rng)
    expected = {name: make_system(lab, rng, name) for name in NAMES[: int(rng.integers(1, 5))]}
    for exp in expected.values():
        if exp["kind"] == "local" and rate is not None and exp["seconds"] is not None:
            exp["cost"] = (Fraction(rate) * exp["seconds"] / 3600, "~")

    # CLI: `llamalab compare`, wide enough that no cell folds
    out = CliRunner().invoke(app, ["compare", "--task", "sentiment", "--lab", str(lab.root)],
                             env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    cli_rows = {line.split("│")[1].strip().split(" ")[0]: [c.strip() for c in line.split("│")[1:-1]]
                for line in out.stdout.splitlines() if line.count("│") > 2}

    # the report's Markdown table (its figures are not what is tested here: not drawn, to keep this fast)
    monkeypatch.setattr(report_module.figures, "save", lambda fig, *args, **kwargs: plt.close(fig))
    folder = build_report(lab, "cost-check")
    table = (folder / "tables" / "sentiment.md").read_text()
    md_rows = {cells[0].split(" ")[0]: cells for line in table.splitlines() if line.startswith("|")
               for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}

    site = build_site(lab, tmp_path / "site")
    page = (site / "tasks" / "sentiment" / "index.html").read_text()

    any_cost = False
    for name, exp in expected.items():
        seconds = exp["seconds"]
        time_shown = {"–"} if seconds is None else choices(seconds, Fraction(1, 10**9), seconds_text)
        if exp["cost"] is None:
            cost_shown = {"–"}
        else:
            value, mark = exp["cost"]
            cost_shown = choices(value, Fraction(1, 10**10), lambda v, m=mark: cost_text(v, m))
            any_cost = True
        context = (f"seed {seed}, {name}: {exp['kind']}, rate {rate}, exact time/1k "
                   f"{None if seconds is None else float(seconds)!r}, exact cost/1k "
                   f"{None if exp['cost'] is None else float(exp['cost'][0])!r}")
        md = md_rows[name]
        assert md[-2] in cost_shown and md[-1] in time_shown, f"report {md[-2:]}; {context}"
        texts, values = site_cells(page, name)
        assert texts == md[-2:], f"site {texts} vs report {md[-2:]}; {context}"
        # the sort keys are the same numbers (so a column sorts as it reads)
        assert (values[0] == "") == (exp["cost"] is None) and (values[1] == "") == (seconds is None)
        if seconds is not None:
            key = Fraction(values[1])
            assert seconds_text(key) == md[-1] or abs(key - seconds) < Fraction(1, 10**6)
        if name in cli_rows or any_cost or seconds is not None:
            cli = cli_rows[name]
            assert cli[-2:] == md[-2:], f"CLI {cli[-2:]} vs report {md[-2:]}; {context}"
    # the cost note says the rate the local estimates use, where one is shown
    local_shown = any(exp["kind"] == "local" and exp["cost"] is not None for exp in expected.values())
    readme = (folder / "README.md").read_text()
    rate_shown = f"their wall time at ${float(rate) if rate else None}/h"  # lab.yaml's rate, as the number it is
    assert (rate_shown in table) == local_shown, table
    assert (rate_shown in " ".join(page.split())) == local_shown
    assert readme  # the report was written whole
