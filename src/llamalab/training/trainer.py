"""The training recipe: a task's examples, encoded exactly as evaluation encodes them, through TRL's SFTTrainer.

Using TRL's trainer (not a hand-rolled loop) means the same recipe runs unchanged under
`accelerate launch` on several GPUs or on a Slurm cluster. Loss falls only on the answer tokens.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from llamalab.config import LlamalabError, apply_overrides
from llamalab.lab import Lab
from llamalab.models import ModelRef, load_tokenizer, resolve_model, save_tokenizer
from llamalab.runs.files import staged_folder, write_text_atomic
from llamalab.runs.record import TRAIN_LOG, Inputs, RunRecord, finished_run, has_unfinished, peak_memory_mb, resume_run
from llamalab.tasks.data import Example, load_task_data
from llamalab.tasks.prompts import Prompter, store_chat_template
from llamalab.tasks.task import load_task
from llamalab.training.attention import use_rows_attention
from llamalab.training.experiment import Experiment, load_experiment, resolve_experiment
from llamalab.training.plan import PeakMemory, check_processes, fsdp_shards


def train(
    lab: Lab, experiment: Experiment | str, *, name: str | None = None, resume: bool = False, reuse: bool = False,
    console: Console | None = None, callbacks: list | None = None, processes: int = 1, **overrides: Any,
) -> RunRecord:
    """Fine-tune and return the finished run's record (`record.run` is a typed `TrainRun`).

    `experiment` is the name of a file in experiments/ or an `Experiment`; `overrides` change its settings
    (`learning_rate=1e-4`, `lora={"r": 4}`, or dotted keys via `**{"lora.r": 4}`). The run is named `name`,
    else after the file, or TASK-METHOD for an `Experiment`. With `resume`, continue the latest unfinished
    run of the same name and settings from its last checkpoint. With `reuse`, return the latest finished run of
    the same name and settings if there is one, else continue an unfinished one, else start afresh (how studies
    skip finished cells and continue killed ones). `callbacks` are extra transformers TrainerCallbacks (e.g. for
    notebooks or custom logging). With `processes` N > 1, N data-parallel processes (DDP through accelerate:
    gloo on CPUs, NCCL on GPUs) share each batch: `batch_size` stays the global batch, so the run's numbers do
    not depend on N (an epoch's partial last batch is filled up with rows that count for nothing: `with_fillers`).
    """
    console = console or Console(stderr=True)
    if isinstance(experiment, Experiment):
        name = name or f"{experiment.task}-{experiment.method}"
        source = f"experiment {name!r}"
        experiment, resolved = resolve_experiment(
            apply_overrides(experiment.model_dump(mode="json"), overrides), source)
    else:
        path = lab.experiment_path(experiment)
        name, source = name or path.stem, str(path)
        experiment, resolved = load_experiment(path, overrides)
    check_processes(experiment, processes)  # before any run folder exists
    if processes > 1:
        from llamalab.training.distributed import check_devices

        if callbacks:
            raise LlamalabError("callbacks run in this process only: train with processes=1 to use them")
        check_devices(processes)
    try:
        task_path = lab.task_path(experiment.task)
    except LlamalabError as exc:
        raise LlamalabError(f"{source}: key 'task': {exc}") from None
    task = load_task(task_path, lab.root)
    model_ref = resolve_model(experiment.base_model, lab.root)
    data = load_task_data(task)
    inputs = Inputs(model_ref.revision, data.file_hashes, task.definition_sha256("train"))  # else not this run
    if reuse:
        if done := finished_run(lab.runs_dir, "train", resolved, name, inputs):
            return done
        resume = has_unfinished(lab.runs_dir, "train", name, resolved, inputs)
    elif not resume and has_unfinished(lab.runs_dir, "train", name, resolved, inputs):
        console.print("[yellow]note:[/] an unfinished run with these settings exists (a killed or interrupted one, "
                      "with its checkpoints): this starts a new one from step 0; add --resume to continue it instead")
    tokenizer = load_tokenizer(model_ref)  # fails fast (before any run folder exists) if the model is missing
    _check_targets(experiment, model_ref, source)
    if experiment.method == "qlora":
        check_bitsandbytes()
    prompt_format = experiment.format or task.prompt.format
    _check_some_fit(Prompter(task, tokenizer, prompt_format),
                    training_subset(data.split("train"), experiment.train_examples, experiment.seed),
                    experiment.max_length, source)

    if resume:
        record = resume_run(lab.runs_dir, "train", name, resolved, inputs)
        console.print(f"Resuming run [bold]{record.id}[/]")
    else:
        from llamalab.evaluation.systems import canonical_model_name

        record = RunRecord.create(
            lab.runs_dir,
            "train",
            name,
            resolved,
            experiment=name,
            task={"name": task.name, "data_sha256": data.file_hashes,
                  "definition_sha256": task.definition_sha256("train")},
            # as an evaluation of the base model names it (`./models/x`, `models/x/`, its absolute path: one name)
            model={"name": canonical_model_name(lab, model_ref.name), "revision": model_ref.revision},
            prompt={"format": prompt_format, "template": task.prompt.template, "system": task.prompt.system},
        )
        write_text_atomic(record.folder / ".gitignore", "checkpoints/\n")
        if prompt_format == "chat":  # the template the model was trained with is part of the record
            record.update(prompt={**record.run.prompt.model_dump(), **store_chat_template(tokenizer, record.folder)})
    with record.tracking():
        if resume:
            _check_checkpoint_fits(record, experiment, processes)
        if processes == 1:
            _run_training(record, experiment, task, data, model_ref, tokenizer, prompt_format, console,
                          callbacks or [])
        else:
            from llamalab.training.distributed import launch

            launch(lab, record, experiment, processes, console)
    return record


def check_bitsandbytes() -> None:
    """Refuse method: qlora where bitsandbytes is not installed (before any run folder exists, and in `plan`)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise LlamalabError(f"method: qlora needs bitsandbytes ({exc}): `pip install bitsandbytes`, or use "
                            "method: lora") from None


def _check_some_fit(prompter: Prompter, examples: list[Example], max_length: int, source: str) -> None:
    """Refuse, before any run folder exists, a max_length that no training example fits in (training would skip
    them all), saying the shortest example's length; stops at the first that fits."""
    shortest = None
    for example in examples:
        length = len(prompter.encode_training(example).input_ids)
        if length <= max_length:
            return
        shortest = length if shortest is None else min(shortest, length)
    if shortest is not None:
        raise LlamalabError(f"{source}: key 'max_length': all {len(examples):,} training examples are longer than "
                            f"max_length={max_length} tokens (the shortest has {shortest:,}): raise max_length to "
                            f"at least {shortest:,}")


def _check_checkpoint_fits(record: RunRecord, experiment: Experiment, processes: int) -> None:
    """A full fine-tune's checkpoint is FSDP's (weights and AdamW state gathered by it) when written by several
    processes, the Trainer's own when by one: each resumes only the same way, and FSDP's only in as many
    processes as wrote it (each wrote its own random state; resharding into another number is not tested)."""
    from llamalab.training.callbacks import latest_complete_checkpoint  # imports transformers

    checkpoint = latest_complete_checkpoint(record.folder / "checkpoints")
    if checkpoint is None or experiment.method != "full":
        return
    sharded = any(p.name.startswith("pytorch_model_fsdp") for p in checkpoint.iterdir())
    writers = len(list(checkpoint.glob("rng_state_*.pth")))  # one per process (rng_state.pth from one alone)
    if sharded != fsdp_shards(experiment, processes) or (sharded and writers and writers != processes):
        how = (f"{writers} processes (FSDP): resume it with --processes {writers}" if sharded and writers else
               "several processes (FSDP): resume it with --processes 2 or more" if sharded else
               "one process: resume it with --processes 1")
        raise LlamalabError(f"run {record.id}'s {checkpoint.name} was written by a full fine-tune in {how}")


def _check_targets(experiment: Experiment, model_ref: ModelRef, source: str) -> None:
    """Refuse LoRA on an output layer that is the input embedding (tied weights): merged for evaluation and
    export, its update would land in the shared matrix and change the inputs too, a model never trained."""
    from llamalab.training.plan import Shape, check_targets

    config = Path(model_ref.path) / "config.json"
    shape = Shape.of_folder(model_ref.path) if config.is_file() else None  # a model llamalab cannot plan: now
    targets = experiment.lora.target_modules
    if shape is not None and experiment.method != "full":
        check_targets(shape, targets, source, model_ref.name)
    names = [targets] if isinstance(targets, str) else targets  # one name, or a pattern PEFT matches
    if experiment.method == "full" or targets == "all-linear" or not any("lm_head" in n for n in names):
        return  # all-linear leaves the output layer out
    if shape is not None and shape.tied:
        raise LlamalabError(f"{source}: key 'lora.target_modules': {model_ref.name} ties its output layer (lm_head) "
                            "to its input embeddings, so a merged LoRA on lm_head would change both; leave lm_head "
                            "out of target_modules")


def _run_training(
    record, experiment: Experiment, task, data, model_ref: ModelRef, tokenizer, prompt_format, console,
    callbacks: list, processes: int = 1,
) -> None:
    """Train in this process; with `processes` > 1 this is one of them (launched by training/distributed.py), and
    only the first writes the log, the weights and the record."""
    import torch
    from transformers import PrinterCallback

    from llamalab.training.callbacks import ProgressCallback, latest_complete_checkpoint  # imports transformers

    started = time.perf_counter()
    prompter = Prompter(task, tokenizer, prompt_format)
    examples = training_subset(data.split("train"), experiment.train_examples, experiment.seed)
    if experiment.train_examples is not None and experiment.train_examples > len(examples):
        console.print(f"[yellow]train_examples {experiment.train_examples:,} is more than the train split holds: "
                      f"training on all {len(examples):,} (the record's data_used says so)[/]")
    dataset, skipped = build_dataset(prompter, examples, experiment.max_length)
    if skipped:
        console.print(f"[yellow]skipped {skipped} training example(s) over max_length={experiment.max_length}[/]")
    if len(dataset) == 0:
        raise LlamalabError("no training examples left: raise max_length or check the task's train split")

    fillers = -len(dataset) % experiment.batch_size if processes > 1 else 0
    plan = _plan(record, experiment, model_ref, dataset, console, processes)
    # On a GPU LoRA's frozen base is bf16 where the run computes in bf16 (float32 with `bf16: no`); a full fine-tune
    # keeps float32 weights, bf16 computing through autocast (or FSDP's bf16 policy): AdamW's small updates would
    # round away in bf16 weights.
    gpu_bf16_base = torch.cuda.is_available() and experiment.method != "full" and _use_bf16(experiment)
    dtype = torch.bfloat16 if gpu_bf16_base else torch.float32
    with PeakMemory() as peak:
        model = _load_for_training(experiment, model_ref, dtype, plan.checkpointing)
        use_rows_attention(model)  # padding-free batches attended row by row: the masked numbers, less work
        checkpoints = record.folder / "checkpoints"
        resume_from = latest_complete_checkpoint(checkpoints)
        trainer = _answer_loss_trainer(fillers)(
            model=model,
            args=_sft_config(experiment, checkpoints, plan.checkpointing, processes),
            train_dataset=with_fillers(dataset, fillers),
            processing_class=tokenizer,
            peft_config=_peft_config(experiment),
            callbacks=[ProgressCallback(console, record.folder / TRAIN_LOG), *callbacks],
        )
        trainer.remove_callback(PrinterCallback)  # our progress bar replaces its per-step dict printing
        n_tokens = sum(len(ids) for ids in dataset["input_ids"])
        progress = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback))
        setup_s = time.perf_counter() - started
        if record.run.resumed and resume_from is None:  # killed before its first checkpoint was complete
            console.print(f"[yellow]no complete checkpoint in {checkpoints}: training from step 0[/] (a checkpoint "
                          f"is saved every {experiment.save_steps} steps: `save_steps`)")
        start_epoch = _state(resume_from).get("epoch", 0) if resume_from else 0
        start_step = _state(resume_from).get("global_step", 0) if resume_from else 0
        if resume_from and _completed(resume_from):
            # killed after the last checkpoint (while the weights or the record were written): training is done,
            # but the Trainer resumed there would take one step more (it checks the step count after each step).
            # It still loads the checkpoint (FSDP's too, into the sharded model) and runs no epoch.
            console.print(f"{resume_from.name} is the run's last step: nothing left to train")
            trainer._run_epoch = lambda *args, **kwargs: None
        elif trainer.is_world_process_zero():  # before it trains: a session killed later keeps what it computed
            _record_session(record, start_step, _precision(trainer, experiment, dtype), plan)
        try:
            trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        finally:  # on an error too: the live bar gives the terminal back, a log gets its last line
            progress.on_train_end()
        train_s = time.perf_counter() - started - setup_s
    weights = _gathered_weights(trainer) if trainer.is_fsdp_enabled else None
    peaks = _every_process(peak.mb)  # the plan is one process's: each process's peak is measured against it
    if not trainer.is_world_process_zero():
        return
    _save_weights(trainer, experiment, record.folder, weights)

    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-max(1, len(history) // 10) :]
    timings = dict(record.run.timings)
    # train_s and train_epochs: the sessions that recorded their time (a killed one records none), so their ratio
    # is the time an epoch took
    trained_epochs = (trainer.state.epoch or 0) - start_epoch
    timings.update(setup_s=round(setup_s, 2), train_s=round(timings.get("train_s", 0) + train_s, 2),
                   train_epochs=round(timings.get("train_epochs", 0) + trained_epochs, 4))
    record.update(
        metrics={
            "first_loss": history[0]["loss"],
            # Mean of the last 10% of logged steps: one step's loss is too noisy to compare runs by.
            "final_loss": round(sum(h["loss"] for h in last) / len(last), 6),
            "steps": trainer.state.global_step,
            "epochs": round(trainer.state.epoch or 0, 3),
        },
        optimizer=_optimizer_use(trainer.args, experiment, trainer.state.max_steps),
        data_used={"train_examples": len(dataset), "skipped_too_long": skipped, "tokens_per_epoch": n_tokens,
                   "split_size": len(data.split("train"))},
        # this session's tokens over its time; a session that trained nothing keeps what was recorded before
        throughput={"tokens_per_s": round(progress.tokens_this_session / max(train_s, 1e-9), 1)}
        if progress.tokens_this_session else dict(record.run.throughput),
        memory=_memory(record, plan, peaks, processes, trained=trainer.state.global_step > start_step),
        # this process's (with several, the launcher's own would say nothing), and at least an earlier session's
        peak_memory_mb=max(record.run.peak_memory_mb or 0, peak_memory_mb()),
        timings=timings,
        processes=processes,
        parallelism=None if processes == 1 else "fsdp" if trainer.is_fsdp_enabled else "ddp",
        precision=_precision(trainer, experiment, dtype),
    )


def _precision(trainer, experiment: Experiment, dtype) -> str:
    """How the training computes: on GPUs accelerate's FSDP computes each layer in bf16 by its mixed-precision
    policy, not autocast."""
    if trainer.is_fsdp_enabled and _use_bf16(experiment) and not trainer.autocast_bf16:
        return "bfloat16 (FSDP mixed precision)"
    return "bfloat16 autocast" if _use_bf16(experiment) else str(dtype).removeprefix("torch.")


def _record_session(record: RunRecord, start_step: int, precision: str, plan) -> None:
    """Record how this session computes, from `start_step` on. An earlier session's steps past that checkpoint
    are trained again, so its entry goes; a resumed run recorded before sessions were has no first entry."""
    kept = [s.model_dump() for s in record.run.sessions or [] if s.from_step < start_step]
    record.update(sessions=[*kept, {"from_step": start_step, "precision": precision,
                                    "activation_checkpointing": plan.checkpointing, "device": plan.device}])


def _memory(record: RunRecord, plan, peaks: list[float | None], processes: int, trained: bool) -> dict:
    """The plan and the measured peak of a session that trained; one that only loaded the last checkpoint (nothing
    left to train) keeps the peak its training measured."""
    measured = {"measured_mb": max((p for p in peaks if p is not None), default=None),
                **({"measured_mb_each": peaks} if processes > 1 else {})}
    if not trained:  # its training's peak, or none (killed after its last checkpoint, before it said): a session
        # that only loaded weights measured no training (a negative peak, once the model it held was let go)
        known = record.run.memory is not None and record.run.memory.measured_mb is not None
        measured = {"measured_mb": record.run.memory.measured_mb if known else None,
                    **({"measured_mb_each": record.run.memory.measured_mb_each if known else None}
                       if processes > 1 else {})}
    return {**plan.to_record(), **measured}


def _every_process(value: float | None) -> list[float | None]:
    """`value` from every training process, in rank order (all of them must call this)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    values: list[float | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _optimizer_use(args, experiment: Experiment, steps: int) -> dict:
    """The optimizer's settings as the Trainer runs them, its defaults included (for the record and methods)."""
    return {"name": str(args.optim.value if hasattr(args.optim, "value") else args.optim),
            "betas": (args.adam_beta1, args.adam_beta2), "epsilon": args.adam_epsilon,
            "max_grad_norm": args.max_grad_norm or None,
            # warmup_ratio of the run's steps, rounded up, as the Trainer counts them; "constant" has no warm-up
            "warmup_steps": 0 if experiment.lr_scheduler == "constant" else args.get_warmup_steps(steps)}


def _plan(record, experiment: Experiment, model_ref: ModelRef, dataset, console, processes: int):
    """Predict the run's memory and time on this device (its matmul rate measured now, in under a second) and
    decide activation checkpointing (said aloud)."""
    from dataclasses import replace

    from llamalab.training.plan import (
        Shape,
        flops_per_token,
        measure_matmul_tflops,
        past_efficiency,
        plan_training,
        resolve_device,
    )

    lengths = [len(ids) for ids in dataset["input_ids"]]
    answers = [sum(1 for t in labels if t != -100) for labels in dataset["labels"]]
    device = resolve_device()
    device = replace(device, matmul_tflops=measure_matmul_tflops(device))
    plan = plan_training(experiment, model_ref.path, lengths, answers, device,
                         past_efficiency(record.folder.parent, device, experiment.method, processes,
                                         flops_per_token(Shape.of_folder(model_ref.path), experiment.method)),
                         processes)
    state = "on" if plan.checkpointing else "off"
    console.print(f"memory plan: {plan.peak_mb:,.0f} MiB predicted on {escape(plan.device)}; activation "
                  f"checkpointing {state} ({escape(plan.reason)})")
    return plan


def _load_for_training(experiment: Experiment, model_ref: ModelRef, dtype, checkpointing: bool):
    """The base model at the training precision; for QLoRA in 4-bit NF4, prepared for k-bit training."""
    import torch
    from transformers import AutoModelForCausalLM

    if experiment.method != "qlora":
        return AutoModelForCausalLM.from_pretrained(model_ref.path, dtype=dtype)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    check_bitsandbytes()
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_ref.path, quantization_config=quantization, dtype=torch.bfloat16,
            device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if torch.cuda.is_available() else "cpu")
    except (ImportError, RuntimeError, ValueError) as exc:
        raise LlamalabError(f"method: qlora: bitsandbytes cannot load a 4-bit model on this machine ({exc}); use "
                            "method: lora") from None
    return prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None)


