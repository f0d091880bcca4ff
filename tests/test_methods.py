"""methods.md states only what the records show: labs built from real runs where each usual claim is false.

Lab `unselected`: no dev runs, test subsets of different sizes, a fine-tune, the generate and loglikelihood
protocols, zero and two shots. Lab `selected`: three configurations compared on a small task's dev split, the
best one evaluated on the whole test split, and one more dev run after that.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import yaml

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.lab import Lab, init_lab
from llamalab.publish.methods import methods_paragraphs
from llamalab.publish.report import build_report
from llamalab.publish.results import TaskBoard, dev_evals, task_boards, task_evals, train_runs
from llamalab.runs.record import RunRecord, list_runs
from llamalab.training.trainer import train

SELECTION_CLAIMS = ("chosen", "selected on the dev", "checkpoint")


@pytest.fixture(scope="module")
def unselected(tmp_path_factory, tiny_model_dir) -> Lab:
    lab = init_lab(tmp_path_factory.mktemp("unselected") / "lab")
    (lab.root / "experiments" / "tiny.yaml").write_text(
        f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 2\ntrain_examples: 16\nlora: {{r: 4, alpha: 8}}\n")
    tuned = train(lab, "tiny")
    base = str(tiny_model_dir)
    for settings in (dict(system=base, task="sentiment", limit=12),
                     dict(system=tuned.id, task="sentiment", limit=12),
                     dict(system=base, task="sentiment", limit=8, protocol="generate", max_new_tokens=5, shots=2),
                     dict(system=base, task="gsm8k", limit=2, max_new_tokens=3)):
        evaluate(lab, EvalSettings(**settings))
    return lab


@pytest.fixture(scope="module")
def selected(tmp_path_factory, tiny_model_dir) -> Lab:
    lab = init_lab(tmp_path_factory.mktemp("selected") / "lab")
    _write_mini_task(lab)
    base = str(tiny_model_dir)
    configs = {"zero-shot plain": ("plain", 0), "zero-shot chat": ("chat", 0), "2-shot plain": ("plain", 2)}
    dev = {name: evaluate(lab, EvalSettings(system=base, task="mini", split="dev", format=fmt, shots=shots))
           for name, (fmt, shots) in configs.items()}
    best = max(dev, key=lambda name: dev[name].run.metrics["accuracy"].estimate)  # as `llamalab demo`
    time.sleep(1.1)  # records keep whole seconds: only a later second shows that dev finished before test began
    fmt, shots = configs[best]
    evaluate(lab, EvalSettings(system=base, task="mini", format=fmt, shots=shots))
    evaluate(lab, EvalSettings(system=base, task="mini", split="dev", format="chat", shots=2))  # after test
    return lab


def _write_mini_task(lab: Lab) -> None:
    """A two-label task small enough to evaluate on its whole test split in a blink."""
    folder = lab.root / "data" / "mini"
    folder.mkdir(parents=True)
    words = {"positive": "a fine, warm and funny film", "negative": "a dull, cold and tedious film"}
    # dev is 7 positive to 3 negative, so configurations that lean to different labels score differently on it
    for split, n, positive in (("train", 20, 10), ("dev", 10, 7), ("test", 12, 6)):
        rows = [{"text": f"{words[label]} number {i}", "label": label}
                for i in range(n) for label in ["positive" if i < positive else "negative"]]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (lab.root / "tasks" / "mini.yaml").write_text(yaml.safe_dump({
        "name": "mini",
        "data": {"files": [{"path": f"data/mini/{s}.jsonl", "split": s} for s in ("train", "dev", "test")]},
        "prompt": {"format": "plain", "template": "Review: {{ text }}\nSentiment:"},
        "answer": {"type": "label", "labels": ["negative", "positive"]},
        "metrics": ["accuracy", "macro_f1"],
    }))


def board_of(lab: Lab, task: str) -> TaskBoard:
    return next(b for b in task_boards(lab) if b.name == task)


def methods_of(lab: Lab, task: str, board: TaskBoard | None = None, **replace) -> str:
    board = board or board_of(lab, task)
    trained = {r.id: r for r in train_runs(lab)}
    dev = replace.get("dev", task_evals(lab, task))
    return "\n\n".join(methods_paragraphs(board, replace.get("trained", trained), dev))


def record_of(board: TaskBoard, **where) -> RunRecord:
    """The board's evaluation whose config.yaml has these settings."""
    matches = [e.record for e in board.entries if all(e.record.config.get(k) == v for k, v in where.items())]
    assert len(matches) == 1, where
    return matches[0]


