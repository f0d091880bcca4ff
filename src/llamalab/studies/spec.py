"""The study file (studies/<name>.yaml): a designed experiment over a base experiment file.

A study is a grid of overrides of one experiment (the cartesian product of `grid`, or the explicit `cells`),
each trained with every seed in `seeds` and evaluated the same way, next to comparators (the base model with its
best honest prompt, chosen on dev; API models; named runs). Every cell is a train run and an eval run in runs/:
the records are the study's state, so a killed study continues where it stopped.
"""

from __future__ import annotations

import difflib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from llamalab.config import KeyProblem, LlamalabError, StrictModel, load_yaml, parse_model
from llamalab.runs.record import config_hash
from llamalab.tasks.task import NAME, NAME_RULE, suggested_name
from llamalab.training.experiment import load_experiment


class StudyEval(StrictModel):
    task: str | None = Field(None, description="default: the experiment's task")
    split: Literal["dev", "test"] = "test"
    limit: int | None = Field(None, ge=1, description="a seeded subset of this many examples (the same for all)")
    protocol: Literal["loglikelihood", "generate"] | None = None


class Comparators(StrictModel):
    baselines: bool = Field(True, description="the base model zero-shot in each prompt format and 4-shot, the best "
                            "on dev evaluated on the study's split (as `llamalab demo` chooses it)")
    dev_limit: int = Field(500, ge=1, description="dev examples for choosing the baseline")
    api: list[str] = Field([], description="API models from lab.yaml, evaluated by generation")
    runs: list[str] = Field([], description="finished eval runs (ids or unique parts of ids) to compare with")


class Resources(StrictModel):
    """What one cell asks of a Slurm cluster (ignored by the local executor)."""

    partition: str | None = None
    cpus: int = Field(2, ge=1)
    gpus: int = Field(0, ge=0)
    mem_gb: float = Field(8, gt=0)
    time_min: int = Field(120, ge=1)


class Quantize(StrictModel):
    systems: list[str] = Field(min_length=1, description="base models or finished train runs (ids or unique parts)")
    types: list[str] = Field(["f16", "q8_0", "q4_k_m"], min_length=2, description="GGUF types; f16 is the reference")

    @model_validator(mode="after")
    def _types(self) -> Quantize:
        from llamalab.export import GGUF_TYPES

        unknown = [t for t in self.types if t.lower() not in GGUF_TYPES]
        if unknown:
            raise ValueError(f"unknown GGUF type(s) {', '.join(unknown)}: use {', '.join(GGUF_TYPES)}")
        if "f16" not in [t.lower() for t in self.types]:
            raise ValueError("list f16 among `types`: every other type is tested against it")
        if repeated := sorted({t for t in self.types if [u.lower() for u in self.types].count(t.lower()) > 1}):
            raise ValueError(f"{', '.join(repeated)} listed more than once in `types`: list each type once")
        if len({s.strip() for s in self.systems}) < len(self.systems):
            raise ValueError("a system listed more than once in `systems`: list each once")
        return self


class StudySpec(StrictModel):
    kind: Literal["scaling", "sweep", "quantization"] = Field(
        "sweep", description="scaling: training-set sizes x seeds, with the learning curve and the crossover with "
        "each comparator; quantization: systems exported to GGUF types, each evaluated with llama.cpp")
    experiment: str | None = Field(None, description="the experiment file (experiments/<name>.yaml) every cell "
                                   "starts from (not for quantization)")
    quantize: Quantize | None = None
    grid: dict[str, list[Any]] = Field({}, description="setting -> values; cells are every combination")
    cells: list[dict[str, Any]] | None = Field(None, description="explicit cells instead of a grid")
    seeds: list[int] = Field([0], min_length=1)
    eval: StudyEval = StudyEval()
    comparators: Comparators = Comparators()
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if self.kind == "quantization":
            if self.quantize is None:
                raise KeyProblem("quantize", "a quantization study needs `quantize: {systems: [...]}`")
            if self.eval.task is None:
                raise KeyProblem("eval", "a quantization study needs `eval: {task: ...}`: the task each export is "
                                 "evaluated on")
            if stray := [key for key, value in (("experiment", self.experiment), ("grid", self.grid),
                                                 ("cells", self.cells)) if value or key == "cells" and value == []]:
                raise KeyProblem(stray[0], "a quantization study exports finished systems: no `experiment`, `grid` "
                                 "or `cells`")
        else:
            self._check_cells()
        return self

    def stray_comparators(self) -> str | None:
        """Why comparators this study asks for would be run for nothing (a sweep or quantization study has none:
        `study run` refuses them; status and the report ignore them, as older llamalab did), or None."""
        asked = self.comparators
        if self.kind != "scaling" and (asked.api or asked.runs or asked.baselines and "baselines" in
                                       asked.model_fields_set):
            return (f"key 'comparators': a {self.kind} study compares its own systems with each other, so it runs "
                    "no comparators: they belong to kind: scaling (remove `comparators`)")
        return None

    def _check_cells(self) -> None:
        if self.experiment is None:
            raise KeyProblem("experiment", "`experiment` is required: the experiment file every cell starts from")
        if self.quantize is not None:
            raise KeyProblem("quantize", "`quantize` belongs to kind: quantization")
        if self.grid and self.cells is not None:
            raise KeyProblem("cells", "give `grid` or `cells`, not both")
        if empty := [name for name, values in self.grid.items() if not values]:
            raise KeyProblem("grid", f"every `grid` setting needs at least one value ({empty[0]} has none)")
        if "seed" in self.grid or any("seed" in cell for cell in self.cells or []):
            raise KeyProblem("grid" if "seed" in self.grid else "cells",
                             "list seeds under `seeds`, not in the grid or cells")
        if len(set(self.seeds)) != len(self.seeds):
            raise KeyProblem("seeds", "`seeds` repeats a seed")
        where = "cells" if self.cells is not None else "grid"
        if self.kind == "scaling" and any("train_examples" not in cell for cell in self.combinations()):
            keys = {key for cell in self.combinations() for key in cell}
            close = difflib.get_close_matches("train_examples", sorted(keys), n=1, cutoff=0.6)
            meant = f" (is {close[0]!r} meant to be train_examples?)" if close else ""
            raise KeyProblem(where, f"a scaling study varies `train_examples`: put it in `grid` (or in every cell)"
                             f"{meant}")
        if self.kind == "scaling" and any(not isinstance(size := cell["train_examples"], int)
                                          or isinstance(size, bool) for cell in self.combinations()):
            raise KeyProblem(where, "a scaling study's `train_examples` are whole numbers (a curve needs a size for "
                             "each point): for the whole train split, give its size")
        others = {key for cell in self.combinations() for key in cell if key != "train_examples"
                  and len({json.dumps(c.get(key), sort_keys=True) for c in self.combinations()}) > 1}
        if self.kind == "scaling" and others:
            raise KeyProblem(where, f"a scaling study varies only `train_examples` (its curve averages the cells of "
                             f"a size over seeds), but it also varies {', '.join(sorted(others))}: fix those in the "
                             "experiment, or make it kind: sweep")

    def combinations(self) -> list[dict[str, Any]]:
        if self.cells is not None:
            return [dict(cell) for cell in self.cells]
        names = list(self.grid)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*self.grid.values())] or [{}]


