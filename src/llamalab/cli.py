"""The `llamalab` command line: a thin layer over functions you can also call from a notebook."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llamalab.assignments.cli import assignment_app
from llamalab.backends.registry import backend_help
from llamalab.config import LlamalabError
from llamalab.lab import find_lab, init_lab
from llamalab.tasks.task import SPLITS

if TYPE_CHECKING:
    from llamalab.runs.schema import PredictionSummary

app = typer.Typer(help="Fine-tune open models and compare them head-to-head, with honest statistics.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Check and inspect a task's data.", no_args_is_help=True)
app.add_typer(data_app, name="data")
site_app = typer.Typer(help="Build or preview the lab website.", no_args_is_help=True)
app.add_typer(site_app, name="site")
post_app = typer.Typer(help="Weekly findings posts.", no_args_is_help=True)
app.add_typer(post_app, name="post")
study_app = typer.Typer(help="Designed studies (studies/NAME.yaml): grids of fine-tunes x seeds against comparators.",
                        no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(assignment_app, name="assignment")
# Piped output (logs, CI) gets a wide fixed width instead of rich's 80 columns, so tables stay readable.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
out = Console(width=None if sys.stdout.isatty() else 140)

LabOption = Annotated[Path | None, typer.Option("--lab", help="lab folder (default: the one containing the cwd)")]


def _split(value: str) -> str:
    if value not in SPLITS:
        raise typer.BadParameter(f"{value!r} is not a split: use train, dev or test")
    return value


SplitOption = Annotated[str, typer.Option(help="the split: train, dev or test", callback=_split)]


@app.command()
def init(target: Path) -> None:
    """Create a new lab folder from the example lab (tasks, experiments, licensed data)."""
    notes: list[str] = []
    lab = init_lab(target, note=notes.append)
    console.print(f"Created lab [bold]{lab.config.name}[/] in {lab.root}")
    for line in notes:  # how the lab's git repository was set up, or why it was not
        console.print(line, markup=False)


@data_app.command("check")
def data_check(
    task: str,
    lab: LabOption = None,
    model: Annotated[str, typer.Option(help="model whose tokenizer measures lengths")] = "smollm2-135m-instruct",
    max_length: Annotated[int | None, typer.Option(help="warn about examples longer than this", min=1)] = None,
    max_new_tokens: Annotated[int | None, typer.Option(
        help="warn about gold answers longer than this generation budget (default as eval: 16 for labels, else 256)",
        min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Counts, label balance, token lengths, duplicates, train/test overlap and bad rows (file:line)."""
    from llamalab.models import load_tokenizer, resolve_model
    from llamalab.tasks.checks import check_task_data
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task

    the_lab = find_lab(lab)
    spec = load_task(the_lab.task_path(task), the_lab.root)
    data = load_task_data(spec, strict=False)
    prompter = Prompter(spec, load_tokenizer(resolve_model(model, the_lab.root)), spec.prompt.format)
    report = check_task_data(data, spec, prompter, max_length, max_new_tokens)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_check(spec.name, report)
    if not report.ok:
        raise typer.Exit(1)


