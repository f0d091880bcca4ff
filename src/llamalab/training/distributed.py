"""Training in several data-parallel processes: `llamalab train EXP --processes N`.

This process keeps the run record (started, finished or failed, as for any run); `torchrun` starts N worker
processes that each run the same recipe on their share of every batch (through accelerate: gloo on CPUs, NCCL on
GPUs; DDP for LoRA, FSDP for a full fine-tune, its weights sharded across the processes). The first worker writes
the training log, checkpoints, weights and the record's results; a resumed run continues from the last checkpoint,
LoRA's with any number of processes, a full fine-tune's FSDP checkpoint with as many as wrote it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from llamalab.config import LlamalabError
from llamalab.lab import Lab, find_lab
from llamalab.runs.record import RunRecord
from llamalab.training.plan import _cuda_available, fsdp_shards

WORKER_ERROR = ".worker_error"  # in the run folder: what stopped a worker, for the launcher to report


def launch(lab: Lab, record: RunRecord, experiment, processes: int, console: Console) -> None:
    """Run the training of `record` in `processes` worker processes; the record is reloaded with their results."""
    from llamalab.training.callbacks import latest_complete_checkpoint

    # Clear away checkpoints a kill cut off here, once: the workers must all resume from the same one.
    latest_complete_checkpoint(record.folder / "checkpoints")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "llamalab.training.distributed", str(lab.root), str(record.folder)]
    sharded = fsdp_shards(experiment, processes)
    console.print(f"training in {processes} processes (batch {experiment.batch_size // processes} each; "
                  f"{'FSDP: the model sharded between them' if sharded else 'DDP'})")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    if sharded and not _cuda_available():
        # FSDP gathers each layer's weights into fresh buffers and frees them; glibc keeps freed blocks resident
        # once its adaptive threshold has risen, which undid the sharding's saving (embedded model, 2 processes:
        # 2,817 MiB each, against 1,938 MiB with this). Returning them cost 10-35% of the (slow) step's speed.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    reason = record.folder / WORKER_ERROR
    reason.unlink(missing_ok=True)
    try:
        result = subprocess.run(command, env=env, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
    finally:  # what the first worker wrote, also on a Ctrl-C (the launcher's copy would be saved over it)
        record.run = RunRecord.load(record.folder).run
    if result.returncode != 0:
        if reason.is_file():  # an error the user can fix (a diverged run, say): its message, not the tracebacks
            message = reason.read_text(encoding="utf-8")
            reason.unlink()
            raise LlamalabError(message)
        raise LlamalabError(f"a training process failed (exit code {result.returncode}); see its output above")


def check_devices(processes: int) -> None:
    """On GPUs each process takes a card of its own: refuse more processes than cards, before any run starts."""
    if processes > 1 and _cuda_available():
        import torch

        if processes > (cards := torch.cuda.device_count()):
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise LlamalabError(
                f"--processes {processes} needs a GPU for each process, and {cards} "
                f"{'is' if cards == 1 else 'are'} visible"
                + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
                + f": use --processes {cards} or fewer")


def die_with_parent(sig: int) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies. torchrun starts its workers in
    sessions of their own, so without it a killed `llamalab train` would leave them training on (and rotating
    the checkpoints a resumed run reads)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG


def _worker(lab_root: str, folder: str) -> None:
    from llamalab.models import load_tokenizer, resolve_model
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.task import load_task
    from llamalab.training.experiment import resolve_experiment
    from llamalab.training.trainer import _run_training

    die_with_parent(signal.SIGKILL)
    import torch

    if torch.cuda.is_available():  # each process its own card, before anything (the plan's matmul) touches one
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    lab = find_lab(lab_root)
    record = RunRecord.load(Path(folder))
    experiment, _ = resolve_experiment(record.config, str(Path(folder) / "config.yaml"))
    task = load_task(lab.task_path(experiment.task), lab.root)
    model_ref = resolve_model(experiment.base_model, lab.root)
    first = int(os.environ.get("RANK", "0")) == 0
    console = Console(stderr=True, quiet=not first)
    _run_training(record, experiment, task, load_task_data(task), model_ref, load_tokenizer(model_ref),
                  record.run.prompt.format, console, [], processes=int(os.environ["WORLD_SIZE"]))


if __name__ == "__main__":
    try:
        _worker(*sys.argv[1:3])
    except LlamalabError as exc:  # every worker meets it (the same data, the same steps): the first one says it
        if int(os.environ.get("RANK", "0")) == 0:
            from llamalab.runs.files import write_text_atomic

            write_text_atomic(Path(sys.argv[2]) / WORKER_ERROR, str(exc))
        sys.exit(1)