# --- selection on dev ---------------------------------------------------------------------------------------------


def test_no_dev_runs_no_selection_claim(unselected):
    for task in ("sentiment", "gsm8k"):
        text = methods_of(unselected, task)
        assert f"the records hold no dev-split evaluation of {task}" in text
        assert not any(claim in text for claim in SELECTION_CLAIMS), text
        assert "None" not in text


def test_dev_selection_names_what_was_compared(selected):
    board = board_of(selected, "mini")
    text = methods_of(selected, "mini", board)
    scores = {f"{len(r.run.prompt.shots) or 'zero'}-shot {r.run.prompt.format}":
              r.run.metrics["accuracy"].estimate for r in dev_evals(selected, "mini")[:3]}
    assert len(set(scores.values())) > 1, "the lab must make the dev scores differ"
    listing = ", ".join(f"{name} {value:.3f}" for name, value in sorted(scores.items(), key=lambda s: (-s[1], s[0])))
    test_run = board.entries[0].record
    chosen = f"{len(test_run.run.prompt.shots) or 'zero'}-shot {test_run.run.prompt.format}"
    assert scores[chosen] == max(scores.values())
    assert (f"The prompt format and number of shots of {test_run.run.system.label} were chosen among 3 dev "
            f"evaluations on all 10 examples of the dev split (accuracy: {listing}); its test configuration, "
            f"{chosen}, scored highest") in text, text
    ties = sorted(name for name, value in scores.items() if value == scores[chosen] and name != chosen)
    assert (f"scored highest, tied with {' and '.join(ties)}." if ties else "scored highest.") in text
    assert "1 further dev evaluation(s) of it are not recorded as finished before its test evaluation began" in text
    assert "checkpoint" not in text


def test_dev_runs_that_did_not_choose_are_not_called_a_choice(selected):
    board = board_of(selected, "mini")
    test_run = board.entries[0].record
    dev = dev_evals(selected, "mini")
    same = test_run.config
    others = [r for r in dev if (r.config["format"], r.config["shots"]) != (same["format"], same["shots"])]
    label = test_run.run.system.label

    text = methods_of(selected, "mini", board, dev=others[:2])
    assert "was not among them" in text and "chosen" not in text.replace("chose none", "")
    text = methods_of(selected, "mini", board, dev=others[:1])
    assert f"{label} was evaluated on the dev split in one configuration only" in text
    assert "no alternative was compared there" in text and "chosen" not in text
    text = methods_of(selected, "mini", board, dev=[dev[-1]])  # the run made after the test evaluation
    assert "no such evaluation is recorded as finished before its test evaluation began" in text
    assert "chosen" not in text


def test_report_reads_the_dev_runs(selected):
    methods = (build_report(selected, "draft") / "methods.md").read_text()
    assert "were chosen among 3 dev evaluations" in methods


# --- which examples -----------------------------------------------------------------------------------------------


def test_limit_states_the_subset_per_system(unselected):
    board = board_of(unselected, "sentiment")
    text = methods_of(unselected, "sentiment", board)
    assert "The systems were not all evaluated on the same examples" in text
    for limit in (12, 8):
        record = next(e.record for e in board.entries if e.record.config["limit"] == limit)
        k, n = record.run.task.n, record.run.task.split_size
        assert k == limit and n > limit
        assert f"a seeded random subset of {k:,} of the {n:,} examples of the test split (limit {limit})" in text
    gsm8k = methods_of(unselected, "gsm8k")
    assert "The system was evaluated on a seeded random subset of 2 of the 1,319 examples of the test split" in gsm8k


def test_the_whole_split_is_no_subset(selected):
    text = methods_of(selected, "mini")
    assert "The system was evaluated on all 12 examples of the test split." in text
    assert "subset" not in text.split("Selection:")[0]