def with_fillers(dataset, count: int):
    """`dataset` and `count` filler rows after it: one token each, no answer, so they add nothing to the loss.

    With N processes an epoch's partial last batch is split between them; accelerate would fill it up with rows
    from the start of the epoch (trained twice), and handing the processes unequal shares stops DDP, whose every
    process must take each step. Filled with rows that count for nothing, each step's loss and gradient are one
    process's (the loss is summed over every process's answer tokens, then divided by their number).
    """
    if not count:
        return dataset
    from datasets import Dataset, concatenate_datasets

    filler = {"input_ids": dataset[0]["input_ids"][:1], "labels": [-100]}
    return concatenate_datasets([dataset, Dataset.from_list([filler] * count, features=dataset.features)])


def _answer_loss_trainer(fillers: int = 0):
    """TRL's SFTTrainer, with the output layer evaluated only where a label is (the answer tokens), and
    `fillers` rows (the last of the dataset: `with_fillers`) placed after each epoch's shuffled rows.

    A classification answer is ~2 of ~35 tokens: projecting every position onto a 49k vocabulary
    (and back-propagating through it) cost about a quarter of each step on a CPU. The answer positions are found
    by the collator, on the CPU: found on a GPU (`.nonzero()`) they would stop it to wait, every step.
    """
    import torch
    from accelerate.data_loader import SeedableRandomSampler
    from trl import SFTTrainer

    class FilledEpochs(torch.utils.data.Sampler):
        """Each epoch: the rows in the order one process shuffles them (accelerate's seeded sampler, which
        accelerate would put in place of the Trainer's), then the fillers."""

        def __init__(self, rows: int, seed: int):
            self.shuffled = SeedableRandomSampler(range(rows), data_seed=seed)
            self.fillers = range(rows, rows + fillers)

        def __iter__(self):
            yield from self.shuffled
            yield from self.fillers

        def __len__(self):
            return len(self.shuffled) + len(self.fillers)

        def set_epoch(self, epoch: int) -> None:
            self.shuffled.set_epoch(epoch)

    class AnswerLossSFTTrainer(SFTTrainer):
        autocast_bf16 = False  # set where FSDP on CPUs leaves bf16 to autocast (below)

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            collate = self.data_collator

            def with_answer_positions(rows):
                batch = collate(rows)
                batch["answer_positions"] = (batch["labels"][:, 1:] != -100).any(dim=0).nonzero().squeeze(-1)
                if fillers:
                    batch["filler_tokens"] = sum(len(r["input_ids"]) for r in rows if max(r["labels"]) == -100)
                return batch

            self.data_collator = with_answer_positions

        def _get_train_sampler(self, train_dataset=None):
            if not fillers:
                return super()._get_train_sampler(train_dataset)
            self.filled_epochs = FilledEpochs(len(self.train_dataset) - fillers, self.args.data_seed)
            return self.filled_epochs

        def get_train_dataloader(self):
            """With fillers, the loader is told which sampler to set each epoch on, as accelerate tells it of its
            own: through the processes' shards (and a resume's skipped batches) it reaches no other, and a run
            resumed in a later epoch would take the first epoch's order."""
            loader = super().get_train_dataloader()
            if fillers:
                loader.set_sampler(self.filled_epochs)
            return loader

        def _track_num_input_tokens(self, inputs):
            """Tokens seen (for tokens/s): the training rows', not the fillers'."""
            filler_tokens = inputs.pop("filler_tokens", 0)
            super()._track_num_input_tokens({**inputs, "input_ids": inputs["input_ids"].flatten()[filler_tokens:]})

        def create_accelerator_and_postprocess(self):
            """FSDP on CPUs too. accelerate turns its FSDP mode on only for GPU-like process groups, while torch's
            `fully_shard` works over gloo; so on CPUs we switch it on ourselves, in both of accelerate's shared
            states (each `AcceleratorState()` call copies the process state over its own)."""
            from accelerate.state import PartialState
            from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

            _ = self.args.device  # sets up the process state now, not after the switch below
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            if self.args.fsdp_plugin_args is None:
                return
            if state.distributed_type == DistributedType.FSDP:  # on GPUs, by accelerate's own bf16 policy
                state.fsdp_plugin.mixed_precision_policy = fp32_reduction(state.fsdp_plugin.mixed_precision_policy)
                return
            if state.distributed_type != DistributedType.MULTI_CPU:
                return
            # No FSDP mixed-precision policy (which would compute every layer, norms too, in bf16): the weights
            # stay float32 and bf16 comes from autocast, as in one process, so N processes give its numbers.
            state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            self.autocast_bf16 = state.mixed_precision == "bf16"
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            keep = inputs.pop("answer_positions")
            inputs.pop("filler_tokens", None)  # counted by _track_num_input_tokens
            targets = labels[:, 1:]  # position t predicts token t + 1
            with torch.autocast("cpu", torch.bfloat16, enabled=self.autocast_bf16):
                outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            logits = outputs.logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets[:, keep].reshape(-1), ignore_index=-100, reduction="sum"
            )
            count = num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum()
            loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # the count is over every process's rows, and DDP averages the gradients: as the Trainer does
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    return AnswerLossSFTTrainer


