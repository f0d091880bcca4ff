"""`llamalab demo`: the whole path on the embedded model, in minutes on a laptop CPU.

data check -> baselines (both prompt formats zero-shot, and 4-shot) on dev -> the best one on test ->
LoRA fine-tune -> fine-tuned model on test -> paired comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from llamalab.config import LlamalabError
from llamalab.evaluation.compare import compare, comparison_table, format_p
from llamalab.evaluation.evaluate import evaluate, load_system
from llamalab.lab import Lab, find_lab, init_lab
from llamalab.models import EMBEDDED_NAME, load_tokenizer, resolve_model
from llamalab.publish.posts import new_post
from llamalab.publish.report import build_report
from llamalab.publish.site import build_site
from llamalab.runs.files import write_json_atomic
from llamalab.runs.record import RunRecord, now_iso
from llamalab.runs.schema import TrainRun
from llamalab.studies.run import BASELINES, best_baseline  # the baseline is chosen as studies choose it
from llamalab.tasks.checks import check_task_data
from llamalab.tasks.data import load_task_data
from llamalab.tasks.prompts import Prompter
from llamalab.tasks.task import load_task
from llamalab.training.plan import (
    Shape,
    flops_per_token,
    measure_matmul_tflops,
    resolve_device,
    scoring_flops_per_token,
)
from llamalab.training.trainer import train

TASK = "sentiment"
EXPERIMENT = "sentiment-lora"
DEV_LIMIT = 500  # enough to pick a prompt format; selection never looks at test
WIN_P = 0.01  # the demo's claim that fine-tuning beats the baseline needs p below this


def run_demo(lab_dir: Path, console: Console) -> dict[str, Any]:
    """Run every stage, timing each against its compute floor; returns (and writes to demo-summary.json) what was
    measured."""
    stages: dict[str, float] = {}
    floors: dict[str, float] = {}
    taken_up: dict[str, str] = {}  # stages whose run an earlier demo in this lab finished (or began): their run ids
    began = now_iso()
    device = resolve_device()
    rate = measure_matmul_tflops(device) * 1e12  # FLOP/s, measured now on this process's threads
    shape: Shape | None = None  # once the model is prepared (converted, on a first run: that stage's time)
    kind = "float32 2048 x 2048" if device.kind == "cpu" else "bfloat16 8192 x 8192"
    console.print(f"{escape(device.name)}: {rate / 1e9:,.0f} GFLOP/s on a {kind} matmul")

    def stage(name: str, work: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        result = work()
        stages[name] = round(time.perf_counter() - started, 1)
        if isinstance(result, RunRecord) and result.run.started < began:  # ISO UTC times: ordered as text
            # a killed demo's run continued, or a finished one taken as it is: this stage's seconds are not its
            # whole work, so it gets no compute floor
            taken_up[name] = f"{'resumed' if any(t >= began for t in result.run.resumed) else 'reused'} {result.id}"
        elif shape is not None and (flops := model_flops(result, shape)) is not None:
            floors[name] = round(flops / rate, 1)
        return result

    lab = find_lab(lab_dir) if (lab_dir / "lab.yaml").is_file() else init_lab(lab_dir)
    console.print(f"Lab: {lab.root}")
    shape = Shape.of_folder(Path(stage("prepare model", lambda: resolve_model(EMBEDDED_NAME).path)))
    stage("data check", lambda: _check(lab, console))

    # The baseline to beat is the best honest one: each prompt format, and few-shot, chosen on dev only.
    with load_system(lab, EMBEDDED_NAME) as base:  # loaded once for every baseline
        dev = {
            name: stage(f"baseline {name} on dev", lambda fmt=fmt, shots=shots: evaluate(
                lab, base, task=TASK, split="dev", format=fmt, shots=shots, limit=DEV_LIMIT, console=console,
                reuse=True))
            for name, (fmt, shots) in BASELINES.items()
        }
        best = best_baseline(dev)
        console.print(f"Best baseline on dev: [bold]{best}[/]")
        fmt, shots = BASELINES[best]
        baseline = stage("best baseline on test", lambda: evaluate(
            lab, base, task=TASK, split="test", format=fmt, shots=shots, console=console, reuse=True))
    # a killed demo's runs are taken up where they stopped (reuse), and the stage table says so
    trained = stage("LoRA fine-tune", lambda: train(lab, EXPERIMENT, console=console, reuse=True))
    finetuned = stage("fine-tuned on test", lambda: evaluate(lab, trained.id, task=TASK, split="test",
                                                             console=console, reuse=True))

    result = versus_baseline(lab, baseline, finetuned)
    console.print(comparison_table(result))
    stage("report, weekly post and site", lambda: _publish(lab, console))
    summary = _summary(stages, floors, rate, dev, baseline, trained, finetuned, result) | {"taken_up": taken_up}
    write_json_atomic(lab.root / "demo-summary.json", summary)
    _print_summary(console, summary, lab)
    return summary


def _publish(lab: Lab, console: Console) -> None:
    report = build_report(lab, "demo", tasks=[TASK])
    post = new_post(lab, "Demo: LoRA against the best baseline on sentiment", ["llamalab demo"])
    site = build_site(lab)
    console.print(f"report: {report}\npost draft: {post}\nsite: {site / 'index.html'}")


def _check(lab: Lab, console: Console) -> None:
    task = load_task(lab.task_path(TASK), lab.root)
    data = load_task_data(task, strict=False)
    tokenizer = load_tokenizer(resolve_model(EMBEDDED_NAME))
    report = check_task_data(data, task, Prompter(task, tokenizer, task.prompt.format))
    for split, count in report.counts.items():
        console.print(f"{split}: {count} examples, tokens {report.token_lengths[split]}")
    for warning in report.warnings:
        console.print(f"[yellow]warning[/] {escape(warning)}")
    if not report.ok:
        raise LlamalabError("data check failed:\n" + "\n".join(report.errors))


def model_flops(record, shape: Shape) -> float | None:
    """The model FLOPs a run's work on a model of `shape` needed (its compute floor at the machine's matmul rate),
    or None for other work. An evaluation's forward passes: 2 x the non-embedding parameters per token the model had
    to compute (a shared prompt prefix once, no padding). A LoRA run's training: 4 x the parameters per trained token
    (forward, and backward to the activations; the frozen weights get no gradient), 6 x for a full fine-tune."""
    if not isinstance(record, RunRecord):
        return None
    if isinstance(record.run, TrainRun):
        tokens = (record.run.data_used.tokens_per_epoch or 0) * record.run.metrics.epochs
        return flops_per_token(shape, record.config.get("method", "lora")) * tokens
    if "forward_tokens" not in record.run.throughput:
        return None
    return scoring_flops_per_token(shape) * record.run.throughput["forward_tokens"]


def versus_baseline(lab: Lab, baseline: RunRecord, finetuned: RunRecord):
    """The fine-tuned model's test evaluation against the baseline's, paired: Δ is fine-tuned minus baseline
    whichever scored higher (against the better one, a fine-tune that won had the sign of a loss)."""
    return compare(lab, TASK, "test", "accuracy", only={baseline.id, finetuned.id}, reference=baseline.id)


def _summary(stages, floors, rate, dev, baseline, trained, finetuned, result) -> dict[str, Any]:
    fine_row = next(row for row in result.systems if row.run == finetuned.id)
    base_acc = baseline.run.metrics["accuracy"].model_dump()
    fine_acc = finetuned.run.metrics["accuracy"].model_dump()
    vs = fine_row.vs_reference.model_dump(mode="json", exclude_unset=True)
    return {
        "stages_s": stages,
        "total_s": round(sum(stages.values()), 1),
        "compute_floor_s": floors,
        "matmul_gflops": round(rate / 1e9, 1),
        "dev_accuracy": {name: rec.run.metrics["accuracy"].estimate for name, rec in dev.items()},
        "baseline": {"run": baseline.id, "format": baseline.run.prompt.format, "shots": baseline.run.shots,
                     "accuracy": base_acc},
        "finetuned": {"run": finetuned.id, "train_run": trained.id, "accuracy": fine_acc},
        "paired_test": vs,
        "finetuned_wins": fine_acc["estimate"] > base_acc["estimate"] and vs["p_value"] < WIN_P,
        "training": {
            "tokens_per_s": trained.run.throughput["tokens_per_s"],
            "peak_memory_mb": trained.run.peak_memory_mb,
            "steps": trained.run.metrics.steps,
            "loss": [trained.run.metrics.first_loss, trained.run.metrics.final_loss],
        },
    }


def stage_rows(stages: dict[str, float], floors: dict[str, float],
               taken_up: dict[str, str] | None = None) -> list[tuple[str, str, str, str]]:
    """The stage table's rows: each stage's seconds, compute floor and their ratio ("–" where a stage has no floor),
    then the totals; a stage that took up an earlier demo's run says which (`taken_up`)."""
    rows = []
    for name, seconds in stages.items():
        floor = floors.get(name)
        label = f"{name} ({taken_up[name]})" if taken_up and name in taken_up else name
        rows.append((label, f"{seconds:.1f}", "–" if floor is None else f"{floor:.1f}",
                     f"{seconds / floor:.2f}" if floor else "–"))
    rows.append(("[bold]total", f"[bold]{sum(stages.values()):.1f}", f"{sum(floors.values()):.1f}", ""))
    return rows