def test_split_size_of_older_records_comes_from_unchanged_data(unselected):
    board = board_of(unselected, "gsm8k")
    record = board.entries[0].record
    task = record.run.task.model_copy(update={"split_size": None})  # as recorded before the field existed
    record.run = record.run.model_copy(update={"task": task})
    assert "a seeded random subset of 2 of the 1,319 examples" in methods_of(unselected, "gsm8k", board)
    changed = {**task.data_sha256, "data/gsm8k/test.jsonl": "0" * 64}  # the data changed since
    record.run = record.run.model_copy(update={"task": task.model_copy(update={"data_sha256": changed})})
    text = methods_of(unselected, "gsm8k", board)
    assert "a seeded random subset of 2 examples of the test split, whose size is not recorded (limit 2)" in text


# --- scoring, prompts, intervals ----------------------------------------------------------------------------------


def test_generation_states_decoding_budget_and_parsing(unselected):
    for task, where in (("sentiment", dict(protocol="generate")), ("gsm8k", {})):
        board = board_of(unselected, task)
        scoring = record_of(board, **where).run.scoring
        text = methods_of(unselected, task, board)
        assert scoring.decoding["greedy"] is True
        assert f"greedy decoding of at most {scoring.decoding['max_new_tokens']} new tokens" in text
        assert f"parsing: {scoring.parsing}" in text
    assert "at most 5 new tokens" in methods_of(unselected, "sentiment")
    assert "at most 3 new tokens" in methods_of(unselected, "gsm8k")


def test_loglikelihood_states_normalisation_and_precision(unselected):
    board = board_of(unselected, "sentiment")
    scoring = next(e.record.run.scoring for e in board.entries
                   if e.record.run.scoring.protocol == "loglikelihood")
    text = methods_of(unselected, "sentiment", board)
    assert f"every label scored by {scoring.normalization} after the prompt (normalize: {scoring.normalize})" \
        in text
    assert f"{scoring.precision} precision" in text
    assert "normalize" not in methods_of(unselected, "gsm8k")  # generation only: no label scores


def test_shots_and_their_seed_only_where_used(unselected):
    board = board_of(unselected, "sentiment")
    shot = record_of(board, shots=2)
    name = next(row.system for row in board.rows if row.run == shot.id)
    text = methods_of(unselected, "sentiment", board)
    assert (f"plain format, 2 examples in the prompt, drawn at random from the train split with shot seed "
            f"{shot.config['shot_seed']} for {name}") in text
    gsm8k = methods_of(unselected, "gsm8k")
    assert "Prompts: chat format, zero-shot." in gsm8k and "shot seed" not in gsm8k


def test_intervals_say_the_recorded_method(unselected):
    board = board_of(unselected, "sentiment")
    methods = {row.metrics["accuracy"].method for row in board.rows}
    text = methods_of(unselected, "sentiment", board)
    for method in methods:
        assert f"95% {method}" in text
    board.rows[0].metrics["accuracy"].method = "BCa bootstrap, 999 resamples, seed 7"
    text = methods_of(unselected, "sentiment", board)
    assert f"accuracy, 95% BCa bootstrap, 999 resamples, seed 7 for {board.rows[0].system}; 95% {methods.pop()}" \
        in text


# --- training -----------------------------------------------------------------------------------------------------