def _print_check(name: str, report) -> None:
    entities = bool(report.entity_types)
    table = Table(title=f"task {escape(name)}")
    table.add_column("split", overflow="fold")
    table.add_column("examples", justify="right", overflow="fold")
    table.add_column("tokens min / mean / p95 / max", justify="right", overflow="fold")
    table.add_column("answer tokens mean / max", justify="right", overflow="fold")
    table.add_column("entity types (entities)" if entities else "labels (smallest, largest)", overflow="fold")
    for split, count in report.counts.items():
        t, a = report.token_lengths.get(split, {}), report.answer_lengths.get(split, {})
        balance = (report.entity_types if entities else report.label_balance).get(split, {})
        spread = ", ".join(f"{k} {v}" for k, v in balance.items())
        if len(balance) > 4:
            kind = "types" if entities else "labels"
            lo, hi = min(balance, key=balance.get), max(balance, key=balance.get)
            spread = (f"{len(balance)} {kind}, {balance[lo]} each" if balance[lo] == balance[hi]
                      else f"{len(balance)} {kind}, fewest {lo} {balance[lo]}, most {hi} {balance[hi]}")
        lengths = f"{t.get('min')} / {t.get('mean')} / {t.get('p95')} / {t.get('max')}" if t else ""
        answers = f"{a.get('mean')} / {a.get('max')}" if a else ""
        table.add_row(escape(split), str(count), lengths, answers, escape(spread))
    out.print(table)
    # Messages quote data and file names: markup-like text such as "[text, label]" must print as written.
    for warning in report.warnings:
        out.print(f"[yellow]warning[/] {escape(warning)}")
    for error in report.errors:
        out.print(f"[red]error[/] {escape(error)}")
    out.print("[green]data ok[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]")


@data_app.command("show")
def data_show(
    task: str,
    lab: LabOption = None,
    n: Annotated[int, typer.Option("-n", help="how many examples", min=1)] = 3,
    split: SplitOption = "train",
    model: str = "smollm2-135m-instruct",
    prompt_format: Annotated[str | None, typer.Option("--format", help="plain or chat (default: the task's)")] = None,
) -> None:
    """Examples exactly as the model sees them; tokens that carry the training loss are highlighted."""
    from llamalab.models import load_tokenizer, resolve_model
    from llamalab.tasks.data import load_task_data
    from llamalab.tasks.prompts import Prompter
    from llamalab.tasks.task import load_task

    if prompt_format not in (None, "plain", "chat"):
        raise LlamalabError(f"--format: use plain or chat (got {prompt_format!r})")
    the_lab = find_lab(lab)
    spec = load_task(the_lab.task_path(task), the_lab.root)
    tokenizer = load_tokenizer(resolve_model(model, the_lab.root))
    prompter = Prompter(spec, tokenizer, prompt_format or spec.prompt.format)
    for ex in load_task_data(spec).split(split)[:n]:
        encoded = prompter.encode_training(ex)
        text = Text()
        for ids, style in ((encoded.prompt_ids, "dim"), (encoded.answer_ids, "bold black on green")):
            for token in ids:
                text.append(tokenizer.decode([token]), style=style)
        out.rule(f"{ex.id}  ({len(encoded.prompt_ids)} prompt + {len(encoded.answer_ids)} loss tokens)")
        out.print(text)
    out.print("[bold black on green]highlighted[/]: tokens that carry the training loss")


@app.command()
def train(
    experiment: str,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. learning_rate=1e-4")] = None,
    resume: Annotated[bool, typer.Option(help="continue the latest unfinished run from its last checkpoint")] = False,
    processes: Annotated[int, typer.Option(
        help="data-parallel processes (gloo on CPUs, NCCL on GPUs; DDP for LoRA, FSDP for a full fine-tune); "
        "batch_size stays the global batch")] = 1,
    lab: LabOption = None,
) -> None:
    """Fine-tune as the experiment file says; writes a run folder under runs/."""
    from llamalab.config import parse_overrides
    from llamalab.training.trainer import train as run_training

    record = run_training(find_lab(lab), experiment, resume=resume, console=console, processes=processes,
                          **parse_overrides(overrides or []))
    m, rate = record.run.metrics, record.run.throughput.get("tokens_per_s")
    console.print(
        f"[green]finished[/] {record.id}: loss {m.first_loss:.3f} -> {m.final_loss:.3f} over {m.steps} steps"
        + (f", {rate:,.0f} tokens/s" if rate else " (no speed: the session that trained was killed before it "
           "recorded one)")
    )
    if (record.folder / "adapter").is_dir():
        console.print(f"adapter: {record.folder / 'adapter'}   merge it: llamalab export {record.id} OUT_DIR")
    else:
        console.print(f"model: {record.folder / 'model'}")
    out.print(record.id)


