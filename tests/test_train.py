from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import load_file

from llamalab.config import LlamalabError
from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.runs.record import list_runs
from llamalab.tasks.task import load_task
from llamalab.training.callbacks import drop_log_after
from llamalab.training.trainer import build_dataset, train
from tests.conftest import write_experiment


def tiny_experiment(lab, model_dir, name="tiny", **extra) -> str:
    settings = {
        "task": "sentiment", "base_model": str(model_dir), "learning_rate": 5e-3, "batch_size": 4,
        "max_steps": 12, "save_steps": 4, "train_examples": 64, "seed": 7, "lora": {"r": 4, "alpha": 8},
        **extra,
    }
    return write_experiment(lab, name, json.dumps(settings))


def test_loss_only_on_answer_tokens(lab, tokenizer):
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter

    task = load_task(lab.task_path("sentiment"), lab.root)
    examples = load_task_data(task).split("train")[:5]
    dataset, skipped = build_dataset(Prompter(task, tokenizer, "plain"), examples, max_length=128)
    assert skipped == 0
    for row, ex in zip(dataset, examples, strict=True):
        answer = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        assert tokenizer.decode(answer) == f" {ex.answer}{tokenizer.eos_token}"
        assert row["labels"][0] == -100
    _, skipped = build_dataset(Prompter(task, tokenizer, "plain"), examples, max_length=8)
    assert skipped == 5