def test_training_states_only_recorded_fields(unselected, tmp_path):
    (record,) = train_runs(unselected)
    config, used = record.config, record.run.data_used
    text = methods_of(unselected, "sentiment")
    for fact in (f"LoRA (rank {config['lora']['r']}, alpha {config['lora']['alpha']}",
                 f"{record.run.metrics.steps} optimizer steps (max_steps {config['max_steps']})",
                 f"{used.train_examples} training examples: a random subset of {config['train_examples']} of the "
                 f"{used.split_size:,} examples of the train split drawn with seed {config['seed']}, none skipped",
                 f"weight decay {config['weight_decay']:g}", f"{record.run.precision} precision",
                 "loss on the answer tokens only"):
        assert fact in text, fact
    assert "fell" not in text  # the loss is stated, not interpreted

    # An older record without these fields: nothing is made up in their place.
    folder = shutil.copytree(record.folder, tmp_path / record.id)
    bare = RunRecord.load(folder)
    bare.run = bare.run.model_copy(update={
        "data_used": bare.run.data_used.model_copy(update={"skipped_too_long": None}), "precision": None, "timings": {},
        "sessions": None,
    })
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    del settings["weight_decay"], settings["seed"]
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    text = methods_of(unselected, "sentiment", trained={record.id: bare})
    training = next(p for p in text.split("\n\n") if p.startswith("Fine-tuned system"))
    assert "weight decay" not in training and "skipped" not in training and "seed" not in training
    assert "precision" not in training and "Training took" not in training and "None" not in training
    assert f"{used.train_examples} training examples from the train split, loss" in training  # how many drawn: unknown
    # resumed after a session killed before it recorded its time: the time stated is the timed sessions', said so
    resumed = RunRecord.load(folder)
    epochs = resumed.run.metrics.epochs
    resumed.run = resumed.run.model_copy(update={"timings": {"train_s": 11.52, "train_epochs": epochs * 2 / 3}})
    text = methods_of(unselected, "sentiment", trained={record.id: resumed})
    training = next(p for p in text.split("\n\n") if p.startswith("Fine-tuned system"))
    assert "Training took" not in training and (
        f"Training was interrupted and resumed: the sessions that recorded their time took 12 s for "
        f"{epochs * 2 / 3:.3g} of its {epochs:.3g} epochs") in training, training


# --- every number comes from a record -------------------------------------------------------------------------------


@pytest.mark.slow  # its labs (fetched by name below) train and evaluate the tiny model
@pytest.mark.parametrize("which", ["unselected", "selected"])
def test_every_number_comes_from_a_record(which, request):
    lab = request.getfixturevalue(which)
    methods = (build_report(lab, "numbers") / "methods.md").read_text()
    records = list_runs(lab.runs_dir)
    boards = task_boards(lab)
    strings, numbers = set(), set()
    for record in records:
        _leaves(record.run.model_dump(mode="json"), strings, numbers)
        _leaves(record.config, strings, numbers)
    for board in boards:
        _leaves(board.comparison.to_json(), strings, numbers)
        numbers.add(len(board.rows))
        numbers.add(sum(e.record.run.timings["predict_s"] for e in board.entries))
    numbers.add(3)  # the number of dev configurations compared (lab `selected`)
    text = methods.replace("SHA-256", " ")
    for s in sorted(strings | {s[:12] for s in strings if re.fullmatch(r"[0-9a-f]{40,64}", s)}, key=len,
                    reverse=True):
        if len(s) >= 3 and any(c.isdigit() for c in s):
            text = text.replace(s, " ")  # run ids, paths, hashes, versions: quoted, not computed
    found = re.findall(r"(?<![\w.@-])\d[\d,]*(?:\.\d+)?(?:e-?\d+)?%?", text)
    assert found, "the methods state no numbers at all"
    for token in found:
        value, decimals = _parse(token)
        if "e" in token:  # scientific notation (an epsilon): the record's number to the digits shown
            assert any(float(f"{x:.{decimals}e}") == value for x in numbers), f"{token} is in no record:\n{methods}"
            continue
        assert any(abs(round(x, decimals) - value) < 1e-9 for x in numbers), f"{token} is in no record:\n{methods}"


def _leaves(value, strings: set[str], numbers: set[float]) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _leaves(v, strings, numbers)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, strings, numbers)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        numbers.add(value)
        numbers.add(value * 100)  # a share shown as a percentage (95%)
    elif isinstance(value, str):
        strings.add(value)


def _parse(token: str) -> tuple[float, int]:
    token = token.rstrip("%").replace(",", "")
    decimals = len(token.split(".")[1].split("e")[0]) if "." in token else 0
    return float(token), decimals


