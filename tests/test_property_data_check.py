"""`llamalab data check` and the site's data card over random small datasets: every number they show (examples
per split, label counts, duplicates, leakage between splits, bad rows and the lines they name, empty splits) is
the one counted here, independently, from the rows the test wrote; the printed table, the JSON and the card's
HTML say the same numbers as the returned report."""

from __future__ import annotations

import html
import json
import re
import textwrap
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from llamalab.cli import app
from llamalab.publish.site import _Builder, data_card
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.task import load_task
from tests.data_probe import SPLIT_NAMES, use_char_tokenizer, write_split

WORDS = ["apple", "river", "stone", "cloud", "ember", "maple", "quartz", "violet", "delta", "harbor"]
LABEL_POOL = ["neg", "pos", "mixed", "odd", "even", "up", "down", "left"]


def _variant(rng: np.random.Generator, base: str) -> str:
    """The same text as written differently: case, spacing, punctuation at the edges (normalisation undoes these)."""
    words = base.split()
    case = rng.integers(3)
    words = [w.upper() if case == 1 else w.title() if case == 2 else w for w in words]
    text = (" " * int(rng.integers(1, 3))).join(words)
    if rng.random() < 0.4:
        text += str(rng.choice(["!", ".", "?", "!!", "..."]))
    if rng.random() < 0.2:
        text = "  " + text + " "
    return text


def _dataset(rng: np.random.Generator, labels: list[str]) -> dict:
    """Random JSONL lines per split, with what each line should become (an example, a bad row, nothing)."""
    pool = [" ".join(rng.choice(WORDS, int(rng.integers(1, 5)))) for _ in range(int(rng.integers(1, 10)))]
    present = [s for s in SPLIT_NAMES if rng.random() < 0.85] or ["train"]
    files = {}
    bad_rate = float(rng.choice([0, 0, 0.1, 0.3]))
    for split in present:
        size = int(rng.choice([0, 1, int(rng.integers(2, 14))], p=[0.1, 0.15, 0.75]))
        lines, rows = [], []  # rows: (line, kind, key, answer)
        for number in range(1, size + 1):
            kind = "blank" if rng.random() < 0.05 else "good" if rng.random() >= bad_rate else str(
                rng.choice(["no_text", "no_label", "unseen", "malformed"]))
            key = str(rng.choice(pool))
            label = str(rng.choice(labels))
            if kind == "good":
                written = f" {label} " if rng.random() < 0.1 else label  # a label with spaces around is the label
                lines.append(json.dumps({"text": _variant(rng, key), "label": written}))
            elif kind == "blank":
                lines.append(" " * int(rng.integers(3)))
            elif kind == "no_text":
                lines.append(json.dumps({"text": str(rng.choice(["", "   "])), "label": label}))
            elif kind == "no_label":
                lines.append(json.dumps({"text": key, "label": rng.choice(["", "  ", None])}))
            elif kind == "unseen":
                lines.append(json.dumps({"text": key, "label": "zz" + label}))
            else:
                lines.append('{"text": "' + key + '", "label": ')
            rows.append((number, kind, key, label))
        files[split] = (lines, rows)
    return files


def _write(lab, files: dict, labels: list[str]) -> None:
    entries = []
    for split, (lines, _) in files.items():
        entries.append(write_split(lab.root, split, "".join(line + "\n" for line in lines)))
    (lab.root / "tasks" / "probe.yaml").write_text(textwrap.dedent(f"""\
        name: probe
        data:
          files: [{', '.join(entries)}]
        prompt: {{template: "{{{{ text }}}}"}}
        answer: {{labels: [{', '.join(labels)}]}}
        """))


