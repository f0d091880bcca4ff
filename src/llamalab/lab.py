"""A lab repository: lab.yaml at the root, tasks/, experiments/, data/, runs/."""

from __future__ import annotations

import datetime
import difflib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from llamalab.backends.api import ApiModel
from llamalab.config import LlamalabError, StrictModel, load_config
from llamalab.runs.files import staged_folder


class Member(StrictModel):
    name: str
    role: str = ""
    url: str = ""


class WebsiteConfig(StrictModel):
    """Settings of the generated site (`llamalab site build`)."""

    url: str = Field("", description="where the site is published, e.g. https://my-lab.github.io/lab/ (for the feed)")
    repository: str = Field("", description="the lab repository's web address, linked from every page")


class LabConfig(StrictModel):
    """lab.yaml: who the lab is, and which API models it compares against. Secrets never live here."""

    name: str
    description: str = ""
    members: list[Member] = []
    api_models: dict[str, ApiModel] = {}
    website: WebsiteConfig = WebsiteConfig()
    local_compute_usd_per_hour: float | None = Field(
        None, ge=0, description="price of an hour of your own hardware, to put local models on the cost axis")

    @field_validator("api_models", mode="before")
    @classmethod
    def _name_api_models(cls, value: Any) -> Any:
        """An API model's name is its key under `api_models:`; writing `name:` in the entry is optional."""
        if not isinstance(value, dict):
            return value
        named = {}
        for key, entry in value.items():
            if isinstance(entry, dict):
                if entry.get("name", key) != key:
                    raise ValueError(f"api model {key!r} has name {entry['name']!r}: its name is its key")
                entry = {**entry, "name": key}
            named[key] = entry
        return named


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
    if start is not None and not here.exists():  # a mistyped --lab inside a lab is not that lab
        raise LlamalabError(f"lab folder {start} does not exist: check --lab (or create one with `llamalab init "
                            f"{start}`)")
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
    """The scaffolded welcome post is dated the day the lab is created (a local date), and named like `post new`
    names posts. It covers no runs, and says so (`runs: []`): the first `post new` has every finished run, also
    runs copied in that ended before the lab was made. `runs_until` is the time it was made, in UTC."""
    made = datetime.datetime.now(datetime.UTC)
    today = made.astimezone().date().isoformat()
    until = made.isoformat(timespec="milliseconds")
    lines = f"date: {today}\nruns_until: '{until}'\nruns: []"  # quoted: YAML would read a bare time as a datetime
    text = re.sub(r"^date: .*$", lines, path.read_text(encoding="utf-8"), count=1, flags=re.M)
    path.with_name(f"{today}-welcome.md").write_text(text, encoding="utf-8")
    path.unlink()


def init_lab(target: Path | str, note: Callable[[str], None] = lambda line: None) -> Lab:
    """Create a lab at `target` from the shipped example (refuses to overwrite an existing lab).

    The lab becomes a git repository with a first commit (see `_init_git`); `note` gets a line saying how that went.
    """
    target = Path(target).absolute()  # `init .` names the folder by its path
    if target.exists() and not target.is_dir():
        raise LlamalabError(f"{target} exists and is not a folder: choose a new folder")
    if (target / "lab.yaml").exists():
        raise LlamalabError(f"{target} already holds a lab (lab.yaml exists)")
    if target.exists() and (held := sorted(e.name for e in target.iterdir() if e.name != _INIT_STAGING)):
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise LlamalabError(f"{target} is not empty (it holds {shown}): choose a new folder, or empty this one")
    # Built in staging (the git commit too), so a kill leaves no half lab. An existing empty folder is filled, not
    # replaced: a shell inside it (`llamalab init .`) would be left in a removed folder.
    if not target.is_dir():
        with staged_folder(target) as staging:
            _scaffold(staging, note)
        return find_lab(target)
    staging = target / _INIT_STAGING
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed init
    try:
        _scaffold(staging, note)
        for entry in sorted(staging.iterdir(), key=lambda path: path.name == "lab.yaml"):
            entry.rename(target / entry.name)  # lab.yaml last: a folder is a lab only once all else is in it
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return find_lab(target)


def _scaffold(folder: Path, note: Callable[[str], None]) -> None:
    shutil.copytree(example_lab_source(), folder, ignore=shutil.ignore_patterns("runs", "__pycache__"),
                    dirs_exist_ok=True)
    (folder / "runs").mkdir()
    _date_first_post(folder / "posts" / "welcome.md")
    note(_init_git(folder))


_INIT_STAGING = ".llamalab-init.partial"  # inside a folder `init` fills
LAB_COMMIT_MESSAGE = "llamalab init: example lab"
# Used only for identity keys the user has not configured, so the first commit works on a fresh machine.
_FALLBACK_IDENTITY = {"user.name": "llamalab", "user.email": "llamalab@localhost"}


def _init_git(folder: Path) -> str:
    """Make a new lab folder a git repository with one commit, so run records carry the lab's commit.

    Skipped inside an existing repository (no nested repo: the lab is committed there) and where git is not
    installed. Returns a line for the user saying which happened.
    """
    if shutil.which("git") is None:
        return "git is not installed: the lab is not a git repository, so run records will carry no lab commit"
    outer = _git(folder.parent, "rev-parse", "--show-toplevel", check=False)
    if outer.returncode == 0:
        return f"the lab is inside the git repository {outer.stdout.strip()}: commit it there"
    try:
        _git(folder, "init", "--quiet")
        # on `main` whatever git's default branch is here: the site workflow builds and deploys on pushes to main
        _git(folder, "symbolic-ref", "HEAD", "refs/heads/main")
        _git(folder, "add", "--all")
        missing = [key for key in _FALLBACK_IDENTITY if _git(folder, "config", key, check=False).returncode != 0]
        identity = [arg for key in missing for arg in ("-c", f"{key}={_FALLBACK_IDENTITY[key]}")]
        _git(folder, *identity, "commit", "--quiet", "--message", LAB_COMMIT_MESSAGE)
    except subprocess.SubprocessError as exc:  # e.g. a commit hook or signing setup that refuses
        reason = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        return f"git could not commit the lab ({reason}): commit it yourself"
    return f"made the lab a git repository, with a first commit ({LAB_COMMIT_MESSAGE!r}) on branch main"


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check, timeout=120)