@app.command()
def plan(
    experiment: str,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. batch_size=16")] = None,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda, or a GPU's memory (24GB, 80GB); default: this machine")] = None,
    processes: Annotated[int, typer.Option(
        help="plan one of this many training processes (as `llamalab train --processes`)", min=1)] = 1,
    lab: LabOption = None,
) -> None:
    """Predict a training run's peak memory and time per epoch on a device, and the activation checkpointing
    it would choose; then how the plan compared with what the lab's past runs used."""
    from llamalab.config import parse_overrides
    from llamalab.training.plan import past_runs, plan_run

    the_lab = find_lab(lab)
    result = plan_run(the_lab, experiment, device, processes, **parse_overrides(overrides or []))
    each = f", each of {processes} processes" if processes > 1 else ""
    table = Table(title=escape(f"memory plan: {experiment} on {result.device}{each}"))
    table.add_column("part", overflow="fold")
    table.add_column("MiB", justify="right", overflow="fold")
    table.add_column("what", overflow="fold")
    notes = {"weights": "parameters at the training precision",
             "trainable": "gradients and AdamW's moments (LoRA: its weights too)",
             "activations": f"kept for the backward pass (the heaviest micro-batch, {result.tokens_per_batch:,} "
                            "tokens; LoRA under bf16 autocast: its frozen weights' bf16 copies too; on a CPU with "
                            "the freed buffers its allocator keeps)",
             "checkpointed": "the same with activation checkpointing",
             "logits": "output layer at the answer tokens",
             "workspace": "weight copies (a full fine-tune under bf16 autocast: autocast's; FSDP on a CPU: "
                          "measured)",
             "load": "peak while loading"}
    for part, mib in result.components.items():
        table.add_row(part, f"{mib:,.1f}", notes.get(part, ""))
    out.print(table)
    out.print(f"peak: {result.peak(False):,.0f} MiB without activation checkpointing, {result.peak(True):,.0f} MiB "
              f"with it; {result.budget_mb:,.0f} MiB usable. Activation checkpointing "
              f"{'on' if result.checkpointing else 'off'}: {escape(result.reason)}.")
    if result.seconds_per_epoch is not None:
        per_step = result.seconds_per_epoch / max(result.steps_per_epoch or 1, 1)
        run = (f"; the run stops at max_steps {result.max_steps}: {_seconds(per_step * result.max_steps)} s"
               if result.max_steps else "")
        out.print(f"time: {_seconds(result.seconds_per_epoch)} s per epoch ({result.steps_per_epoch} steps){run}, at "
                  f"{result.efficiency:.0%} of {result.matmul_tflops:,.3g} TFLOP/s ({escape(result.efficiency_source)})"
                  f"; {result.flops_per_token / 1e9:,.2f} GFLOP per token")
    else:
        out.print("time: not predicted: the device named by its memory alone has no known matmul rate (name a "
                  "device that is here, e.g. --device cpu or cuda, to time it)")
    past = past_runs(the_lab)
    if past:
        history = Table(title="the plan against the lab's past runs")
        for column in ("run", "device", "predicted MiB", "measured MiB", "error", "predicted s/epoch",
                       "measured s/epoch"):
            history.add_column(column, justify="left" if column in ("run", "device") else "right", overflow="fold")
        for row in past:
            history.add_row(row.id, escape(row.device), f"{row.predicted_mb:,.0f}", f"{row.measured_mb:,.0f}",
                            f"{row.memory_error:+.0%}", f"{row.predicted_s_per_epoch:,.0f}"
                            if row.predicted_s_per_epoch else "–",
                            f"{row.measured_s_per_epoch:,.0f}" if row.measured_s_per_epoch else "–")
        out.print(history)


