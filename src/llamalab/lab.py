"""A lab repository: lab.yaml at the root, tasks/, experiments/, data/, runs/."""

from __future__ import annotations

import datetime
import difflib
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import Field

from llamalab.config import LlamalabError, StrictModel, load_config


class Member(StrictModel):
    name: str
    role: str = ""
    url: str = ""


class ApiModelConfig(StrictModel):
    """An industry model behind an OpenAI-compatible chat API. The key is read from `api_key_env`."""

    base_url: str
    model: str
    api_key_env: str | None = Field(None, description="NAME of the environment variable holding the key")
    input_price_per_mtok: float = Field(0.0, ge=0, description="USD per million input tokens")
    output_price_per_mtok: float = Field(0.0, ge=0, description="USD per million output tokens")
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)


class WebsiteConfig(StrictModel):
    """Settings of the generated site (`llamalab site build`)."""

    url: str = Field("", description="where the site is published, e.g. https://my-lab.github.io/lab/ (for the feed)")
    repository: str = Field("", description="the lab repository's web address, linked from every page")


class LabConfig(StrictModel):
    """lab.yaml: who the lab is, and which API models it compares against. Secrets never live here."""

    name: str
    description: str = ""
    members: list[Member] = []
    api_models: dict[str, ApiModelConfig] = {}
    website: WebsiteConfig = WebsiteConfig()
    local_compute_usd_per_hour: float | None = Field(
        None, ge=0, description="price of an hour of your own hardware, to put local models on the cost axis")


@dataclass(frozen=True)
class Lab:
    root: Path
    config: LabConfig

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def task_path(self, name: str) -> Path:
        return self._named_file("tasks", name)

    def experiment_path(self, name: str) -> Path:
        return self._named_file("experiments", name)

    def _named_file(self, folder: str, name: str) -> Path:
        """Accept a bare name (`sentiment`) or a path to the YAML file."""
        as_path = Path(name)
        if as_path.suffix in (".yaml", ".yml") and as_path.is_file():
            return as_path.resolve()
        path = self.root / folder / f"{name}.yaml"
        if path.is_file():
            return path
        known = sorted(p.stem for p in (self.root / folder).glob("*.yaml"))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"available: {', '.join(known) or 'none'}"
        raise LlamalabError(f"no {folder[:-1]} named {name!r} in {self.root / folder}: {hint}")


def find_lab(start: Path | str | None = None) -> Lab:
    """The lab containing `start` (default: the current directory), found by its lab.yaml."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "lab.yaml").is_file():
            return Lab(folder, load_config(LabConfig, folder / "lab.yaml"))
    raise LlamalabError(
        f"no lab.yaml in {here} or any parent folder: run inside a lab, pass --lab DIR, "
        "or create one with `llamalab init DIR`"
    )


def example_lab_source() -> Path:
    """The example lab shipped inside the package (tasks, experiments and licensed data)."""
    return Path(str(resources.files("llamalab") / "example_lab"))


def _date_first_post(path: Path) -> None:
    """The scaffolded welcome post is dated the day the lab is created, and named like `post new` names posts."""
    today = datetime.date.today().isoformat()
    text = re.sub(r"^date: .*$", f"date: {today}", path.read_text(encoding="utf-8"), count=1, flags=re.M)
    path.with_name(f"{today}-welcome.md").write_text(text, encoding="utf-8")
    path.unlink()


def init_lab(target: Path) -> Lab:
    """Create a lab at `target` from the shipped example (refuses to overwrite an existing lab)."""
    if (target / "lab.yaml").exists():
        raise LlamalabError(f"{target} already holds a lab (lab.yaml exists)")
    if target.exists() and any(target.iterdir()):
        raise LlamalabError(f"{target} is not empty: choose a new folder")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(example_lab_source(), staging, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    (staging / "runs").mkdir()
    _date_first_post(staging / "posts" / "welcome.md")
    if target.exists():
        target.rmdir()
    staging.rename(target)
    return find_lab(target)