def _check_eval(lab, path: Path, spec: StudySpec, task_name: str, trained_format: str | None) -> None:
    """Settings no evaluation can run with (label scoring of a task with number answers, say) are refused when
    the study is read, naming its `eval` key: not after every cell has trained."""
    from llamalab.evaluation.evaluate import EvalSettings, complete_settings
    from llamalab.evaluation.systems import System
    from llamalab.tasks.task import load_task

    try:
        task = load_task(lab.task_path(task_name), lab.root)
        settings = EvalSettings(system=spec.experiment or "model", task=task_name, split=spec.eval.split,
                                limit=spec.eval.limit, protocol=spec.eval.protocol)
        kind = "base" if spec.kind == "quantization" else "finetuned"
        complete_settings(settings, task, System("model", kind, trained_format=trained_format))
    except LlamalabError as exc:
        raise LlamalabError(f"{path}: key 'eval': " + str(exc).replace(
            "use --protocol generate", "set `eval: {protocol: generate}`")) from None


@dataclass(frozen=True)
class Cell:
    """One training of the study: the experiment with `overrides` (seed included), identified by `key`, the hash
    of its resolved settings: the same cell in a rerun, or on another machine, has the same key."""

    overrides: dict[str, Any]
    config: dict[str, Any]
    key: str

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.overrides.items())


@dataclass(frozen=True)
class Study:
    name: str
    path: Path
    spec: StudySpec
    cells: tuple[Cell, ...]
    task: str  # the task every cell is evaluated on
    experiment_file: Path | None = None  # the experiment every cell starts from (None: quantization)

    @property
    def experiment_name(self) -> str | None:
        """What the cells' train runs are named (as `llamalab train FILE` names them: the file's stem)."""
        return self.experiment_file.stem if self.experiment_file else None


def load_study(lab, name: str) -> Study:
    """The study file with its cells resolved against the experiment file (errors name file, line and key)."""
    path = lab.root / "studies" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (lab.root / "studies").glob("*.yaml"))
        raise LlamalabError(f"no study {name!r} ({path} does not exist); studies: {', '.join(known) or 'none'}")
    if not NAME.fullmatch(name):
        valid = suggested_name(name, "my-study")
        raise LlamalabError(f"{path}: the study's name {name!r} (its file's name) is part of the site's and the "
                            "report's file names and links (studies/NAME/, tables/study-NAME.tex), which it would "
                            f"break: rename the file to studies/{valid}.yaml ({NAME_RULE})")
    data, node = load_yaml(path)
    spec = parse_model(StudySpec, data, str(path), node)
    if spec.experiment is None:  # quantization: no training cells
        _check_eval(lab, path, spec, str(spec.eval.task), None)
        return Study(name, path, spec, (), str(spec.eval.task))
    as_written = Path(spec.experiment)  # a path is read from the lab root, wherever the command runs (a node)
    try:
        experiment_path = lab.experiment_path(str(lab.root / as_written) if as_written.suffix in (".yaml", ".yml")
                                              and not as_written.is_absolute() else spec.experiment)
    except LlamalabError as exc:
        raise LlamalabError(f"{path}: key 'experiment': {exc}") from None
    cells, seen = [], set()
    for combination in spec.combinations():
        for seed in spec.seeds:
            overrides = {**combination, "seed": seed}
            try:
                experiment, resolved = load_experiment(experiment_path, overrides)
            except LlamalabError as exc:
                raise LlamalabError(f"{path}: cell {overrides}: {exc}") from None
            key = config_hash(resolved)
            if key in seen:
                raise LlamalabError(f"{path}: cell {overrides} repeats another cell's settings")
            seen.add(key)
            cells.append(Cell(overrides, resolved, key))
    tasks = sorted({cell.config["task"] for cell in cells})
    if spec.eval.task is None and len(tasks) > 1:
        raise LlamalabError(f"{path}: the cells train on several tasks ({', '.join(tasks)}), and a study evaluates "
                            "every cell on one: set `eval: {task: ...}`, or make one study per task")
    task = spec.eval.task or experiment.task
    _check_eval(lab, path, spec, task, cells[0].config.get("format"))
    return Study(name, path, spec, tuple(cells), task, experiment_path)