def training_subset(examples: list[Example], size: int | None, seed: int) -> list[Example]:
    """A seeded random subset (all examples when `size` is None or larger than the split)."""
    if size is None or size >= len(examples):
        return list(examples)
    return random.Random(seed).sample(examples, size)


def build_dataset(prompter: Prompter, examples: list[Example], max_length: int):
    """Pre-tokenized rows: `labels` is -100 on prompt tokens, so loss falls only on the answer."""
    from datasets import Dataset

    rows, skipped = [], 0
    for ex in examples:
        encoded = prompter.encode_training(ex)
        if len(encoded.input_ids) > max_length:
            skipped += 1
            continue
        rows.append({
            "input_ids": encoded.input_ids,
            "labels": [-100] * len(encoded.prompt_ids) + encoded.answer_ids,
        })
    return Dataset.from_list(rows), skipped


def _sft_config(experiment: Experiment, output_dir: Path, checkpointing: bool = False, processes: int = 1):
    import torch
    from trl import SFTConfig

    fsdp = fsdp_shards(experiment, processes)
    config = SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=experiment.batch_size // processes,  # batch_size is the global batch
        gradient_accumulation_steps=experiment.grad_accum,
        learning_rate=experiment.learning_rate,
        lr_scheduler_type=experiment.lr_scheduler,
        warmup_steps=experiment.warmup_ratio,
        weight_decay=experiment.weight_decay,
        max_grad_norm=experiment.max_grad_norm or 0.0,  # 0: the Trainer does not clip
        num_train_epochs=experiment.epochs,
        max_steps=experiment.max_steps or -1,
        seed=experiment.seed,
        data_seed=experiment.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss stays NaN (and stops the run: callbacks.diverged), not 0
        save_strategy="steps",
        save_steps=experiment.save_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=True,
        bf16=_use_bf16(experiment),
        # Recomputing activations costs ~28% of a step (measured on a 2-core CPU): only when the plan says the run
        # would not fit otherwise (activation_checkpointing: auto), or when asked.
        activation_checkpointing=checkpointing and not fsdp,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing and not fsdp else None,
        # Padding-free batches (sequences concatenated, attention kept per sequence) waste no compute on pads;
        # we truncate ourselves, so TRL's max_length stays off.
        padding_free=True,
        max_length=None,
        use_cpu=not torch.cuda.is_available(),
        # One fused kernel for the whole AdamW update (on a 2-core CPU: 13 ms a step instead of 48 for the
        # embedded model's LoRA parameters, one loop over tensors)
        optim="adamw_torch_fused",
        dataloader_num_workers=0,
        include_num_input_tokens_seen=True,
        ddp_backend="gloo" if processes > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False if processes > 1 else None,
        fsdp=fsdp or None,
        fsdp_config=fsdp_config(checkpointing) if fsdp else None,
    )
    if processes == 1 and config.n_gpu > 1:
        # One process sees several GPUs (a workstation, a Slurm job's allocation): the Trainer would wrap the model
        # in nn.DataParallel, which TRL refuses. Train on the first; `--processes N` uses them all.
        config._n_gpu = 1
    return config


