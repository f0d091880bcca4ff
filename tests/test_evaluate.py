"""The evaluation loop on the tiny model: every task type, resume after kill -9, and bad input."""

from __future__ import annotations

import json

import pytest

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import compare
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.runs.files import read_jsonl
from llamalab.runs.record import list_runs
from tests.killing import eval_killed_after


def rows_of(record) -> list[dict]:
    return read_jsonl(record.folder / "predictions.jsonl")


@pytest.mark.parametrize(("task", "metrics", "row_fields"), [
    ("gsm8k", {"exact_match"}, {"generation", "prediction", "gold_number", "correct"}),
    ("wnut17", {"entity_f1", "entity_precision", "entity_recall"}, {"generation", "valid_json", "tp", "fp", "fn"}),
    ("scitldr", {"rouge1", "rouge2", "rougeL", "exact_match"}, {"generation", "rouge1", "rougeL", "correct"}),
])
def test_generation_tasks(lab, tiny_model_dir, task, metrics, row_fields):
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task=task, limit=6, max_new_tokens=6))
    assert record.run.status == "finished"
    assert record.run.scoring.protocol == "generate"
    assert set(record.run.metrics) == metrics
    for m in record.run.metrics.values():
        assert m.low <= m.estimate <= m.high and m.n == 6
    rows = rows_of(record)
    assert len(rows) == 6 and row_fields <= set(rows[0])


def test_gold_numbers_come_from_the_worked_solution(lab, tiny_model_dir):
    record = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="gsm8k", limit=3, max_new_tokens=2))
    for row in rows_of(record):
        assert row["gold"].rstrip().endswith(f"#### {row['gold_number']}")


def test_wrong_protocol_for_the_task_is_refused(lab, tiny_model_dir):
    with pytest.raises(LlamalabError, match="has number answers: use --protocol generate"):
        evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="gsm8k", protocol="loglikelihood"))
    assert list_runs(lab.runs_dir) == []


def test_resume_after_kill_continues_at_the_next_example(lab, tiny_model_dir):
    settings = {"system": str(tiny_model_dir), "task": "sentiment", "limit": 20, "batch_size": 4}
    clean = evaluate(lab, EvalSettings(**settings))
    killed = eval_killed_after(lab.root, 3, settings)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    [interrupted] = [r for r in list_runs(lab.runs_dir, "eval") if r.run.status == "running"]
    assert len(rows_of(interrupted)) == 12  # three batches of four were saved before the kill
    with (interrupted.folder / "predictions.jsonl").open("a") as handle:
        handle.write('{"id": "half a line')  # as if the kill had landed mid-write

    resumed = evaluate(lab, EvalSettings(**settings), resume=True)
    assert resumed.id == interrupted.id and resumed.run.status == "finished"
    rows = rows_of(resumed)
    assert len(rows) == 20 and len({r["id"] for r in rows}) == 20
    clean_rows = {r["id"]: r for r in rows_of(clean)}
    for row in rows:
        assert row["prediction"] == clean_rows[row["id"]]["prediction"]
        assert row["scores"] == pytest.approx(clean_rows[row["id"]]["scores"], abs=1e-4)
    assert resumed.run.metrics == clean.run.metrics
    # Each saved row keeps its share of its batch's time, so the killed session's 12 examples (the longest: batches
    # go longest first) count: timed by the resumed session's 8 short ones alone, the run looked fast.
    from llamalab.evaluation.compare import cost_and_time
    from llamalab.publish.methods import methods_paragraphs
    from llamalab.publish.results import task_boards

    timings, first = resumed.run.timings, {}
    for row in rows:
        first.setdefault(row["id"], row)
    killed_s = sum(r["seconds"] for r in rows_of(interrupted)[:12])
    assert killed_s > 0 and timings["predict_examples"] == 20 and clean.run.timings["predict_examples"] == 20
    assert timings["predict_s"] == pytest.approx(sum(r["seconds"] for r in first.values()), abs=0.01)
    assert timings["predict_s"] >= killed_s - 0.01
    assert cost_and_time(resumed)["seconds_per_1k"] == 1000 * timings["predict_s"] / 20
    [board] = [b for b in task_boards(lab) if b.name == "sentiment"]
    assert "interrupted" not in " ".join(methods_paragraphs(board, {}))
    with pytest.raises(LlamalabError, match="no unfinished evaluation"):
        evaluate(lab, EvalSettings(**settings), resume=True)
    # the way to resume with the settings it had is said as `llamalab eval`'s options (it said train's key=value)
    assert eval_killed_after(lab.root, 1, settings).returncode == -9
    with pytest.raises(LlamalabError, match=r"resume with the same settings, e.g. `... --resume --limit 20`"):
        evaluate(lab, EvalSettings(**{**settings, "limit": 10}), resume=True)
    # ...but a smaller batch (what a run killed for memory needs) continues it: the batch size changes no number
    smaller = evaluate(lab, EvalSettings(**{**settings, "batch_size": 2}), resume=True)
    assert smaller.run.status == "finished" and len(rows_of(smaller)) == 20
    assert {r["id"]: r["prediction"] for r in rows_of(smaller)} == {i: r["prediction"] for i, r in clean_rows.items()}