def _seconds(value: float) -> str:
    """Seconds as the plan shows them: whole above 10 s, one decimal below (0.4 s printed as 0)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


@app.command("eval")
def evaluate(
    system: Annotated[str, typer.Argument(
        help="a base model (name, folder, .gguf file or hub id), a train run id, or an API model from lab.yaml")],
    task: Annotated[str, typer.Option(help="task name")],
    split: SplitOption = "test",
    prompt_format: Annotated[str | None, typer.Option("--format", help="plain or chat (default: the task's)")] = None,
    shots: Annotated[int, typer.Option(help="k-shot examples from the train split")] = 0,
    limit: Annotated[int | None, typer.Option(help="evaluate a seeded subset of this many examples")] = None,
    protocol: Annotated[str | None, typer.Option(
        help="loglikelihood (score every label) or generate (greedy + parse); default by task and system")] = None,
    backend: Annotated[str, typer.Option(help=f"{backend_help()}; API models use their API")] = "hf",
    max_new_tokens: Annotated[int | None, typer.Option(help="generation budget (default 16 for labels, else 256)")
                              ] = None,
    precision: Annotated[str, typer.Option(help="float32 (exact) or bfloat16 (bf16 compute; little faster on a CPU)")
                         ] = "float32",
    batch_size: Annotated[str, typer.Option(
        help="rows per batch, or auto: as many as the GPU's free memory holds (16 on a CPU)")] = "16",
    resume: Annotated[bool, typer.Option(help="continue the latest unfinished eval with the same options")] = False,
    lab: LabOption = None,
) -> None:
    """Evaluate a system on a task; every prediction is kept; metrics with 95% CIs."""
    from llamalab.config import parse_model
    from llamalab.evaluation.evaluate import EvalSettings
    from llamalab.evaluation.evaluate import evaluate as run_eval

    options = {"system": system, "task": task, "split": split, "format": prompt_format, "shots": shots,
               "limit": limit, "protocol": protocol, "backend": backend, "max_new_tokens": max_new_tokens,
               "precision": precision, "batch_size": batch_size}
    try:
        settings = parse_model(EvalSettings, options, "command line")
    except LlamalabError as exc:  # named as typed: --batch-size, not the setting's key batch_size
        option = {"format": "--format", "system": "SYSTEM"}
        raise LlamalabError(re.sub(r"key '(\w+)'", lambda m: option.get(m[1], "--" + m[1].replace("_", "-")),
                                   str(exc))) from None
    record = run_eval(find_lab(lab), settings, console=console, resume=resume)
    for name, m in record.run.metrics.items():
        console.print(f"{name}: {m.estimate:.4f}  [95% CI {m.low:.4f}, {m.high:.4f}]  n={m.n:,}")
    _print_predictions(record.run.predictions_summary)
    console.print(f"records: {record.folder}")
    out.print(record.id)


def _print_predictions(summary: PredictionSummary | None) -> None:
    """The prediction distribution against the gold one, parse failures, and how other label normalisations
    would have scored the same log-likelihoods."""
    if summary is None:
        return
    if summary.predicted:
        top = list(summary.predicted.items())[:5]
        more = len(summary.predicted) - len(top)
        gold = summary.gold or {}
        shown = ", ".join(f"{label} {count} ({gold.get(label, 0)} gold)" for label, count in top)
        console.print(f"predictions: {escape(shown)}{f', {more} more labels' if more > 0 else ''}")
    if summary.parse_failures is not None:
        console.print(f"unparsed outputs: {summary.parse_failures} of {summary.n}")
    if summary.truncated is not None:
        console.print(f"outputs cut off by --max-new-tokens: {summary.truncated} of {summary.n}")
    if summary.accuracy_by_normalization:
        shown = ", ".join(f"{how} {acc:.4f}" for how, acc in summary.accuracy_by_normalization.items())
        console.print(f"accuracy under each answer.normalize (same scores; choose on dev): {shown}")


@app.command("compare")
def compare_cmd(
    task: Annotated[str, typer.Option(help="task name")],
    split: SplitOption = "test",
    metric: Annotated[str | None, typer.Option(help="rank by this metric (default: the task's first)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    reference: Annotated[str | None, typer.Option(
        help="test every system against this one (run id or system label; default: the best)")] = None,
    lab: LabOption = None,
) -> None:
    """Every evaluated system on a task: metric ± CI, n, paired test against the best or a reference (Holm)."""
    from llamalab.evaluation.compare import compare, comparison_table, comparison_warnings

    result = compare(find_lab(lab), task, split, metric, reference=reference)
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    else:
        out.print(comparison_table(result))
        for warning in comparison_warnings(result):
            out.print(f"[yellow]warning[/] {escape(warning)}")


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="a finished train run id")],
    target: Path,
    gguf: Annotated[str | None, typer.Option(
        "--gguf", metavar="TYPE",
        help="write TARGET as one GGUF file for llama.cpp instead of a folder: f16, q8_0, q6_k, q5_k_m, q4_k_m, "
             "q4_1 or q4_0 (needs llama.cpp's converter: python -m llamalab.export --install-converter)")] = None,
    lab: LabOption = None,
) -> None:
    """Write a fine-tuned run as one merged Hugging Face model folder (base + LoRA folded in), or as a GGUF file."""
    from llamalab.evaluation.systems import resolve_system
    from llamalab.models import save_tokenizer
    from llamalab.runs.files import staged_folder

    if target.exists():
        raise LlamalabError(f"{target} exists: choose a new {'file' if gguf else 'folder'}")
    if gguf is not None:  # a bad type or a missing converter fails before the model loads
        from llamalab.export import check_tools, gguf_type

        gguf = gguf_type(gguf)
        if target.suffix.lower() != ".gguf":
            raise LlamalabError(f"{target}: with --gguf, name a .gguf file")
        check_tools(gguf)
    the_lab = find_lab(lab)
    system = resolve_system(the_lab, run)
    model, tokenizer = system.load()
    if gguf is None:
        with staged_folder(target) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            save_tokenizer(tokenizer, staging)
        console.print(f"merged model written to {target}")
        return

    import time

    from llamalab.evaluation.systems import canonical_name
    from llamalab.export import export_loaded, gguf_tensor_types
    from llamalab.runs.files import write_json_atomic

    started = time.monotonic()
    made_from = target.with_name(target.name + ".source.json")
    made_from.unlink(missing_ok=True)  # a stale one never describes the new file
    export_loaded(model, tokenizer, target, gguf, name=system.label)
    # what the file is: evaluated, it is this run's weights at `gguf`, not a base model of its own
    write_json_atomic(made_from, {"system": canonical_name(the_lab, run), "type": gguf,
                                  "revision": system.model.revision if system.model else None})
    types = ", ".join(f"{count} {name}" for name, count in gguf_tensor_types(target).items())
    console.print(f"{gguf} GGUF written to {target}: {target.stat().st_size / 2**20:.1f} MiB "
                  f"in {time.monotonic() - started:.0f} s (tensors: {types}); {made_from.name} next to it says it "
                  f"is run {system.train_run}'s weights (keep the two together: `llamalab eval` records it as such)")


@app.command()
def report(
    name: Annotated[str, typer.Option(help="writes reports/NAME/")] = "draft",
    split: SplitOption = "test",
    task: Annotated[list[str] | None, typer.Option(help="only these tasks (repeat the option)")] = None,
    reference: Annotated[str | None, typer.Option(
        help="test every system against this one (run id or system label; default: the best)")] = None,
    lab: LabOption = None,
) -> None:
    """A write-up draft from the run records: Markdown and LaTeX tables, figures, a methods section."""
    from llamalab.publish.report import build_report

    folder = build_report(find_lab(lab), name, split, task, reference)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        console.print(f"  {path.relative_to(folder)}")
    console.print(f"report written to {folder}")


@site_app.command("build")
def site_build(
    out: Annotated[Path | None, typer.Option(help="output folder (default: LAB/site)")] = None,
    lab: LabOption = None,
) -> None:
    """Generate the static website from the lab folder and its run records."""
    from llamalab.publish.site import build_site

    folder = build_site(find_lab(lab), out)
    console.print(f"site written to {folder}; open {folder / 'index.html'} or run `llamalab site serve`")


@site_app.command("serve")
def site_serve(
    port: int = 8000,
    base: Annotated[str, typer.Option(help="serve under this sub-path, as GitHub Pages does (e.g. /my-lab/)")] = "/",
    build: Annotated[bool, typer.Option(help="build the site first")] = True,
    lab: LabOption = None,
) -> None:
    """Preview the website on http://127.0.0.1:PORT (only this machine can reach it)."""
    from llamalab.publish.site import build_site, serve_site

    the_lab = find_lab(lab)
    folder = build_site(the_lab) if build else the_lab.root / "site"
    server = serve_site(folder, port, base)
    mount = "/" + base.strip("/") + "/" if base.strip("/") else "/"
    console.print(f"serving {folder} at http://127.0.0.1:{server.server_address[1]}{mount}index.html  (Ctrl-C stops)")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C only stops serving: nothing to say about work
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@study_app.command("run")
def study_run(
    name: str,
    executor: Annotated[str, typer.Option(
        help="local (cells on this machine) or slurm (one job per cell, through submitit)")
    ] = "local",
    max_parallel: Annotated[int | None, typer.Option(
        help="cells at once (default: local 1, in this process; slurm 4); local cells above 1 run in processes of "
             "their own, sharing the cores")] = None,
    retry_failed: Annotated[bool, typer.Option(help="also rerun cells whose runs failed")] = False,
    lab: LabOption = None,
) -> None:
    """Run every unfinished cell of a study (finished ones are skipped, killed ones continue), then the comparators;
    print the cells and, for a scaling study, the learning curve and the crossovers."""
    from llamalab.studies.run import run_study, submit_study
    from llamalab.studies.spec import load_study

    if executor not in ("local", "slurm"):
        raise LlamalabError(f"unknown executor {executor!r}: use local or slurm")
    if max_parallel is not None and max_parallel < 1:
        raise LlamalabError("--max-parallel must be at least 1")
    the_lab = find_lab(lab)
    study = load_study(the_lab, name)
    if study.spec.kind == "quantization":
        from llamalab.studies.quantization import run_quantization

        if executor != "local" or max_parallel is not None or retry_failed:
            raise LlamalabError("a quantization study runs here, one system and type after another (its exports and "
                                "llama.cpp evaluations are short; failed ones are simply run again): drop "
                                "--executor, --max-parallel and --retry-failed")

        _print_quantization(the_lab, study, run_quantization(the_lab, study, console))
        return
    if executor == "slurm":
        states, comparators = submit_study(the_lab, study, console, retry_failed, max_parallel or 4)
    else:
        states, comparators = run_study(the_lab, study, console, retry_failed, max_parallel or 1)
    _print_study(the_lab, study, states, comparators)