def _print_summary(console: Console, summary: dict, lab: Lab) -> None:
    table = Table(title="demo stages",
                  caption=f"compute floor: the stage's model FLOPs at {summary['matmul_gflops']:,.0f} GFLOP/s, "
                          "this machine's matmul rate measured at the start")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("compute floor (s)", justify="right")
    table.add_column("x floor", justify="right")
    for row in stage_rows(summary["stages_s"], summary["compute_floor_s"], summary["taken_up"]):
        table.add_row(*row)
    console.print(table)
    if summary["taken_up"]:
        console.print("Stages marked reused or resumed took up runs an earlier demo in this lab finished or began: "
                      "their seconds are not the work's (start from a new --lab to time every stage)")
    b, f, t = summary["baseline"]["accuracy"], summary["finetuned"]["accuracy"], summary["paired_test"]
    console.print(
        f"best baseline ({summary['baseline']['format']}, {summary['baseline']['shots']}-shot): "
        f"{b['estimate']:.3f} [{b['low']:.3f}, {b['high']:.3f}]   "
        f"fine-tuned: {f['estimate']:.3f} [{f['low']:.3f}, {f['high']:.3f}]   "
        f"{t['test']} p = {format_p(t['p_value'], WIN_P)}   (n = {f['n']})"
    )
    verdict = f"[green]fine-tuned model beats the best baseline chosen on dev (p < {WIN_P})[/]" if summary[
        "finetuned_wins"] else "[red]fine-tuned model does NOT significantly beat the baseline[/]"
    console.print(verdict)
    console.print(
        f"training: {summary['training']['tokens_per_s']:.0f} tokens/s, peak memory "
        f"{summary['training']['peak_memory_mb']:.0f} MiB"
    )
    console.print(f"Records: {lab.runs_dir}  (summary: {lab.root / 'demo-summary.json'})")
    console.print(f"Website: open {lab.root / 'site' / 'index.html'} in a browser, or run "
                  f"`llamalab site serve --lab {lab.root}` and visit http://127.0.0.1:8000/")