def test_an_evaluation_killed_after_its_last_batch_was_saved_resumes(lab, tiny_model_dir):
    """Killed while writing its record (every prediction saved): `--resume` crashed in the backend on no examples
    and marked the run failed, for good; it finishes now, with the time of its rows and its recorded rates."""
    settings = {"system": str(tiny_model_dir), "task": "sentiment", "limit": 8, "batch_size": 4}
    done = evaluate(lab, EvalSettings(**settings))
    run = json.loads((done.folder / "run.json").read_text())
    run.update(status="running", pid=2**22 + 7, ended=None)  # no such process
    (done.folder / "run.json").write_text(json.dumps(run))
    resumed = evaluate(lab, EvalSettings(**settings), resume=True)
    assert resumed.id == done.id and resumed.run.status == "finished"
    assert resumed.run.metrics == done.run.metrics and resumed.run.throughput == done.run.throughput
    assert resumed.run.timings["predict_examples"] == 8
    assert resumed.run.timings["predict_s"] == pytest.approx(done.run.timings["predict_s"], abs=0.01)


def test_compare_generation_systems_with_paired_bootstrap(lab, tiny_model_dir):
    for fmt in ("plain", "chat"):
        evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="wnut17", limit=8, max_new_tokens=4, format=fmt))
    result = compare(lab, "wnut17")
    assert result.metric == "entity_f1"
    assert len(result.systems) == 2
    assert result.systems[1].vs_reference.test == "paired bootstrap (entity_f1)"
    json.dumps(result.to_json())  # --json output must serialise