@study_app.command("status")
def study_status(name: str, lab: LabOption = None) -> None:
    """Each cell of a study: pending, running, interrupted, failed, trained or finished, with its runs, and the
    results so far (a scaling study's curve and crossovers, a sweep's table, a quantization study's rows)."""
    from llamalab.studies.run import cell_states, check_sizes, comparators_left_out, recorded_comparators
    from llamalab.studies.spec import load_study

    the_lab = find_lab(lab)
    study = load_study(the_lab, name)
    if study.spec.kind == "quantization":
        from llamalab.studies.quantization import recorded_quantization

        _print_quantization(the_lab, study, recorded_quantization(the_lab, study))
        return
    check_sizes(the_lab, study, data_required=False)  # as `study run` refuses it
    _print_study(the_lab, study, cell_states(the_lab, study), recorded_comparators(the_lab, study))
    for why in comparators_left_out(the_lab, study):  # `study run` would refuse to start
        out.print(f"[yellow]comparator left out: {escape(why)}[/]")


def _print_study(lab, study, states, comparators=None) -> None:
    """The cells' table; with the comparators' evaluations, a scaling study's curve and crossovers too."""
    from llamalab.tasks.task import load_task

    task = load_task(lab.task_path(study.task), lab.root)
    metric = task.metric_names[0]
    table = Table(title=escape(f"study {study.name} ({study.spec.kind}): {study.task}/{study.spec.eval.split}"))
    for column in ("cell", "status", "train run", "eval run", metric, "time"):
        table.add_column(column, justify="right" if column in (metric, "time") else "left", overflow="fold")
    for state in states:
        m = state.eval.run.metrics.get(metric) if state.eval is not None and state.status == "finished" else None
        table.add_row(escape(state.cell.label), state.status, state.train.id if state.train else "",
                      state.eval.id if state.eval else "", f"{m.estimate:.3f}" if m else "",
                      f"{state.seconds:.0f} s" if state.seconds is not None else "")
    out.print(table)
    counts = {s: sum(1 for x in states if x.status == s) for s in dict.fromkeys(x.status for x in states)}
    out.print(", ".join(f"{n} {s}" for s, n in counts.items()))
    if comparators is not None and study.spec.kind == "scaling" and any(s.status == "finished" for s in states):
        _print_scaling(states, comparators, metric, task.answer.labels or None)
    if study.spec.kind == "sweep" and any(s.status == "finished" for s in states):
        _print_sweep(study, states, metric, task.answer.labels or None)