def test_a_board_where_some_records_lack_data_hashes_says_so(unselected, tmp_path):
    """One evaluation recorded before data hashes were, one after: methods says which recorded what (it raised an
    AttributeError), and a board mixing two data versions says they read different data."""
    from llamalab.lab import find_lab

    shutil.copytree(unselected.root, tmp_path / "lab")
    lab = find_lab(tmp_path / "lab")
    board = board_of(lab, "sentiment")
    first = board.entries[0].record
    first.update(task=first.run.task.model_copy(update={"data_sha256": {}}).model_dump())
    text = methods_of(lab, "sentiment")
    assert "Not every evaluation recorded the data it read: " in text and "no hashes recorded (" in text
    assert build_report(lab, "r").is_dir()


def test_a_configuration_seen_on_test_before_the_dev_runs_is_not_called_chosen(selected, tmp_path):
    """The chosen configuration evaluated on test once before the dev runs (the board shows a later evaluation of
    it): its test result was known when dev "chose" it, so methods makes no claim of a choice."""
    from llamalab.lab import find_lab

    shutil.copytree(selected.root, tmp_path / "lab")
    lab = find_lab(tmp_path / "lab")
    assert "scored highest" in methods_of(lab, "mini")  # the fixture's order: dev, then test
    shown = board_of(lab, "mini").entries[0].record
    earlier_id = shown.id[:-4] + "0000"
    shutil.copytree(shown.folder, lab.runs_dir / earlier_id)
    earlier = RunRecord.load(lab.runs_dir / earlier_id)
    earlier.update(id=earlier_id, started="2000-01-01T00:00:00.000+00:00", ended="2000-01-01T00:01:00.000+00:00")
    assert board_of(lab, "mini").entries[0].record.id == shown.id
    text = methods_of(lab, "mini")
    assert "scored highest" not in text and "chosen" not in text
    assert "no such evaluation is recorded as finished before its test evaluation began" in text


def test_a_resumed_runs_training_time_sentence_on_random_records():
    """Random timed and total epochs: the sentence says "interrupted and resumed" exactly when the timed sessions
    cover less than the run's epochs, with the two counts written apart (1.998 of 2 epochs read "2 of its 2"),
    each within rounding of the record, and the time as every table writes it."""
    import numpy as np

    from llamalab.evaluation.compare import format_seconds
    from llamalab.publish.methods import _training_cost
    from llamalab.runs.schema import TrainRun
    from tests.records import train_fields

    rng = np.random.default_rng(29)
    for _ in range(300):
        epochs = float(rng.choice([1.0, 2.0, 3.0, float(rng.uniform(0.1, 50))]))
        timed = float(rng.choice([epochs, epochs * rng.uniform(0.001, 1.0), epochs - rng.uniform(0, 0.01)]))
        train_s = float(rng.uniform(0.05, 5000))
        run = TrainRun.model_validate({
            "id": "r", "name": "x", "kind": "train", "started": "2026-11-29T00:00:00+00:00", "config_hash": "h",
            **train_fields(),
            "metrics": {"first_loss": 2.0, "final_loss": 1.0, "steps": 4, "epochs": epochs},
            "timings": {"train_s": train_s, "train_epochs": timed}})
        text = _training_cost(run)
        resumed = timed < epochs - 1e-3
        assert text.startswith(" Training was interrupted and resumed" if resumed else " Training took"), text
        assert f"took {format_seconds(train_s)}" in text
        if resumed:
            part, whole = text.split(" for ")[1].split(" epochs")[0].split(" of its ")
            assert part != whole
            assert abs(float(part) - timed) / timed <= 5e-3 and abs(float(whole) - epochs) / epochs <= 5e-3


