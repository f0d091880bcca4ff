"""The experiment file (experiments/<name>.yaml): base model, method, hyperparameters, task, seed."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from llamalab.config import KeyProblem, LlamalabError, StrictModel, apply_overrides, load_yaml, parse_model


class LoraSpec(StrictModel):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout costs ~17% of a CPU step")
    target_modules: str | list[str] = Field("all-linear", description="module names, or all-linear")

    @field_validator("target_modules")
    @classmethod
    def _a_pattern(cls, value: str | list[str]) -> str | list[str]:
        """A string other than all-linear is a regular expression (PEFT's rule): one that does not compile is
        refused here, naming the key, not by a traceback when training starts."""
        if isinstance(value, str) and value != "all-linear":
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression ({exc}); give a list of module "
                                 "names, e.g. [q_proj, v_proj], or all-linear") from None
        return value


class Experiment(StrictModel):
    task: str
    base_model: str = "smollm2-135m-instruct"
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="qlora: LoRA on the base model in 4-bit NF4 (bitsandbytes), merged onto it for export")
    lora: LoraSpec = LoraSpec()
    format: Literal["plain", "chat"] | None = Field(None, description="prompt format; default: the task's")
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradients' global norm to this before each update; null: no clipping")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(256, ge=8, description="longer training examples are skipped (and counted)")
    train_examples: int | None = Field(None, ge=1, description="train on a seeded random subset of this size")
    seed: int = 0
    save_steps: int = Field(25, ge=1, description="checkpoint every this many optimizer steps")
    bf16: Literal["auto", "yes", "no"] = Field(
        "auto", description="bfloat16 autocast: auto uses it where the hardware supports it"
    )
    activation_checkpointing: Literal["auto", "yes", "no"] = Field(
        "auto", description="recompute activations in the backward pass: auto turns it on only when `llamalab plan` "
        "predicts the run would not fit the device's memory")
    memory_limit: str | None = Field(None, description="plan as if the device had this much memory (e.g. 24GB)")

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> Experiment:
        # The resolved dict of every experiment (its record, its hash) lists the default `lora`: that reads back.
        if self.method == "full" and "lora" in self.model_fields_set and self.lora != LoraSpec():
            raise KeyProblem("lora", "`lora` settings given but method is full; remove them or set method: lora")
        return self

    @field_validator("bf16", "activation_checkpointing", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        """YAML reads an unquoted yes/no (in a file or as `key=yes` on the command line) as a boolean."""
        return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_unit(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):  # `memory_limit: 24`
            raise ValueError(f"give the unit too, such as {value}GB or {value}GiB")
        return value

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        from llamalab.training.plan import parse_memory

        if value is not None:
            try:
                memory = parse_memory(value)
            except LlamalabError as exc:
                raise ValueError(str(exc)) from None
            if memory <= 0:
                raise ValueError("the device's memory must be more than 0, such as 24GB")
        return value


# Settings added after records existed: left out of the resolved config (and its hash) at their default.
LATER_SETTINGS = {"activation_checkpointing": "auto", "memory_limit": None,
                  # runs before it was a setting clipped at 1.0 too (the Trainer's default)
                  "max_grad_norm": 1.0}


def load_experiment(path: Path, overrides: Mapping[str, Any] | None = None) -> tuple[Experiment, dict]:
    """The experiment file with `overrides` (dotted keys, e.g. {"lora.r": 4}) applied; also its resolved dict."""
    data, node = load_yaml(path)
    if overrides and isinstance(data, dict | None):  # anything else fails validation below, with its line
        data = apply_overrides(data or {}, overrides)
    shown = " ".join(f"{k}={v}" for k, v in (overrides or {}).items())
    return resolve_experiment(data, f"{path} (with overrides {shown})" if overrides else str(path), node,
                              list(overrides or {}))


def resolve_experiment(data: Any, source: str, node: yaml.Node | None = None,
                       overridden: list[str] | None = None) -> tuple[Experiment, dict]:
    """Validate an experiment (errors name `source` and, for files, the line, or the override) and return it with
    its resolved dict: every setting, defaults included, as recorded in the run's config.yaml and hashed."""
    experiment = parse_model(Experiment, data, source, node, overridden or ())
    resolved = experiment.model_dump(mode="json")
    for key, default in LATER_SETTINGS.items():  # older runs keep their config hash
        if resolved[key] == default:
            del resolved[key]
    return experiment, resolved