def _print_sweep(study, states, metric: str, labels) -> None:
    """The same table and sentence as the report and the site (publish/tables.py)."""
    from llamalab.publish.results import SweepBoard
    from llamalab.publish.tables import sweep_caption, sweep_cells
    from llamalab.studies.sweep import sweep_result

    board = SweepBoard(study, states, sweep_result(states, metric, labels))
    header, body = sweep_cells(board)
    table = Table(title=escape(f"{metric} of each setting (mean over seeds; 95% band over examples and seeds)"),
                  caption=escape(sweep_caption(board)))
    for column in header:
        table.add_column(escape(column), justify="left" if column == "Setting" else "right", overflow="fold")
    for cells in body:
        table.add_row(*(escape(c) for c in cells))
    out.print(table)
    out.print(escape(board.result.sentence()))


def _print_quantization(lab, study, rows) -> None:
    """The same table and sentences as the report and the site (publish/tables.py)."""
    from llamalab.publish.results import QuantBoard
    from llamalab.publish.tables import quant_caption, quant_cells
    from llamalab.tasks.task import load_task

    board = QuantBoard(study, rows, load_task(lab.task_path(study.task), lab.root).metric_names[0])
    header, body = quant_cells(board)
    table = Table(title=escape(f"study {study.name} (quantization): {study.task}/{study.spec.eval.split}, "
                               "llama.cpp backend"), caption=escape(quant_caption(board)))
    for column in [*header, "eval run"]:
        table.add_column(escape(column), justify="left" if column in ("System", "Type", "eval run") else "right",
                         overflow="fold")
    for cells, row in zip(body, rows, strict=True):
        table.add_row(*(escape(c) for c in cells), row.eval.id)
    out.print(table)
    out.print(escape(board.summary()))