def fp32_reduction(policy):
    """accelerate's FSDP2 bf16 policy with the gradients averaged across processes in float32, not bfloat16 (whose
    8-bit mantissa would round each process's share before the float32 AdamW update sees it)."""
    from dataclasses import replace

    import torch

    if policy is None or policy.param_dtype != torch.bfloat16:
        return policy
    return replace(policy, reduce_dtype=torch.float32)


def fsdp_config(checkpointing: bool) -> dict:
    """FSDP2 for a full fine-tune in several processes: each Llama layer's weights, gradients and AdamW state
    sharded across the processes, gathered a layer at a time; activations recomputed by FSDP itself when the plan
    turned checkpointing on; saved whole (one file, as from one process)."""
    return {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
            "activation_checkpointing": checkpointing, "state_dict_type": "FULL_STATE_DICT"}


def _peft_config(experiment: Experiment):
    if experiment.method == "full":
        return None
    from peft import LoraConfig

    spec = experiment.lora
    return LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=spec.target_modules,
        task_type="CAUSAL_LM",
    )


def _use_bf16(experiment: Experiment) -> bool:
    import torch

    if experiment.bf16 != "auto":
        return experiment.bf16 == "yes"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    from llamalab.training.plan import cpu_has_bf16

    return cpu_has_bf16()


def _gathered_weights(trainer) -> dict:
    """The whole model's weights from FSDP's shards (a step every process takes; the first gets them), without
    the copies of tied weights (e.g. an output layer that is the embedding), as one process would save them."""
    weights = trainer.accelerator.get_state_dict(trainer.model)
    first = {}
    for name, parameter in trainer.model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(parameter), name) != name:
            weights.pop(name, None)
    return weights


def _state(checkpoint: Path) -> dict:
    import json

    return json.loads((checkpoint / "trainer_state.json").read_text())


def _completed(checkpoint: Path) -> bool:
    """Whether the checkpoint is of the run's last step."""
    state = _state(checkpoint)
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def _save_weights(trainer, experiment: Experiment, folder: Path, weights: dict | None = None) -> None:
    """Write the adapter (LoRA) or full model (`weights`: its gathered state under FSDP), atomically: a folder
    appears only when complete."""
    name = "model" if experiment.method == "full" else "adapter"
    with staged_folder(folder / name) as staging:
        trainer.model.save_pretrained(staging, state_dict=weights, safe_serialization=True)
        if experiment.method == "full":
            save_tokenizer(trainer.processing_class, staging)