def _expected(files: dict, labels: list[str]) -> dict:
    """What the check must report, counted from the rows as written."""
    counts, balance, errors, warnings, overlap = {}, {}, [], [], {}
    groups = {}  # split -> key -> [(source, answer)] in file order
    for split, (_, rows) in files.items():
        path = f"data/p/{split}.jsonl"
        good = [(f"{path}:{n}", key, label) for n, kind, key, label in rows if kind == "good"]
        counts[split] = len(good)
        tally = Counter(label for _, _, label in good)
        balance[split] = {label: tally[label] for label in labels}
        missing = [label for label in labels if not tally[label]]
        if missing and split != "train":
            warnings.append(f"{split}: no examples of {len(missing)} label(s): {', '.join(missing[:5])}")
        for n, kind, _, label in rows:
            if kind == "no_text":
                errors.append(f"{path}:{n}: missing or empty field(s): text")
            elif kind == "no_label":
                errors.append(f"{path}:{n}: missing answer field 'label'")
            elif kind == "unseen":
                shown = ", ".join(repr(x) for x in sorted(labels))
                errors.append(f"{path}:{n}: label {'zz' + label!r} is not in the task's label set ({shown}): add "
                              "it to answer.labels, or fix the row")
            elif kind == "malformed":
                errors.append(f"{path}:{n}: malformed JSON")  # the parser words the rest
        groups[split] = {}
        for source, key, label in good:
            groups[split].setdefault(key, []).append((source, label))
    for split in SPLIT_NAMES:
        if split in files and not counts[split]:
            bad = sum(1 for _, kind, _, _ in files[split][1] if kind not in ("good", "blank"))
            why = f"({bad} bad row(s), listed above)" if bad else "(no rows at all)"
            errors.append(f"split {split!r} is empty: no usable row in data/p/{split}.jsonl {why}")
    for split, by_key in groups.items():
        repeated = {k: v for k, v in by_key.items() if len(v) > 1}
        if repeated:
            extra = sum(len(v) - 1 for v in repeated.values())
            conflicting = sum(1 for v in repeated.values() if len({a for _, a in v}) > 1)
            first = next(iter(repeated.values()))
            warnings.append(f"{split}: {extra} exact duplicate(s) after normalisation ({conflicting} with "
                            f"conflicting answers), e.g. {', '.join(s for s, _ in first[:3])}")
    for seen_in, held_out in (("train", "dev"), ("train", "test"), ("dev", "test")):
        if groups.get(seen_in) and groups.get(held_out):
            shared = [k for k in groups[held_out] if k in groups[seen_in]]
            if seen_in == "train":
                overlap[held_out] = len(shared)
            if shared:
                why = "leakage" if seen_in == "train" else "a choice made on dev has seen them"
                warnings.append(f"{seen_in}/{held_out} overlap: {len(shared)} {held_out} text(s) also appear in "
                                f"{seen_in} ({why}), e.g. {groups[held_out][shared[0]][0][0]} = "
                                f"{groups[seen_in][shared[0]][0][0]}")
    return {"counts": counts, "label_balance": balance, "errors": errors, "warnings": warnings, "overlap": overlap}


def _same_errors(shown: list[str], expected: list[str]) -> None:
    assert len(shown) == len(expected), (shown, expected)
    for got, want in zip(shown, expected, strict=True):
        if want.endswith(": malformed JSON"):  # the JSON parser words the rest
            assert got.startswith(want + " ("), (got, want)
        else:
            assert got == want


def _setup(lab, seed: int):
    rng = np.random.default_rng(seed)
    labels = [str(x) for x in rng.choice(LABEL_POOL, int(rng.integers(2, 8)), replace=False)]
    files = _dataset(rng, labels)
    _write(lab, files, labels)
    task = load_task(lab.task_path("probe"), lab.root)
    return task, files, labels


@pytest.mark.parametrize("seed", range(60))
def test_check_counts_labels_duplicates_leakage_and_bad_rows(lab, seed):
    task, files, labels = _setup(lab, seed)
    report = check_task_data(load_task_data(task, strict=False), task)
    want = _expected(files, labels)
    assert report.counts == want["counts"]
    assert list(report.counts) == list(files)  # splits in the order the task lists their files
    assert report.label_balance == want["label_balance"]
    for split, balance in report.label_balance.items():
        assert sum(balance.values()) == report.counts[split]  # every example has one of the task's labels
    assert report.overlap == want["overlap"]
    _same_errors(report.errors, want["errors"])
    assert sorted(report.warnings) == sorted(want["warnings"])
    assert report.ok == (not want["errors"])