def _print_scaling(states, comparators, metric: str, labels) -> None:
    from llamalab.evaluation.compare import format_p, signed
    from llamalab.studies.scaling import scaling_result

    result = scaling_result(states, [(r.run.display_label, r) for r in comparators], metric, labels)
    table = Table(title=escape(f"{metric} against training examples (mean over seeds; 95% band over examples and "
                               "seeds)"))
    for column in ("examples", "seeds", metric, "95% band", *(c.comparator for c in result.crossovers)):
        table.add_column(escape(column), justify="right", overflow="fold")
    for i, point in enumerate(result.curve):
        m = point.interval
        cells = [f"{point.size:,}", str(point.seeds), f"{m.estimate:.3f}", f"[{m.low:.3f}, {m.high:.3f}]"]
        for crossover in result.crossovers:
            test = crossover.tests[i]
            cells.append(f"{signed(test.delta)} (p {format_p(test.p_holm)}){' *' if test.better else ''}")
        table.add_row(*cells)
    out.print(table)
    for crossover in result.crossovers:
        c = crossover.interval
        out.print(f"{escape(crossover.comparator)}: {metric} {c.estimate:.3f} [{c.low:.3f}, {c.high:.3f}]. "
                  f"{escape(crossover.sentence())}")
    for untested in result.untested:
        out.print(escape(untested.sentence()))


