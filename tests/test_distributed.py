"""Training in two processes (gloo on the CPU): data-parallel LoRA (DDP) and a full fine-tune sharded across them
(FSDP) each train the same run as one process with the same global batch, and a killed two-process run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.runs.record import list_runs
from llamalab.training.trainer import train
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow

EXPERIMENT = """task: sentiment
base_model: {model}
max_steps: 6
save_steps: 2
batch_size: 4
train_examples: {rows}
learning_rate: 1e-3
lora: {{r: 4, alpha: 8}}
"""


# A full fine-tune in float32: under bf16 autocast the CPU's matmul kernels round by the batch's shape, which
# two processes change (DDP's LoRA above is close enough at this tiny model; the embedded model's first loss moved
# by 0.02 in bf16, with DDP and FSDP alike).
FULL = """task: sentiment
base_model: {model}
method: full
max_steps: 6
save_steps: 2
batch_size: 4
train_examples: {rows}
learning_rate: 1e-3
bf16: no
"""


def _losses(record) -> list[float]:
    rows = [json.loads(line) for line in (record.folder / "train_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows]


def _tokens_seen(record) -> list[int]:
    rows = [json.loads(line) for line in (record.folder / "train_log.jsonl").read_text().splitlines()]
    return [row["num_input_tokens_seen"] for row in rows]


def _adapter(record) -> dict:
    from safetensors.torch import load_file

    return load_file(record.folder / "adapter" / "adapter_model.safetensors")


@pytest.mark.parametrize("rows", [48, 13], ids=["whole-batches", "partial-last-batch"])
def test_two_processes_train_the_same_run_as_one(lab, tiny_model_dir, rows):
    # 13 rows in batches of 4: each epoch ends on one row, which the first process takes with a filler row; the
    # second has only fillers. Six steps run into the second epoch.
    write_experiment(lab, "tiny", EXPERIMENT.format(model=tiny_model_dir, rows=rows))
    one = train(lab, "tiny")
    two = train(lab, "tiny", processes=2)
    assert two.run.finished and two.run.processes == 2 and one.run.processes == 1
    assert two.run.parallelism == "ddp" and one.run.parallelism is None
    assert two.run.config_hash == one.run.config_hash  # the processes are not a setting of the run
    # each process's peak against the plan of one process's share; the record shows the largest
    each = two.run.memory.measured_mb_each
    assert len(each) == 2 and all(m is not None and m > 0 for m in each)
    assert two.run.memory.measured_mb == max(each) and one.run.memory.measured_mb_each is None
    assert len(_losses(two)) == len(_losses(one)) == 6
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    marked = (two.folder / "checkpoints" / "checkpoint-6" / "CHECKPOINT_DONE").read_text().split()
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marked)  # marked once every process wrote its part
    assert two.run.metrics.epochs == one.run.metrics.epochs and two.run.data_used == one.run.data_used
    assert _tokens_seen(two) == _tokens_seen(one)  # the fillers' tokens are not counted in tokens/s
    import torch

    theirs, ours = _adapter(one), _adapter(two)
    assert theirs.keys() == ours.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)
    before = len(list_runs(lab.runs_dir))
    with pytest.raises(Exception, match="multiple of processes"):
        train(lab, "tiny", processes=3)
    assert len(list_runs(lab.runs_dir)) == before  # refused before any run folder was made


def test_a_full_fine_tune_is_sharded_across_two_processes_and_trains_the_same_run(lab, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    write_experiment(lab, "full", FULL.format(model=tiny_model_dir, rows=13))  # with filler rows
    one = train(lab, "full")
    two = train(lab, "full", processes=2, activation_checkpointing="yes")  # FSDP's own checkpointing too
    assert two.run.parallelism == "fsdp" and two.run.precision == one.run.precision == "float32"
    assert two.run.memory.activation_checkpointing and not one.run.memory.activation_checkpointing
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-4)
    import torch

    # gathered from the shards into one file, as one process writes it (a tied output layer not stored twice)
    theirs, ours = (load_file(r.folder / "model" / "model.safetensors") for r in (one, two))
    assert theirs.keys() == ours.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)
    loaded = AutoModelForCausalLM.from_pretrained(two.folder / "model")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    # each process planned its share: the weights, gradients and AdamW state divided between the two
    assert two.run.memory.predicted_mb < one.run.memory.predicted_mb
    assert train(lab, "full", processes=2, reuse=True, activation_checkpointing="yes").id == two.id


def _training_past_a_checkpoint(lab, name: str) -> subprocess.Popen:
    """`llamalab train NAME --processes 2` in a session of its own, once its first checkpoint is complete."""
    command = [sys.executable, "-m", "llamalab.cli", "train", name, "--processes", "2", "--lab", str(lab.root)]
    child = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        if list(lab.runs_dir.glob("*/checkpoints/checkpoint-*/CHECKPOINT_DONE")):
            break
        time.sleep(0.2)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    return child


@pytest.mark.parametrize("experiment", [EXPERIMENT, FULL], ids=["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes(lab, tiny_model_dir, experiment):
    # 13 rows: every epoch's last step has filler rows, resumed mid-epoch too
    write_experiment(lab, "tiny", experiment.format(model=tiny_model_dir, rows=13)
                     .replace("max_steps: 6", "max_steps: 250"))
    child = _training_past_a_checkpoint(lab, "tiny")
    os.killpg(child.pid, signal.SIGKILL)  # the launcher and both workers, like a lost node
    child.wait()
    (killed,) = list_runs(lab.runs_dir, "train")
    done = max(int(p.name.split("-")[1]) for p in killed.folder.glob("checkpoints/checkpoint-*"))
    assert done < 250, "killed after its last step: nothing left to resume"
    resumed = train(lab, "tiny", resume=True, processes=2)
    assert resumed.id == killed.id and resumed.run.finished and resumed.run.resumed
    steps = [json.loads(line)["step"] for line in (resumed.folder / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 251))
    # the first process of each session said how it computed, from where it started (the killed one before it died)
    assert [s.from_step for s in resumed.run.sessions][0] == 0 and len(resumed.run.sessions) == 2


def test_fsdp_on_gpus_averages_gradients_in_float32():
    """accelerate's FSDP2 policy for bf16 computes and reduces in bf16; the one a GPU run gets reduces in float32
    (GPUs are not lent to these tests: the policy is checked, not a run with it)."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    from llamalab.training.trainer import fp32_reduction

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)  # as fsdp_config asks for
    plugin.set_mixed_precision("bf16")
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16  # accelerate's own
    policy = fp32_reduction(plugin.mixed_precision_policy)
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32,
                                                                               torch.bfloat16)
    assert fp32_reduction(None) is None