def test_a_few_steps_write_a_complete_record(lab, tiny_model_dir):
    record = train(lab, tiny_experiment(lab, tiny_model_dir))
    run = record.run
    assert run.status == "finished"
    assert run.metrics.steps == 12
    assert run.metrics.final_loss < run.metrics.first_loss
    assert run.throughput["tokens_per_s"] > 0
    assert run.model.revision.startswith("sha256:")
    assert set(run.task.data_sha256) == {"data/rt_polarity/rt-polarity.pos", "data/rt_polarity/rt-polarity.neg",
                                         "data/splits/sentiment.json"}  # the manifest fixes the split
    assert (record.folder / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (record.folder / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 12
    # the optimizer as the Trainer ran it: 5% of 12 steps of warm-up, rounded up (the rate peaks after it), clipping
    assert run.optimizer.warmup_steps == 1 and run.optimizer.max_grad_norm == 1.0
    rates = [row["learning_rate"] for row in log]
    assert rates.index(max(rates)) == run.optimizer.warmup_steps and rates[0] == 0
    assert run.optimizer.betas == (0.9, 0.999) and run.optimizer.name == "adamw_torch_fused"

    result = evaluate(lab, EvalSettings(system=record.id, task="sentiment", limit=20))
    assert result.run.system.kind == "finetuned"
    assert result.run.prompt.format == "plain"
    assert len((result.folder / "predictions.jsonl").read_text().splitlines()) == 20


def test_reuse_trains_again_when_the_task_data_changed(lab, tiny_model_dir):
    """A study reuses a finished train run of the same settings; after the task's data changed (same settings,
    same hash) that run is not this cell's, and a new one is trained."""
    name = tiny_experiment(lab, tiny_model_dir, max_steps=2)
    first = train(lab, name, reuse=True)
    assert train(lab, name, reuse=True).id == first.id
    pos = lab.root / "data" / "rt_polarity" / "rt-polarity.pos"
    pos.write_text(pos.read_text(encoding="utf-8") + "one more fine line .\n", encoding="utf-8")
    (lab.root / "data" / "splits" / "sentiment.json").unlink()
    second = train(lab, name, reuse=True)
    assert second.id != first.id and second.run.task.data_sha256 != first.run.task.data_sha256
    assert second.run.config_hash == first.run.config_hash


def test_a_diverged_run_fails_naming_the_step_instead_of_recording_a_loss_of_zero(lab, tiny_model_dir):
    """The Trainer logs a NaN loss as 0 by default: a diverged run would have looked perfect."""
    with pytest.raises(LlamalabError, match=r"training diverged at step \d+: .*nan.*Lower learning_rate"):
        train(lab, tiny_experiment(lab, tiny_model_dir, "diverges", learning_rate=1e30, save_steps=100))
    (run,) = list_runs(lab.runs_dir, "train")
    assert run.run.status == "failed" and "diverged" in run.run.error
    assert run.run.metrics is None or run.run.metrics.final_loss is None
    logged = [json.loads(line) for line in (run.folder / "train_log.jsonl").read_text().splitlines()]
    assert all(row["loss"] != 0 for row in logged)  # the diverged step is logged as it was
    assert not (run.folder / "adapter").exists()


def test_gradient_clipping_is_a_setting_the_record_and_methods_state(lab, tiny_model_dir):
    from llamalab.training.experiment import load_experiment

    name = tiny_experiment(lab, tiny_model_dir, "unclipped", max_grad_norm=None, max_steps=2, lr_scheduler="constant")
    record = train(lab, name)
    assert record.run.optimizer.max_grad_norm is None and record.run.optimizer.warmup_steps == 0
    from llamalab.publish.methods import _training

    text = _training(record, "sentiment")  # the methods paragraph of the run
    assert "no gradient clipping" in text and "constant learning rate" in text and "warm-up" not in text
    # at its default, old records' hashes hold (it is left out of the resolved config)
    default = tiny_experiment(lab, tiny_model_dir, "clipped")
    assert "max_grad_norm" not in load_experiment(lab.experiment_path(default))[1]


def test_experiment_naming_a_missing_task(lab, tiny_model_dir):
    name = write_experiment(lab, "broken", f"task: sentimental\nbase_model: {tiny_model_dir}\n")
    with pytest.raises(LlamalabError, match=r"broken.yaml: key 'task': no task named 'sentimental'.*did you mean"):
        train(lab, name)
    assert list_runs(lab.runs_dir) == []  # nothing half-written


def test_missing_base_model(lab):
    name = write_experiment(lab, "nomodel", "task: sentiment\nbase_model: ./no/such/model\n")
    with pytest.raises(LlamalabError, match=r"base model './no/such/model': no such model file or folder "
                                            r"\(looked for .*no/such/model\): check the path"):
        train(lab, name)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from llamalab.lab import find_lab
    from llamalab.training import trainer

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if sys.argv[3] != "end" and state.global_step == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)

        def on_train_end(self, args, state, control, **kwargs):  # after the last checkpoint, before the weights
            if sys.argv[3] == "end":
                os.kill(os.getpid(), signal.SIGKILL)

    trainer.train(find_lab(sys.argv[1]), sys.argv[2], callbacks=[KillAt()])
""")


def test_resume_after_kill_matches_an_uninterrupted_run(lab, tiny_model_dir, tmp_path):
    """kill -9 mid-epoch (step 7, last checkpoint at 4), resume, and end exactly where a clean run ends."""
    clean = train(lab, tiny_experiment(lab, tiny_model_dir, "clean"))

    name = tiny_experiment(lab, tiny_model_dir, "killed")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    killed = subprocess.run([sys.executable, str(script), str(lab.root), name, "7"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    [interrupted] = [r for r in list_runs(lab.runs_dir, "train") if r.run.experiment == "killed"]
    assert interrupted.run.status == "running"  # a kill -9 gives no chance to record anything
    checkpoints = sorted(p.name for p in (interrupted.folder / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]

    interrupted.update(peak_memory_mb=10**7)  # as if the killed session had recorded a larger peak
    # resumed with checkpointing on (what a run killed for memory needs): it changes no number, so it continues it
    resumed = train(lab, name, resume=True, activation_checkpointing="yes")
    assert resumed.id == interrupted.id and resumed.run.memory.activation_checkpointing
    assert resumed.run.status == "finished"
    # each session's way of computing, from the step it started at: the methods text says which steps had which
    assert [(s.from_step, s.activation_checkpointing) for s in resumed.run.sessions] == [(0, False), (4, True)]
    from llamalab.publish.methods import _computed
    assert "activation checkpointing for steps 5-12" in _computed(resumed.run)
    assert resumed.run.peak_memory_mb == 10**7  # the run's peak is the largest of its sessions'
    # the resumed session's time covers steps 5-12 of 16 per epoch: half an epoch (the killed session's is lost)
    assert resumed.run.timings["train_epochs"] == pytest.approx(0.5)
    assert resumed.run.metrics.final_loss == pytest.approx(clean.run.metrics.final_loss, rel=1e-5)
    log = [json.loads(line) for line in (resumed.folder / "train_log.jsonl").read_text().splitlines()]
    clean_log = [json.loads(line) for line in (clean.folder / "train_log.jsonl").read_text().splitlines()]
    # The killed run had logged steps 5 and 6 after checkpoint-4; the resumed run logs them again, once.
    assert [row["step"] for row in log] == [row["step"] for row in clean_log] == list(range(1, 13))
    after_resume = {row["step"]: row["loss"] for row in log if row["step"] > 4}
    assert after_resume == pytest.approx({row["step"]: row["loss"] for row in clean_log if row["step"] > 4}, rel=1e-5)

    a = load_file(clean.folder / "adapter" / "adapter_model.safetensors")
    b = load_file(resumed.folder / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key

    with pytest.raises(LlamalabError, match="no unfinished run"):
        train(lab, name, resume=True)

    # Killed after its last checkpoint: nothing is left to train, and resuming takes no extra step
    name = tiny_experiment(lab, tiny_model_dir, "killed-at-end")
    killed = subprocess.run([sys.executable, str(script), str(lab.root), name, "end"], capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    [interrupted] = [r for r in list_runs(lab.runs_dir, "train") if r.run.experiment == "killed-at-end"]
    assert (interrupted.folder / "checkpoints" / "checkpoint-12").is_dir()
    resumed = train(lab, name, resume=True)
    assert (resumed.run.metrics.steps, resumed.run.metrics.epochs) == (clean.run.metrics.steps,
                                                                       clean.run.metrics.epochs)
    assert resumed.run.metrics.final_loss == pytest.approx(clean.run.metrics.final_loss, rel=1e-5)
    log = [json.loads(line) for line in (resumed.folder / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, 13))
    # no session recorded a speed: none is claimed (not 0 tokens/s), and no epoch is timed; nor a peak memory (the
    # session that only loaded the weights recorded a negative one)
    assert "tokens_per_s" not in resumed.run.throughput and resumed.run.timings["train_epochs"] == 0
    assert resumed.run.memory.measured_mb is None
    assert [s.from_step for s in resumed.run.sessions] == [0]  # the session that only loaded the weights trained none
    b = load_file(resumed.folder / "adapter" / "adapter_model.safetensors")
    for key in a:
        assert (a[key] - b[key]).abs().max().item() < 1e-6, key


def test_drop_log_after_keeps_what_came_before_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    rows = [{"note": "start"}, {"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"note": "later"},
            {"step": 3, "loss": 1.0}]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 4, "lo')  # cut off by a kill
    drop_log_after(log, 2)
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows[:4]
    drop_log_after(log, 0)
    assert log.read_text().splitlines() == ['{"note": "start"}']
    drop_log_after(tmp_path / "missing.jsonl", 3)
    assert not (tmp_path / "missing.jsonl").exists()


def test_export_writes_a_merged_model(lab, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from llamalab.cli import app
    from llamalab.evaluation.systems import resolve_system

    record = train(lab, tiny_experiment(lab, tiny_model_dir, max_steps=4))
    target = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", record.id, str(target), "--lab", str(lab.root)])
    assert result.exit_code == 0, result.output
    assert not (target / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(target).eval()
    adapted, _ = resolve_system(lab, record.id).load()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)


def test_only_a_checkpoint_with_every_file_its_marker_lists_is_resumed_from(tmp_path):
    from llamalab.training.callbacks import CHECKPOINT_DONE, latest_complete_checkpoint

    def checkpoint(step: int, files: list[str], listed: list[str] | None) -> None:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
        if listed is not None:
            (folder / CHECKPOINT_DONE).write_text("".join(f"{name}\n" for name in listed))

    weights = ["adapter_model.safetensors", "optimizer.pt", "trainer_state.json"]
    checkpoint(2, weights, weights)  # complete
    checkpoint(4, weights[1:], weights)  # a kill while the trainer was removing it: its weights are gone
    checkpoint(6, weights, None)  # a kill while it was written: no marker yet
    assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_lora_on_an_output_layer_tied_to_the_embeddings_is_refused_before_a_run_starts(lab, tiny_model_dir):
    """Merged (for evaluation and export), its update would change the shared input embeddings too."""
    name = tiny_experiment(lab, tiny_model_dir, "tied-head", lora={"r": 4, "alpha": 8,
                                                                   "target_modules": ["q_proj", "lm_head"]})
    with pytest.raises(LlamalabError, match=r"key 'lora.target_modules': .* ties its output layer \(lm_head\) to its "
                                            r"input embeddings.*leave lm_head out of target_modules"):
        train(lab, name)
    with pytest.raises(LlamalabError, match="ties its output layer"):  # one module named as a string
        train(lab, tiny_experiment(lab, tiny_model_dir, "tied-head-only", lora={"target_modules": "lm_head"}))
    assert not list_runs(lab.runs_dir)


def test_a_max_length_no_training_example_fits_is_refused_before_a_run_starts(lab, tiny_model_dir):
    """Training skipped every example and then failed inside a run folder, without a length to aim for."""
    with pytest.raises(LlamalabError, match=r"key 'max_length': all 64 training examples are longer than "
                                            r"max_length=8 tokens \(the shortest has (\d+)\): raise max_length"):
        train(lab, tiny_experiment(lab, tiny_model_dir, "short", max_length=8))
    assert not list_runs(lab.runs_dir)


@pytest.mark.parametrize("seed", range(25))
def test_the_recorded_warm_up_is_where_the_trainers_schedule_peaks(seed, tmp_path):
    """On random step counts, ratios and schedules: the warm-up steps the record (and the methods text) give are
    the steps the Trainer's own scheduler climbs for (none for "constant")."""
    import random

    import torch
    from transformers import get_scheduler

    from llamalab.training.experiment import Experiment
    from llamalab.training.trainer import _optimizer_use, _sft_config

    rng = random.Random(seed)
    steps = rng.randint(1, 400)
    experiment = Experiment(task="t", warmup_ratio=rng.choice([0.0, rng.uniform(0, 0.5)]), max_steps=steps,
                            lr_scheduler=rng.choice(["linear", "cosine", "constant", "constant_with_warmup"]),
                            max_grad_norm=rng.choice([None, 1.0, rng.uniform(0.1, 5)]))
    args = _sft_config(experiment, tmp_path)
    used = _optimizer_use(args, experiment, steps)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(steps),
                              num_training_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    climbing = next((k for k, rate in enumerate(rates) if rate >= 1.0 - 1e-12), steps)
    assert used["warmup_steps"] == min(climbing, steps), (experiment.lr_scheduler, steps, experiment.warmup_ratio)
    assert used["max_grad_norm"] == experiment.max_grad_norm
    assert used["betas"] == (0.9, 0.999) and used["epsilon"] == 1e-8


def test_plan_steps_per_epoch_are_the_optimizer_steps_training_takes(lab, tiny_model_dir):
    """With gradient accumulation an optimizer step takes grad_accum batches: `llamalab plan` counts those."""
    from llamalab.training.plan import plan_run

    name = tiny_experiment(lab, tiny_model_dir, "accum", grad_accum=2, max_steps=None, epochs=1, train_examples=40)
    plan = plan_run(lab, name, "cpu")
    record = train(lab, name)
    assert plan.steps_per_epoch == record.run.metrics.steps == 5  # 40 examples, 10 batches of 4, 2 per step
    assert record.run.peak_memory_mb and record.run.throughput["tokens_per_s"] > 0


def test_a_hub_model_is_planned_and_trained_from_its_cached_snapshot(lab, tiny_model_dir, tmp_path, monkeypatch):
    """A hub id (here served offline from the hub cache) resolves to its snapshot: the plan reads its config as a
    folder's, and the run records the snapshot's commit as the model's revision."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--fakeorg--tinyllama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    name = tiny_experiment(lab, tiny_model_dir, "hub", base_model="fakeorg/tinyllama", max_steps=2)
    record = train(lab, name)
    assert record.run.status == "finished" and record.run.model.revision == f"hub:{commit}"
    assert record.run.memory.predicted_mb > 0
    with pytest.raises(LlamalabError, match="cannot get model 'fakeorg/missing' from the Hugging Face hub"):
        train(lab, tiny_experiment(lab, tiny_model_dir, "missing", base_model="fakeorg/missing", max_steps=2))


def test_a_metrics_or_label_normalisation_edit_keeps_a_tasks_training_runs(lab, tiny_model_dir):
    """Training rows depend on neither the task's metrics nor how label scores are normalised: a study's trained
    cells were retrained (and --resume refused) after such an edit. Its prompt is another matter."""
    from tests.conftest import write_experiment

    write_experiment(lab, "tiny", f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 1\n"
                                  "train_examples: 8\nlora: {r: 4, alpha: 8}\n")
    first = train(lab, "tiny", reuse=True)
    spec = lab.root / "tasks" / "sentiment.yaml"
    text = spec.read_text()
    spec.write_text(text.replace("normalize: sum", "normalize: mean").replace("metrics: [accuracy, macro_f1]",
                                                                           "metrics: [accuracy]"))
    assert train(lab, "tiny", reuse=True).id == first.id
    spec.write_text(text.replace('template: "Review: {{ text }}', 'template: "Movie review: {{ text }}'))
    assert train(lab, "tiny", reuse=True).id != first.id


@pytest.mark.parametrize("seed", range(5))
def test_filler_rows_change_no_loss_and_no_tokens_seen_on_random_sizes(lab, tiny_model_dir, monkeypatch, seed):
    """The rows `--processes N` fills an epoch's partial last batch with count for nothing, whatever the rows,
    batch and epochs: the same run in one process with them filled in has the same loss at every step and the
    same tokens seen (the two-process tests check one size; this checks the fillers themselves on random ones)."""
    import random

    from llamalab.training import trainer as trainer_module

    rng = random.Random(seed)
    batch = rng.choice([2, 3, 4, 8])
    rows = batch * rng.randint(1, 3) + rng.randint(1, batch - 1)  # a partial last batch: fillers to add
    steps = -(-rows // batch) * rng.choice([1, 2]) + rng.randint(0, 2)  # one or two epochs, maybe into the next
    name = tiny_experiment(lab, tiny_model_dir, name=f"fill{seed}", train_examples=rows, batch_size=batch,
                           max_steps=steps, save_steps=1000, seed=seed)
    plain = train(lab, name)
    count = -rows % batch
    with_fillers, factory = trainer_module.with_fillers, trainer_module._answer_loss_trainer
    monkeypatch.setattr(trainer_module, "with_fillers", lambda dataset, _: with_fillers(dataset, count))
    monkeypatch.setattr(trainer_module, "_answer_loss_trainer", lambda _=0: factory(count))
    filled = train(lab, name, name=f"fill{seed}-filled")

    def log(record) -> list[dict]:
        return [json.loads(line) for line in (record.folder / "train_log.jsonl").read_text().splitlines()]

    assert len(log(filled)) == len(log(plain)) == steps, (rows, batch, count)
    assert [r["loss"] for r in log(filled)] == pytest.approx([r["loss"] for r in log(plain)], abs=1e-5)
    assert [r["num_input_tokens_seen"] for r in log(filled)] == [r["num_input_tokens_seen"] for r in log(plain)]


def test_a_base_model_spelled_any_way_is_recorded_as_its_evaluations_name_it(lab, tiny_model_dir):
    """`./models/x/`, `models/x` and its absolute path are one model: the train run records it as an evaluation of
    the base model does, so the fine-tune is compared with that evaluation (an assignment's baseline)."""
    import shutil

    from llamalab.assignments.references import same_base_model

    shutil.copytree(tiny_model_dir, lab.root / "models" / "x")
    write_experiment(lab, "spelled", json.dumps({"task": "sentiment", "base_model": "./models/x/", "max_steps": 1,
                                                 "batch_size": 2, "train_examples": 4}))
    trained = train(lab, "spelled")
    base = evaluate(lab, EvalSettings(system=str(lab.root / "models" / "x"), task="sentiment", limit=4))
    assert trained.run.model.name == base.run.system.model.name == "models/x"
    assert same_base_model(base, trained)