@post_app.command("new")
def post_new(
    title: str,
    author: Annotated[list[str] | None, typer.Option(help="author name (repeat; default: git user.name)")] = None,
    lab: LabOption = None,
) -> None:
    """Draft this week's findings post from the runs recorded since the last post."""
    from llamalab.publish.posts import new_post

    path = new_post(find_lab(lab), title, author)
    console.print(f"draft written to {path}: edit it, then commit it")
    out.print(str(path))


@app.command()
def demo(
    lab: Annotated[Path, typer.Option(help="lab folder to run in (created from the example if missing)")] = Path(
        "demo-lab"
    ),
) -> None:
    """The main job on the embedded model: data check, baselines, LoRA fine-tune, evaluation, comparison."""
    from llamalab.demo import run_demo

    run_demo(lab, console)


def main() -> None:
    from transformers.utils import logging as hf_logging

    # Our own progress bars say what is happening; the libraries' per-file bars only add noise.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reading bar ignores the switch above
    # bitsandbytes, imported by PEFT on every LoRA run, says at import that an optional CPU kernel package is
    # missing: a warning about nothing llamalab uses unless the run is QLoRA (which checks bitsandbytes itself)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # Ctrl-C, `kill`, a closed terminal or ssh session, `docker stop`: each run marks itself interrupted (SIGTERM
    # and SIGHUP left it "running" with no word on what to do)
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, _interrupted)
    run_app(app)


def _interrupted(signum, frame) -> None:
    """Ctrl-C (or SIGTERM, SIGHUP): say what happens to the work (a command stopped silently, with exit code 130),
    then stop as Python does on Ctrl-C (each run marks itself interrupted on the way out)."""
    what = b"interrupted" if signum == signal.SIGINT else signal.Signals(signum).name.encode() + b" received"
    os.write(2, b"\n" + what + b": stopping. Finished work is kept: a train or eval run continues with --resume, "
             b"a study with `llamalab study run NAME` again, the demo with `llamalab demo` again; an export is "
             b"written whole or not at all.\n")  # not through sys.stderr: a Ctrl-C landing while it writes would
    # make a second write fail
    raise KeyboardInterrupt


def run_app(typer_app: typer.Typer) -> None:
    """Run a command line; a LlamalabError is one red line and exit code 2, never a traceback. So is a path that
    cannot be written where the user pointed (a file where a folder must be, a folder where a file must be, no
    permission); LLAMALAB_DEBUG=1 shows its traceback."""
    try:
        typer_app()
    except LlamalabError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        if os.environ.get("LLAMALAB_DEBUG"):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        console.print(f"[red]error:[/] cannot use{escape(where)}: {escape(exc.strerror or str(exc))} (a file where a "
                      "folder is needed, or the reverse, or no permission: choose another path)")
        sys.exit(2)


if __name__ == "__main__":
    main()