def _table(stdout: str) -> dict[str, list[str]]:
    """The rows of the printed table, by split: its cells as printed."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in SPLIT_NAMES:
            rows[cells[0]] = cells
    return rows


def _parse_spread(cell: str, labels: list[str]) -> dict | tuple:
    many = re.fullmatch(r"(\d+) labels, (?:(\d+) each|fewest (\S+) (\d+), most (\S+) (\d+))", cell)
    if many:
        return tuple(many.groups())
    return {name: int(n) for name, n in (part.rsplit(" ", 1) for part in cell.split(", "))} if cell else {}


@pytest.mark.parametrize("seed", range(40))
def test_printed_check_and_json_say_the_reports_numbers(lab, seed, monkeypatch):
    task, files, labels = _setup(lab, seed)
    use_char_tokenizer(monkeypatch)
    want = _expected(files, labels)
    result = CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root), "--json"])
    assert result.exit_code == (1 if want["errors"] else 0), result.output
    shown = json.loads(result.stdout)
    assert shown["counts"] == want["counts"] and shown["label_balance"] == want["label_balance"]
    assert shown["overlap"] == want["overlap"] and shown["ok"] == (not want["errors"])
    _same_errors(shown["errors"], want["errors"])
    assert sorted(shown["warnings"]) == sorted(want["warnings"])

    result = CliRunner().invoke(app, ["data", "check", "probe", "--lab", str(lab.root)])
    assert result.exit_code == (1 if want["errors"] else 0)
    table = _table(result.stdout)
    assert list(table) == list(want["counts"])
    for split, cells in table.items():
        assert int(cells[1].replace(",", "")) == want["counts"][split]
        balance = want["label_balance"][split]
        spread = _parse_spread(cells[4], labels)
        if len(balance) > 4:
            low, high = min(balance.values()), max(balance.values())
            if low == high:
                assert spread[:2] == (str(len(balance)), str(low)), cells[4]
            else:
                n, _, fewest, lo, most, hi = spread
                assert (int(n), int(lo), int(hi)) == (len(balance), low, high), cells[4]
                assert balance[fewest] == low and balance[most] == high, cells[4]
        else:
            assert spread == balance, cells[4]
    text = " ".join(result.stdout.split())
    for line in want["warnings"]:
        assert f"warning {' '.join(line.split())}" in text
    for line in shown["errors"]:
        assert f"error {' '.join(line.split())}" in text
    assert text.endswith(f"{len(want['errors'])} error(s)" if want["errors"] else "data ok")


def _card_html(lab, task) -> str:
    builder = _Builder(lab, lab.root / "_site")
    builder.nav, builder.run_ids = [], set()
    builder.page("tasks/probe/index.html", "task.html", "Task: probe", task=task, board=None, studies=[],
                 card=data_card(lab, task), figures=[], earlier=[])
    page = (lab.root / "_site" / "tasks" / "probe" / "index.html").read_text()
    return page[page.index('id="data-card"'):]


@pytest.mark.parametrize("seed", range(30))
def test_data_card_shows_the_checks_numbers(lab, seed):
    task, files, labels = _setup(lab, seed)
    want = _expected(files, labels)
    card = data_card(lab, task)
    assert card["counts"] == want["counts"] and card["balance"] == want["label_balance"]
    assert card["overlap"] == want["overlap"]
    _same_errors(card["errors"], want["errors"])
    assert sorted(card["warnings"]) == sorted(want["warnings"])

    page = _card_html(lab, task)
    examples = re.search(r"<dt>Examples</dt><dd>(.*?)</dd>", page, re.S).group(1)
    shown = {name: int(n.replace(",", "")) for name, n in re.findall(r"(\w+) ([\d,]+)", examples)}
    assert shown == want["counts"]
    leakage = html.unescape(re.sub(r"<[^>]+>", "", re.search(r"<dt>Leakage check</dt>\s*<dd>(.*?)</dd>", page,
                                                             re.S).group(1)))
    said = {}
    for part in leakage.split("; "):
        if m := re.fullmatch(r"no (\w+) text appears in train", part.strip()):
            said[m.group(1)] = 0
        elif m := re.fullmatch(r"([\d,]+) (\w+) text\(s\) also appear in train", part.strip()):
            said[m.group(2)] = int(m.group(1).replace(",", ""))
        else:
            assert part.strip() == "no held-out split to check" and not want["overlap"], leakage
    assert said == want["overlap"]
    if want["label_balance"]:
        table = page[page.index("<table class=\"balance\">"):page.index("</table>")]
        splits = re.findall(r'<th scope="col" class="r">(\w+)</th>', table)
        assert splits == list(want["label_balance"])
        for label, cells in re.findall(r'<tr><th scope="row">(\w+)</th>(.*?)</tr>', table):
            numbers = re.findall(r'<td class="r">(\d+) <meter min="0" max="(\d+)" value="(\d+)"', cells)
            assert [(int(a), int(m), int(v)) for a, m, v in numbers] == [
                (want["label_balance"][s][label], want["counts"][s], want["label_balance"][s][label]) for s in splits]
        assert re.findall(r'<th scope="row">(\w+)</th>', table) == labels
    notes = [html.unescape(n) for n in re.findall(r"<li(?: class=\"bad\")?>(.*?)</li>", page, re.S)]
    assert len(notes) == len(want["errors"]) + len(want["warnings"])
    _same_errors(notes[: len(want["errors"])], want["errors"])
    assert sorted(notes[len(want["errors"]):]) == sorted(want["warnings"])