def test_api_bad_input_fails_fast_and_clearly(lab, monkeypatch, tmp_path):
    import time

    import yaml

    from llamalab.lab import find_lab
    from tests.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    config = yaml.safe_load((lab.root / "lab.yaml").read_text())
    config["api_models"] = {"remote": {"base_url": url, "model": "m", "api_key_env": "LLAMALAB_NO_SUCH_KEY"}}
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    api_lab = find_lab(lab.root)
    monkeypatch.setenv("LLAMALAB_API_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.delenv("LLAMALAB_NO_SUCH_KEY", raising=False)
    with pytest.raises(LlamalabError, match="set LLAMALAB_NO_SUCH_KEY in the environment"):
        evaluate(api_lab, EvalSettings(system="remote", task="sentiment", limit=4))
    assert list_runs(lab.runs_dir) == []  # nothing half-written

    monkeypatch.setenv("LLAMALAB_NO_SUCH_KEY", "sk-test")
    started = time.monotonic()
    with pytest.raises(LlamalabError, match=f"cannot reach {url}"):
        evaluate(api_lab, EvalSettings(system="remote", task="sentiment", limit=4))
    assert time.monotonic() - started < 10
    with pytest.raises(LlamalabError, match="chat API without log-likelihoods"):
        evaluate(api_lab, EvalSettings(system="remote", task="sentiment", protocol="loglikelihood"))
    # an API model runs on its API whatever the backend setting: it was recorded as the backend asked for (and so
    # split the settings hash, and reuse missed the run)
    from llamalab.evaluation.evaluate import load_system, settings_hashes
    from llamalab.tasks.task import load_task

    spec = load_task(api_lab.task_path("sentiment"), api_lab.root)
    assert settings_hashes(api_lab, spec, "remote", backend="vllm")[0] == settings_hashes(api_lab, spec, "remote")[0]
    with load_system(api_lab, "remote", backend="llama.cpp") as loaded:
        assert loaded.backend_name == "api"


def test_unknown_backend_on_the_command_line(lab):
    from typer.testing import CliRunner

    from llamalab.cli import app

    result = CliRunner().invoke(app, ["eval", "smollm2-135m-instruct", "--task", "sentiment", "--backend", "onnx",
                                      "--lab", str(lab.root)])
    assert isinstance(result.exception, LlamalabError)
    said = str(result.exception)
    assert "command line: --backend: " in said and "'hf', 'llama.cpp' or 'vllm'" in said  # the option, as typed


def test_a_model_giving_nan_log_probabilities_is_an_error_not_the_first_labels_share(lab, tiny_model_dir, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-llama"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LlamalabError, match=r"example .*: the model's log-probability of .* is NaN"):
        evaluate(lab, EvalSettings(system=str(broken), task="sentiment", limit=4))
    (run,) = list_runs(lab.runs_dir, "eval")
    assert run.run.status == "failed" and "NaN" in run.run.error


def test_a_bfloat16_evaluation_records_how_many_close_calls_it_rescored_in_float32(lab, tiny_model_dir):
    """The tiny random model's labels are all within 0.5 nats of each other: every example is scored twice, and
    the record says so (its examples/s is not bfloat16's alone)."""
    bf16 = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sentiment", limit=6, precision="bfloat16"))
    assert bf16.run.throughput["rechecked_float32"] == 6
    fp32 = evaluate(lab, EvalSettings(system=str(tiny_model_dir), task="sentiment", limit=6))
    assert "rechecked_float32" not in fp32.run.throughput
    assert [r["prediction"] for r in rows_of(bf16)] == [r["prediction"] for r in rows_of(fp32)]


@pytest.mark.parametrize("seed", range(20))
def test_api_latency_per_1k_examples_is_over_the_requests_sent(seed):
    """Cache hits took no time: counting them would make an API look faster the more of an eval was cached."""
    import random

    from llamalab.evaluation.evaluate import _usage

    rng = random.Random(seed)
    rows = [{"cost_usd": rng.uniform(0, 1e-3), "input_tokens": 5, "output_tokens": 2,
             "latency_s": rng.uniform(0.1, 3), "cached": rng.random() < 0.7} for _ in range(rng.randint(1, 60))]
    sent = [r["latency_s"] for r in rows if not r["cached"]]
    usage = _usage(rows)
    if not sent:
        assert usage["latency_s_per_1k_examples"] is None
        return
    assert usage["latency_s_per_1k_examples"] == pytest.approx(1000 * sum(sent) / len(sent), abs=0.006)
    assert usage["cache_hits"] == len(rows) - len(sent)


def test_reuse_continues_a_killed_evaluation_instead_of_starting_over(lab, tiny_model_dir):
    """What studies call (`evaluate(reuse=True)`): a killed evaluation of the same settings is continued (its
    saved predictions kept), as `train(reuse=True)` continues a killed training; it started over before."""
    settings = {"system": str(tiny_model_dir), "task": "sentiment", "limit": 12, "batch_size": 4}
    assert eval_killed_after(lab.root, 2, settings).returncode == -9
    [killed] = list_runs(lab.runs_dir, "eval")
    kept = {r["id"]: r["prediction"] for r in rows_of(killed)}
    assert len(kept) == 8
    # rows as llamalab wrote them before rows carried their time: the time is the sessions' that ended (4 examples)
    (killed.folder / "predictions.jsonl").write_text("".join(
        json.dumps({k: v for k, v in r.items() if k != "seconds"}) + "\n" for r in rows_of(killed)))
    options = {k: v for k, v in settings.items() if k != "system"}
    other = evaluate(lab, str(tiny_model_dir), **{**options, "limit": 4}, reuse=True)  # other settings: its own
    assert other.id != killed.id
    resumed = evaluate(lab, str(tiny_model_dir), **options, reuse=True)
    assert resumed.id == killed.id and resumed.run.status == "finished" and len(resumed.run.resumed) == 1
    assert {r["id"]: r["prediction"] for r in rows_of(resumed)}.items() >= kept.items()
    assert len(rows_of(resumed)) == 12 and resumed.run.timings["predict_examples"] == 4
    assert evaluate(lab, str(tiny_model_dir), **options, reuse=True).id == killed.id  # and then reused


def test_reuse_and_resume_never_take_a_run_of_other_weights_or_data(lab, tiny_model_dir, tmp_path):
    """A model folder rewritten in place, or task data edited, keeps every setting (so the settings hash) the
    same: a study's `reuse` must evaluate again, and `--resume` must refuse to finish the old run on new inputs."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    settings = {"system": str(model), "task": "sentiment", "limit": 6}
    first = evaluate(lab, EvalSettings(**settings), reuse=True)
    assert evaluate(lab, EvalSettings(**settings), reuse=True).id == first.id

    weights = model / "model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 0.01 * torch.randn_like(v) for k, v in tensors.items()}, weights, metadata={"format": "pt"})
    second = evaluate(lab, EvalSettings(**settings), reuse=True)
    assert second.id != first.id
    assert second.run.system.model.revision != first.run.system.model.revision
    assert evaluate(lab, EvalSettings(**settings), reuse=True).id == second.id

    second.update(status="running", pid=None)  # as if killed: an unfinished run of these settings
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(LlamalabError, match=rf"run {second.id} cannot be continued: its weights .* were revision"):
        evaluate(lab, EvalSettings(**settings), resume=True)
    # the old weights are back: the first evaluation is theirs again
    assert evaluate(lab, EvalSettings(**settings), reuse=True).id == first.id

    pos = lab.root / "data" / "rt_polarity" / "rt-polarity.pos"
    assert pos.is_file()
    split = lab.root / "data" / "splits" / "sentiment.json"
    pos.write_text(pos.read_text(encoding="utf-8") + "one more fine line .\n", encoding="utf-8")
    split.unlink(missing_ok=True)  # the split is derived (and pinned) again for the new data
    third = evaluate(lab, EvalSettings(**settings), reuse=True)
    assert third.id not in (first.id, second.id) and third.run.task.data_sha256 != first.run.task.data_sha256


def test_a_generation_budget_under_label_scoring_is_said_to_be_unused(lab, tiny_model_dir):
    from rich.console import Console

    said = Console(record=True, width=200)
    record = evaluate(lab, str(tiny_model_dir), task="sentiment", limit=4, max_new_tokens=4, console=said)
    assert record.run.scoring.protocol == "loglikelihood"
    assert "max_new_tokens 4 is not used: label scoring" in said.export_text()
    quiet = Console(record=True, width=200)
    evaluate(lab, str(tiny_model_dir), task="sentiment", limit=4, console=quiet)
    assert "not used" not in quiet.export_text()


def test_a_task_with_no_train_split_is_evaluated_zero_shot_and_shots_say_what_is_missing(lab, tiny_model_dir):
    """Only `data.split("train")` for the shots, always: an evaluation-only task could not be evaluated at all."""
    spec = (lab.root / "tasks" / "scitldr.yaml").read_text()
    kept = "\n".join(line for line in spec.splitlines() if "train.jsonl" not in line and "dev.jsonl" not in line)
    (lab.root / "tasks" / "tldr_test.yaml").write_text(kept.replace("name: scitldr", "name: tldr_test"))
    record = evaluate(lab, str(tiny_model_dir), task="tldr_test", limit=2, max_new_tokens=2)
    assert record.run.status == "finished" and record.run.prompt.shots == []
    before = [r.id for r in list_runs(lab.runs_dir)]
    with pytest.raises(LlamalabError, match="--shots 1 draws its examples from the train split of task "
                                            "'tldr_test', which it does not have \\(have: test\\): use --shots 0"):
        evaluate(lab, str(tiny_model_dir), task="tldr_test", limit=2, max_new_tokens=2, shots=1)
    with pytest.raises(LlamalabError, match="--shots 5000: the train split of task 'scitldr' has .* use --shots"):
        evaluate(lab, str(tiny_model_dir), task="scitldr", limit=2, max_new_tokens=2, shots=5000)
    # shots come from train: on the train split an evaluated example would be in its own prompt, with its answer
    with pytest.raises(LlamalabError, match="--shots 2 with --split train: .* evaluated examples would be shown "
                                            "with their answers in their own prompts"):
        evaluate(lab, str(tiny_model_dir), task="sentiment", split="train", limit=2, shots=2)
    assert [r.id for r in list_runs(lab.runs_dir)] == before  # refused before any run folder


def test_a_system_loaded_for_bfloat16_scores_labels_in_it(lab, tiny_model_dir):
    """load_system(precision=...) was checked, then forgotten: its evaluations were scored (and recorded) in float32."""
    from llamalab.evaluation.evaluate import load_system

    with load_system(lab, str(tiny_model_dir), precision="bfloat16") as loaded:
        record = evaluate(lab, loaded, task="sentiment", split="dev", limit=4)
        assert record.run.scoring.precision == "bfloat16" and record.config["precision"] == "bfloat16"
        generated = evaluate(lab, loaded, task="gsm8k", limit=1, max_new_tokens=2)  # generation: its own precision
        assert generated.run.scoring.protocol == "generate"
        with pytest.raises(LlamalabError, match="was loaded for precision 'bfloat16', not 'float32'"):
            evaluate(lab, loaded, task="sentiment", limit=4, precision="float32")
        with pytest.raises(LlamalabError, match="was loaded on the hf backend, not 'llama.cpp'"):  # it ran on hf
            evaluate(lab, loaded, task="sentiment", limit=4, backend="llama.cpp")


def test_reuse_and_resume_never_take_a_run_of_another_task_definition(lab, tiny_model_dir):
    """The task file's prompt, answer or metrics are not settings of the evaluation: a resume after an edit mixed
    rows of two prompts (the record showing only the new one), and reuse returned a run of the old prompt. A new
    description changes nothing."""
    settings = {"system": str(tiny_model_dir), "task": "sentiment", "limit": 4}
    first = evaluate(lab, EvalSettings(**settings), reuse=True)
    spec = lab.root / "tasks" / "sentiment.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("description: Is a", "description: Tell whether a"))
    assert evaluate(lab, EvalSettings(**settings), reuse=True).id == first.id
    spec.write_text(text.replace('template: "Review: {{ text }}', 'template: "Movie review: {{ text }}'))
    second = evaluate(lab, EvalSettings(**settings), reuse=True)
    assert second.id != first.id and second.run.task.definition_sha256 != first.run.task.definition_sha256
    second.update(status="running", pid=None)  # as if killed
    spec.write_text(text)
    with pytest.raises(LlamalabError, match=rf"run {second.id} cannot be continued: task 'sentiment' was defined "
                                            r"otherwise when it started \(tasks/sentiment.yaml: its prompt"):
        evaluate(lab, EvalSettings(**settings), resume=True)
    assert evaluate(lab, EvalSettings(**settings), reuse=True).id == first.id  # the old definition is back


def test_a_model_named_by_its_path_in_the_lab_is_found_from_any_folder(lab, tiny_model_dir, tmp_path, monkeypatch):
    """A relative `base_model: models/tiny` was found from the current folder only: a run's later eval or export
    from another folder (or with --lab from outside) failed with "base model not found"."""
    import shutil

    from llamalab.training.trainer import train
    from tests.conftest import write_experiment

    shutil.copytree(tiny_model_dir, lab.root / "models" / "tiny")
    write_experiment(lab, "rel", "task: sentiment\nbase_model: models/tiny\nmax_steps: 1\ntrain_examples: 8\n"
                                 "lora: {r: 4, alpha: 8}\n")
    monkeypatch.chdir(tmp_path)  # outside the lab
    trained = train(lab, "rel")
    assert trained.run.model.name == "models/tiny"
    record = evaluate(lab, trained.id, task="sentiment", limit=2)
    assert record.run.status == "finished"
    base = evaluate(lab, "models/tiny", task="sentiment", limit=2)
    assert base.run.system.label == base.run.system.model.name == "models/tiny"
    monkeypatch.chdir(lab.root / "data")
    assert evaluate(lab, "models/tiny", task="sentiment", limit=2, reuse=True).id == base.id
    # One system, any spelling: reuse (and resume, and a study's lookup by settings hash) find its evaluation.
    from llamalab.evaluation.evaluate import settings_hashes
    from llamalab.tasks.task import load_task

    spec = load_task(lab.task_path("sentiment"), lab.root)
    for other in ("./models/tiny", "models/tiny/", str(lab.root / "models" / "tiny"), "../models/tiny"):
        assert evaluate(lab, other, task="sentiment", limit=2, reuse=True).id == base.id, other
        assert settings_hashes(lab, spec, other, limit=2)[0] == settings_hashes(lab, spec, "models/tiny", limit=2)[0]
    for other in (trained.id[-4:], trained.id[-12:]):  # a unique part of the run id names the same run
        assert evaluate(lab, other, task="sentiment", limit=2, reuse=True).id == record.id, other
    assert record.config["system"] == trained.id
    # a model folder at the lab's root is `./rel`: spelled `rel` it would name the train run of experiment "rel"
    shutil.copytree(tiny_model_dir, lab.root / "rel")
    at_root = evaluate(lab, "./rel", task="sentiment", limit=2)
    assert at_root.run.system.kind == "base" and at_root.config["system"] == "./rel"
    assert evaluate(lab, str(lab.root / "rel"), task="sentiment", limit=2, reuse=True).id == at_root.id
    # an evaluation recorded before one spelling per system (the name as given) is still found by that name
    import llamalab.evaluation.evaluate as evaluate_module

    monkeypatch.setattr(evaluate_module, "canonical_name", lambda lab, name: name)
    older = evaluate(lab, "models/tiny/", task="sentiment", limit=3)
    monkeypatch.undo()
    assert older.config["system"] == "models/tiny/"
    assert evaluate(lab, "models/tiny/", task="sentiment", limit=3, reuse=True).id == older.id


def test_predictions_for_a_handout_score_in_the_precision_the_system_was_loaded_for(lab, tiny_model_dir, tmp_path):
    """predict_inputs is the other caller of a LoadedSystem: it scored in float32 whatever the system was loaded for,
    unlike an evaluation of the same system."""
    import json

    from llamalab.assignments.predict import predict_inputs
    from llamalab.evaluation.evaluate import load_system
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task

    inputs = tmp_path / "inputs.jsonl"
    with load_system(lab, str(tiny_model_dir), precision="bfloat16") as loaded:
        evaluated = evaluate(lab, loaded, task="sentiment", split="dev", limit=4)
        seen = {r["id"] for r in read_jsonl(evaluated.folder / "predictions.jsonl")}
        dev = load_task_data(load_task(lab.task_path("sentiment"), lab.root)).split("dev")
        examples = [ex for ex in dev if ex.id in seen]
        inputs.write_text("".join(json.dumps({"id": ex.id, **ex.fields}) + "\n" for ex in examples))
        predicted = predict_inputs(lab, loaded, inputs, tmp_path / "a.jsonl", task="sentiment")
        with pytest.raises(LlamalabError, match="predict_inputs\\(\\): .* was loaded for precision 'bfloat16'"):
            predict_inputs(lab, loaded, inputs, tmp_path / "b.jsonl", task="sentiment", precision="float32")
    by_id = {r["id"]: r["prediction"] for r in read_jsonl(evaluated.folder / "predictions.jsonl")}
    assert {r["id"]: r["answer"] for r in read_jsonl(predicted)} == {ex.id: by_id[ex.id] for ex in examples}
    # a system named, not loaded, is loaded in the precision asked for
    predict_inputs(lab, str(tiny_model_dir), inputs, tmp_path / "c.jsonl", task="sentiment", precision="bfloat16")


def test_prompts_past_the_models_context_are_refused(lab, tiny_model_dir):
    """The hf backend scored positions past max_position_embeddings without a word (llama.cpp refuses)."""
    with pytest.raises(LlamalabError, match=r"the model's context is 512 tokens \(max_position_embeddings\): the "
                                            r"longest prompt with its longest label needs \d{4}; shorten the prompts"):
        evaluate(lab, str(tiny_model_dir), task="sentiment", split="dev", limit=2, shots=40)
    with pytest.raises(LlamalabError, match=r"context is 512 tokens .* the longest prompt with max_new_tokens 600 "
                                            r"needs \d+"):
        evaluate(lab, str(tiny_model_dir), task="gsm8k", split="test", limit=1, max_new_tokens=600)


def test_generations_cut_off_by_the_budget_are_counted_and_warned_about(lab, tiny_model_dir):
    """A reasoning chain cut mid-sentence was scored by its last number with no word of it (the parse-failure
    warning never fired): each row says whether the budget cut it off, and the summary counts them."""
    record = evaluate(lab, str(tiny_model_dir), task="gsm8k", split="test", limit=3, max_new_tokens=3)
    rows = rows_of(record)
    assert all(r["truncated"] is True for r in rows)  # the random tiny model never ends within 3 tokens
    summary = record.run.predictions_summary
    assert summary.truncated == 3
    assert any(w.startswith("3 of 3 outputs (100%) were cut off by --max-new-tokens") for w in summary.warnings)
    from llamalab.evaluation.compare import prediction_cell

    assert "cut off 3/3" in prediction_cell(summary)


def test_a_loaded_system_reuses_its_finished_evaluation(lab, tiny_model_dir):
    """`llamalab demo` evaluates its baselines on one loaded model with reuse: run again after a kill, it takes up
    the finished evaluations instead of doing them again."""
    from llamalab.evaluation.evaluate import load_system

    with load_system(lab, str(tiny_model_dir)) as base:
        first = evaluate(lab, base, task="sentiment", split="dev", limit=6, reuse=True)
        again = evaluate(lab, base, task="sentiment", split="dev", limit=6, reuse=True)
        other = evaluate(lab, base, task="sentiment", split="dev", limit=5, reuse=True)
    assert again.id == first.id and other.id != first.id
    assert len(list_runs(lab.runs_dir, "eval")) == 2


def test_a_resumed_evaluation_stopped_while_its_model_loads_is_not_left_running(lab, tiny_model_dir,
                                                                               monkeypatch):
    """`--resume` marks the run running before the model loads: a Ctrl-C while loading (or a load that failed) left
    it "running" for good. It is interrupted (or failed) again; and a fresh start says an unfinished one exists."""
    from rich.console import Console

    from llamalab.evaluation.systems import System

    settings = {"system": str(tiny_model_dir), "task": "sentiment", "limit": 12, "batch_size": 4}
    assert eval_killed_after(lab.root, 1, settings).returncode == -9
    [record] = list_runs(lab.runs_dir, "eval")
    record.update(status="interrupted")  # as a Ctrl-C leaves it
    opened = System.open
    for stop, status in ((KeyboardInterrupt, "interrupted"), (OSError("disk gone"), "failed")):
        def stopped(*args, stop=stop, **kwargs):
            raise stop

        monkeypatch.setattr(System, "open", stopped)
        with pytest.raises((KeyboardInterrupt, OSError)):
            evaluate(lab, EvalSettings(**settings), resume=True)
        [record] = list_runs(lab.runs_dir, "eval")
        assert record.run.status == status, stop
    assert record.run.error == "OSError: disk gone"
    monkeypatch.setattr(System, "open", opened)
    console = Console(record=True, width=300)
    fresh = evaluate(lab, EvalSettings(**settings), console=console)  # not --resume
    assert "an unfinished evaluation with these settings exists" in " ".join(console.export_text().split())
    assert fresh.id != record.id
    assert evaluate(lab, EvalSettings(**settings), resume=True).id == record.id