@pytest.mark.parametrize("seed", range(4))
def test_precision_and_checkpointing_per_session_on_random_resumed_runs(seed):
    """Random sessions (each resumed from a checkpoint, on a machine that may compute otherwise): every step the
    run kept is described by the precision and the checkpointing of the session that trained it, and a run whose
    sessions agree reads as one that ran once."""
    import random

    from llamalab.publish.methods import _computed
    from llamalab.runs.schema import TrainRun
    from tests.records import train_fields

    rng = random.Random(seed)
    for _ in range(200):
        last = rng.randint(1, 60)
        starts = sorted({0, *rng.sample(range(1, last), min(last - 1, rng.randint(0, 4)))})
        sessions = [{"from_step": start, "precision": rng.choice(["bfloat16 autocast", "float32"]),
                     "activation_checkpointing": rng.random() < 0.4, "device": "cpu"} for start in starts]
        run = TrainRun.model_validate({
            "id": "r", "name": "x", "kind": "train", "started": "2026-11-30T00:00:00+00:00", "config_hash": "h",
            **train_fields(), "metrics": {"first_loss": 2.0, "final_loss": 1.0, "steps": last, "epochs": 1.0},
            "sessions": sessions, "precision": sessions[-1]["precision"],
            "memory": {"device": "cpu", "predicted_mb": 1.0, "reason": "r",
                       "activation_checkpointing": sessions[-1]["activation_checkpointing"]}})

        def session_of(step: int, sessions: list[dict] = sessions) -> dict:
            return [s for s in sessions if s["from_step"] < step][-1]

        def steps_named(text: str) -> set[int]:
            named: set[int] = set()
            for first, end in re.findall(r"steps? (\d+)(?:-(\d+))?", text):
                named |= set(range(int(first), int(end or first) + 1))
            return named

        clauses = _computed(run)
        precision, *rest = clauses
        kinds = {session_of(step)["precision"] for step in range(1, last + 1)}
        if len(kinds) == 1:
            assert precision == f"{kinds.pop()} precision", (sessions, last, clauses)
        else:
            parts = precision.split(" and ")
            assert sorted(step for part in parts for step in steps_named(part)) == list(range(1, last + 1))
            for part in parts:
                value = part.split(" precision for ")[0]
                assert all(session_of(step)["precision"] == value for step in steps_named(part)), (sessions, part)
        on = {step for step in range(1, last + 1) if session_of(step)["activation_checkpointing"]}
        if not on:
            assert rest == []
        elif on == set(range(1, last + 1)):
            assert rest == ["activation checkpointing"]
        else:
            [sentence] = rest
            assert sentence.startswith("activation checkpointing for ") and steps_named(sentence) == on


def test_the_quantized_weights_sentence_on_random_mixes_of_systems():
    """Random boards of exports (of runs, of base models, from before schema 9 by their file name), plain
    fine-tuned runs and base models: each export is named once, with its run (or file) and its type; no other
    system is called quantized, and with no export there is no sentence."""
    import random
    from types import SimpleNamespace

    from llamalab.publish.methods import _quantized
    from llamalab.runs.schema import EvalRun
    from tests.records import eval_fields

    rng = random.Random(31)
    for _ in range(200):
        evals, expected = [], {}
        for i in range(rng.randint(1, 6)):
            kind = rng.choice(["run export", "base export", "legacy export", "run", "base"])
            quant = rng.choice(["f16", "q8_0", "q4_k_m"])
            run_id = f"2026-11-29-x-{i:04x}"
            model = f"runs/.gguf/m-{i}-0123abc{i}-{quant}.gguf" if "export" in kind else f"org/model-{i}"
            fields = eval_fields(label=f"s{i}", model=model, backend="llama.cpp" if "export" in kind else "hf",
                                 kind="finetuned" if kind.startswith("run") else "base",
                                 train_run=run_id if kind.startswith("run") else None)
            if kind in ("run export", "base export"):
                fields["system"]["quantized"] = quant
            run = EvalRun.model_validate({"id": f"e{i}", "name": "e", "kind": "eval", "config_hash": "h",
                                          "started": "2026-11-29T00:00:00+00:00", **fields})
            evals.append(SimpleNamespace(name=f"s{i}", run=run))
            if "export" in kind:
                what = f"fine-tuned run {run_id}'s weights" if kind == "run export" else f"the model file {model}"
                expected[f"s{i}"] = f"s{i} is {what} at GGUF type {quant}, run by the llama.cpp backend"
        text = _quantized(evals)
        if not expected:
            assert text == ""
            continue
        assert text.startswith("Quantized weights") and text.endswith(".")
        parts = text.split(": ", 1)[1].removesuffix(".").split("; ")
        assert parts == list(expected.values()), (text, expected)
