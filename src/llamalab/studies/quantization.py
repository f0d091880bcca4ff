"""The quantization study: what 4- and 8-bit weights cost.

Each system (a base model, or a fine-tuned run with its LoRA merged in) is exported to GGUF at every type through
llama.cpp's own converter and quantizer, and each file is evaluated with the llama.cpp backend on the same
examples. Every type is tested against the same system's f16 file on the examples both saw (the paired test
`compare` uses; Holm-corrected for the number of such tests in the study), next to its file size and speed.
Files are kept in runs/.gguf/ (git-ignored) and reused.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from llamalab.config import LlamalabError
from llamalab.evaluation import stats
from llamalab.evaluation.metrics import paired_test
from llamalab.lab import Lab
from llamalab.runs.files import write_json_atomic
from llamalab.runs.record import Inputs, RunRecord, list_runs, read_predictions, same_settings
from llamalab.runs.schema import Interval, gguf_export_name
from llamalab.studies.spec import Study
from llamalab.tasks.task import load_task

REFERENCE = "f16"


@dataclass(frozen=True)
class QuantRow:
    system: str  # as the study names it
    type: str
    size_mib: float | None  # None when the file is gone
    eval: RunRecord
    interval: Interval
    examples_per_s: float | None
    delta: float | None  # this type minus f16 on the examples both saw (None for f16, or before f16 is evaluated)
    p_value: float | None
    test: str | None
    n_paired: int | None = None  # the examples both saw (the test's n)
    p_holm: float | None = None  # p, Holm-corrected for every type-against-f16 test of the study
    reference_n: int | None = None  # the examples f16's evaluation saw

    @property
    def paired_subset(self) -> bool:
        """The test ran on fewer examples than this type's evaluation, or f16's, saw."""
        return self.n_paired is not None and (self.n_paired < self.interval.n
                                              or (self.reference_n is not None and self.n_paired < self.reference_n))


def gguf_file(lab: Lab, system: str, quant: str) -> Path:
    """Where a system's export at `quant` goes: runs/.gguf/, named by `gguf_export_name`."""
    return lab.runs_dir / ".gguf" / gguf_export_name(system, quant)


def export_file(lab: Lab, system: str, quant: str) -> Path:
    """A study system's export at `quant`: named by the system's one spelling (`canonical_name`: a run's full id,
    not the part of it a study file gives), so two studies naming one run two ways share its files (and rows);
    an export named as a study spelled it, before, is still found."""
    from llamalab.evaluation.systems import canonical_name

    path, spelled = gguf_file(lab, canonical_name(lab, system), quant), gguf_file(lab, system, quant)
    return spelled if not path.is_file() and spelled.is_file() else path


def lab_name(lab: Lab, gguf: Path) -> str:
    """How an export is named to `evaluate`: its path in the lab (`runs/.gguf/...`), so its records, settings hash
    and labels are the same wherever the lab is (cloned, moved, or built by CI) and carry no machine's path."""
    return gguf.relative_to(lab.root).as_posix()


def _source_file(gguf: Path) -> Path:
    """Next to an export: the weights it was made from (a model folder re-downloaded in place keeps its name)."""
    return gguf.with_name(gguf.name + ".source.json")


def _in_lab(lab: Lab, path: Path) -> str:
    """A path as the lab's files record it: from the lab's root when inside it (no machine's path)."""
    resolved = path.resolve()
    return resolved.relative_to(lab.root.resolve()).as_posix() if resolved.is_relative_to(lab.root.resolve()) \
        else str(path)


def _same_source(lab: Lab, made_from: Path, source: dict) -> bool:
    """Whether an export was made from `source` (its adapter recorded by absolute path before it was by its path
    in the lab: the same folder either way)."""
    from llamalab.evaluation.systems import canonical_name

    recorded = json.loads(made_from.read_text())
    if isinstance(recorded, dict) and isinstance(adapter := recorded.get("adapter"), str):
        recorded = {**recorded, "adapter": _in_lab(lab, lab.root / adapter)}
    if isinstance(recorded, dict) and isinstance(system := recorded.get("system"), str):  # as a study spelled it
        with contextlib.suppress(LlamalabError):  # a run deleted, or its part now ambiguous: as recorded
            recorded = {**recorded, "system": canonical_name(lab, system)}
    return recorded == source


def _eval_options(study: Study, prompt_format: str | None) -> dict:
    spec = study.spec.eval
    options = {"task": study.task, "split": spec.split, "limit": spec.limit, "backend": "llama.cpp",
               "format": prompt_format}
    if spec.protocol:
        options["protocol"] = spec.protocol
    return {k: v for k, v in options.items() if v is not None}


