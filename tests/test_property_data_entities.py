"""`llamalab data check` on random entity tasks: the gold entities per type and split (types compared as scoring
reads them: case and surrounding spaces aside), the rows whose answer is no entity list (bad rows, by line), and
the printed "entity types" column, are the ones counted here from the rows as written."""

from __future__ import annotations

import json
import re
import textwrap
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import load_task
from tests.data_probe import SPLIT_NAMES, use_char_tokenizer, write_split

TYPES = ["person", "location", "group", "product", "corporation", "creative-work"]


def _setup(lab, seed: int):
    rng = np.random.default_rng(seed)
    types = list(rng.choice(TYPES, int(rng.integers(1, len(TYPES) + 1)), replace=False))
    rows, entries = {}, []
    for split in [s for s in SPLIT_NAMES if rng.random() < 0.85] or ["train"]:
        rows[split] = []  # (line, kind, [types as counted])
        lines = []
        for number in range(1, int(rng.choice([0, 1, int(rng.integers(2, 20))], p=[0.1, 0.15, 0.75])) + 1):
            kind = "bad" if rng.random() < 0.1 else "good"
            text = " ".join(rng.choice(["ada", "went", "to", "paris", "with", "acme"], int(rng.integers(1, 6))))
            if kind == "bad":
                answer = [[{"type": "person"}], "Ada", {"people": []}, [["person", "Ada"]]][int(rng.integers(4))]
                kinds = []
            else:
                kinds = [str(rng.choice(types)) for _ in range(int(rng.choice([0, 1, 2, 5])))]
                written = [str(rng.choice([k, k.upper(), f" {k.title()} "])) for k in kinds]
                answer = [{"type": w, "text": str(rng.choice(["Ada", "Paris", "ACME  co"]))} for w in written]
            lines.append(json.dumps({"text": text, "entities": answer}))
            rows[split].append((number, kind, kinds))
        entries.append(write_split(lab.root, split, "".join(line + "\n" for line in lines)))
    (lab.root / "tasks" / "probe.yaml").write_text(textwrap.dedent(f"""\
        name: probe
        data:
          files: [{', '.join(entries)}]
          answer_field: entities
        prompt: {{template: "{{{{ text }}}}", format: plain}}
        answer: {{type: entities}}
        """))
    return load_task(lab.task_path("probe"), lab.root), rows


def _expected(rows: dict) -> tuple[dict, dict, list[str]]:
    counts = {split: sum(kind == "good" for _, kind, _ in r) for split, r in rows.items()}
    types = {split: dict(sorted(Counter(k for _, kind, ks in r if kind == "good" for k in ks).items()))
             for split, r in rows.items()}
    bad = [f"data/p/{split}.jsonl:{n}" for split, r in rows.items() for n, kind, _ in r if kind == "bad"]
    return counts, types, bad


@pytest.mark.parametrize("seed", range(40))
def test_entity_types_per_split(lab, seed):
    task, rows = _setup(lab, seed)
    report = check_task_data(load_task_data(task, strict=False), task)
    counts, types, bad = _expected(rows)
    assert report.counts == counts
    assert report.entity_types == types
    assert report.label_balance == {}
    named = [e.split(": ", 1)[0] for e in report.errors if "is not a JSON list of entities" in e]
    assert named == bad


@pytest.mark.parametrize("seed", range(25))
def test_printed_entity_types_are_the_reports(lab, seed, monkeypatch):
    task, rows = _setup(lab, seed)
    use_char_tokenizer(monkeypatch)
    counts, types, _ = _expected(rows)
    result = CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root)])
    table = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in SPLIT_NAMES:
            table[cells[0]] = cells
    assert list(table) == list(rows)
    for split, cells in table.items():
        assert int(cells[1]) == counts[split]
        want = types[split]
        if len(want) > 4:
            lo, hi = min(want.values()), max(want.values())
            many = re.fullmatch(r"(\d+) types, (?:(\d+) each|fewest (\S+) (\d+), most (\S+) (\d+))", cells[4])
            assert many, cells[4]
            n, each, fewest, low, most, high = many.groups()
            assert int(n) == len(want)
            if lo == hi:
                assert int(each) == lo
            else:
                assert (int(low), int(high)) == (lo, hi) and want[fewest] == lo and want[most] == hi
        else:
            shown = {k: int(v) for k, v in (p.rsplit(" ", 1) for p in cells[4].split(", "))} if cells[4] else {}
            assert shown == want