def test_more_processes_than_gpus_is_refused_before_a_run_starts(lab, tiny_model_dir, monkeypatch):
    import torch

    from llamalab.config import LlamalabError
    from llamalab.training import distributed

    monkeypatch.setattr(distributed, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    name = write_experiment(lab, "two", json.dumps({"task": "sentiment", "base_model": str(tiny_model_dir),
                                                    "batch_size": 4, "max_steps": 2}))
    with pytest.raises(LlamalabError, match=r"--processes 2 needs a GPU for each process, and 1 is visible "
                                            r"\(CUDA_VISIBLE_DEVICES=3\): use --processes 1 or fewer"):
        train(lab, name, processes=2)
    assert not list_runs(lab.runs_dir)


def test_a_worker_stopped_by_a_user_error_says_why(lab, tiny_model_dir):
    """A diverged run in two processes fails with the same message one process gives (not 'see its output
    above' after two tracebacks), and the record keeps it."""
    from llamalab.config import LlamalabError

    write_experiment(lab, "diverges", EXPERIMENT.format(model=tiny_model_dir, rows=48))
    with pytest.raises(LlamalabError, match=r"training diverged at step \d+: .*Lower learning_rate"):
        train(lab, "diverges", processes=2, save_steps=100, learning_rate=1e30)
    (run,) = list_runs(lab.runs_dir, "train")
    assert run.run.status == "failed" and "diverged" in run.run.error
    assert not (run.folder / ".worker_error").exists()


def _killed_after_checkpoint(record, step: int | None = None) -> None:
    """What a kill leaves after checkpoint `step` (default: the last, while the weights were written)."""
    import shutil

    for checkpoint in record.folder.glob("checkpoints/checkpoint-*"):
        if step is not None and int(checkpoint.name.split("-")[1]) > step:
            shutil.rmtree(checkpoint)
    for weights in ("adapter", "model"):
        shutil.rmtree(record.folder / weights, ignore_errors=True)
    record.update(status="interrupted")


def test_a_run_with_filler_rows_resumed_in_a_later_epoch_trains_as_one_never_stopped(lab, tiny_model_dir):
    """The epoch's order came from a sampler the loader set each epoch only when nothing was skipped: resumed
    in the second epoch, two processes took the first epoch's order."""
    write_experiment(lab, "tiny", EXPERIMENT.format(model=tiny_model_dir, rows=13)
                     .replace("max_steps: 6", "max_steps: 8"))
    whole = train(lab, "tiny", processes=2)
    cut = train(lab, "tiny", processes=2)
    _killed_after_checkpoint(cut, step=6)  # two steps into the second epoch (4 steps an epoch)
    resumed = train(lab, "tiny", processes=2, resume=True)
    assert resumed.id == cut.id and len(_losses(resumed)) == 8
    assert _losses(resumed) == pytest.approx(_losses(whole), abs=1e-6)


def test_a_sharded_run_killed_after_its_last_checkpoint_resumes_without_a_step_more(lab, tiny_model_dir):
    """FSDP was left out of the nothing-left-to-train case: the resumed Trainer took a 7th step of 6, and the
    memory a session that trained nothing measured replaced the training's."""
    write_experiment(lab, "full", FULL.format(model=tiny_model_dir, rows=13))  # 4 steps an epoch
    run = train(lab, "full", processes=2)
    measured = run.run.memory.measured_mb
    _killed_after_checkpoint(run)
    resumed = train(lab, "full", processes=2, resume=True)
    assert resumed.run.metrics.steps == 6 and resumed.run.metrics.epochs == run.run.metrics.epochs
    assert len(_losses(resumed)) == 6 and resumed.run.metrics.final_loss == run.run.metrics.final_loss
    assert resumed.run.memory.measured_mb == measured
    assert (resumed.folder / "model" / "model.safetensors").is_file()

    _killed_after_checkpoint(resumed, step=4)  # FSDP's checkpoint: one process cannot continue it
    for other in (1, 4):  # nor another number of them
        with pytest.raises(LlamalabError, match=r"checkpoint-4 was written by a full fine-tune in 2 processes "
                                                r"\(FSDP\): resume it with --processes 2$"):
            train(lab, "full", processes=other, resume=True)


def test_callbacks_in_several_processes_are_refused_before_any_run_folder(lab, tiny_model_dir):
    write_experiment(lab, "tiny", EXPERIMENT.format(model=tiny_model_dir, rows=48))
    with pytest.raises(LlamalabError, match="callbacks run in this process only"):
        train(lab, "tiny", processes=2, callbacks=[object()])
    assert list_runs(lab.runs_dir) == []


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line holds `text` (a run folder: the launcher's torchrun and its workers)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                found.append(int(cmdline.parent.name))
        except OSError:  # gone while listed
            continue
    return found


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stopped_two_process_run_leaves_no_worker_and_resumes(lab, tiny_model_dir, stop):
    """Ctrl-C in the terminal (SIGINT to the launcher's process group; torchrun starts its workers in sessions of
    their own), or SIGTERM to `llamalab train` alone: the run is marked interrupted, no worker trains on (rotating
    the checkpoints a resumed run reads), and `--resume` finishes it with every step once."""
    write_experiment(lab, "tiny", EXPERIMENT.format(model=tiny_model_dir, rows=13).replace("max_steps: 6",
                                                                                        "max_steps: 250"))
    child = _training_past_a_checkpoint(lab, "tiny")
    (run,) = list_runs(lab.runs_dir, "train")
    assert len(_processes_naming(str(run.folder))) == 3  # torchrun and its two workers
    if stop == signal.SIGINT:
        os.killpg(child.pid, stop)
    else:
        child.send_signal(stop)
    stderr = child.communicate(timeout=120)[1].decode()
    assert child.returncode != 0 and "stopping. Finished work is kept" in stderr, stderr[-2000:]
    deadline = time.monotonic() + 30  # the workers die with their parent
    while _processes_naming(str(run.folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(str(run.folder)) == []
    (stopped,) = list_runs(lab.runs_dir, "train")
    assert stopped.run.status == "interrupted", stopped.run.status
    resumed = train(lab, "tiny", resume=True, processes=2)
    assert resumed.id == stopped.id and resumed.run.finished
    steps = [json.loads(line)["step"] for line in (resumed.folder / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 251))