def run_quantization(lab: Lab, study: Study, console: Console) -> list[QuantRow]:
    """Export every system at every type (files already there are reused), evaluate each (finished evaluations
    with the same settings are reused), and test each type against f16."""
    from llamalab.evaluation.evaluate import evaluate
    from llamalab.evaluation.systems import canonical_name, resolve_system
    from llamalab.export import check_tools, export_loaded, gguf_type

    assert study.spec.quantize is not None
    for quant in study.spec.quantize.types:  # before any model loads
        check_tools(quant)
    task = load_task(lab.task_path(study.task), lab.root)
    evals = [r for r in list_runs(lab.runs_dir, "eval") if r.run.finished]
    records: dict[tuple[str, str], RunRecord] = {}
    for name in study.spec.quantize.systems:
        system = resolve_system(lab, name)
        source = {"system": canonical_name(lab, name), "revision": system.model.revision if system.model else None,
                  "adapter": _in_lab(lab, system.adapter) if system.adapter else None}
        loaded = None
        for quant in (gguf_type(t) for t in study.spec.quantize.types):
            path = export_file(lab, name, quant)
            made_from = _source_file(path)
            if path.is_file() and not (made_from.is_file() and _same_source(lab, made_from, source)):
                # changed since, or killed before its record of what it was made from was written: not known good
                console.print(f"{name} changed since its {quant} GGUF was exported (or that export did not "
                              "finish): exporting it again")
                path.unlink()
            if not path.is_file():
                console.print(f"exporting {name} as {quant} GGUF")
                if loaded is None:
                    loaded = system.load()
                export_loaded(*loaded, path, quant, name=system.label)
                write_json_atomic(made_from, source)
            options = _eval_options(study, system.trained_format)
            records[(name, quant)] = (_recorded(lab, task, path, options, evals) or
                                      evaluate(lab, lab_name(lab, path), reuse=True, console=console, **options))
    return quant_rows(lab, study, records)


def _recorded(lab: Lab, task, path: Path, options: dict, evals: list[RunRecord]) -> RunRecord | None:
    """The latest finished evaluation run_quantization made of the file at `path` as it is now (its settings hash:
    not another evaluation of the same file; its inputs: not one of an earlier export at the same path, or of the
    task's earlier data). Files were named by their absolute path before they were named by their path in the lab:
    an evaluation of either kind is the file's."""
    from llamalab.evaluation.evaluate import same_system, settings_hashes
    from llamalab.evaluation.systems import system_outline
    from llamalab.models import gguf_revision
    from llamalab.tasks.data import current_file_hashes

    now, before = settings_hashes(lab, task, lab_name(lab, path), **options)
    before |= settings_hashes(lab, task, str(path), **options)[1]  # named by its absolute path, as files were first
    inputs = Inputs(gguf_revision(path) if path.is_file() else None, current_file_hashes(task),
                    task.definition_sha256("eval"))
    # A record from before exports were told apart (a fine-tuned run's recorded as a base model) is the file's only
    # if it is of the system the file is now; one that says it is an export is (its path is in the settings).
    outline = system_outline(lab, lab_name(lab, path))
    found = [r for r in evals if inputs.differ(r) is None
             and same_settings(r, now, before, lambda r: r.run.system.quantized is not None or same_system(r, outline))]
    return found[-1] if found else None


def recorded_quantization(lab: Lab, study: Study) -> list[QuantRow]:
    """The rows from the records alone (for the report and the site): files and evaluations that exist."""
    from llamalab.evaluation.systems import system_outline

    assert study.spec.quantize is not None
    evals = [r for r in list_runs(lab.runs_dir, "eval") if r.run.finished]
    task = load_task(lab.task_path(study.task), lab.root)
    records = {}
    for name in study.spec.quantize.systems:
        options = _eval_options(study, system_outline(lab, name).trained_format)
        for quant in study.spec.quantize.types:
            if found := _recorded(lab, task, export_file(lab, name, quant.lower()), options, evals):
                records[(name, quant.lower())] = found
    return quant_rows(lab, study, records)


def quant_rows(lab: Lab, study: Study, records: dict[tuple[str, str], RunRecord]) -> list[QuantRow]:
    task = load_task(lab.task_path(study.task), lab.root)
    metric, labels = task.metric_names[0], task.answer.labels or None
    rows = []
    for (name, quant), record in records.items():
        reference = records.get((name, REFERENCE))
        delta = p_value = test = n_paired = reference_n = None
        if reference is not None and reference is not record:
            mine, theirs = read_predictions(record.folder), read_predictions(reference.folder)
            shared = sorted(mine.keys() & theirs.keys())
            if shared:
                result = paired_test(metric, [mine[i] for i in shared], [theirs[i] for i in shared], labels)
                delta, p_value, test, n_paired = result.delta, result.p_value, result.test, len(shared)
                reference_n = len(theirs)
        path = export_file(lab, name, quant)
        rows.append(QuantRow(name, quant, round(path.stat().st_size / 2**20, 1) if path.is_file() else None,
                             record, record.run.metrics[metric], record.run.throughput.get("examples_per_s"),
                             delta, p_value, test, n_paired, reference_n=reference_n))
    tested = [i for i, row in enumerate(rows) if row.p_value is not None]
    for i, p_holm in zip(tested, stats.holm([rows[i].p_value for i in tested]), strict=True):
        rows[i] = replace(rows[i], p_holm=p_holm)
    return rows
