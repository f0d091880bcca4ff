"""Names that become the site's and the report's paths and links: a post or project named `index` replaced its
section's list of pages, and a task named `q&a#1` broke seven links and the LaTeX (`\\input{tables/q&a#1.tex}`).
Each is refused where it is read, with the file and a name to use instead, before anything is written."""

from __future__ import annotations

import random
import re
import shutil

import pytest

from llamalab.config import LlamalabError
from llamalab.publish.report import build_report
from llamalab.publish.results import study_boards
from llamalab.publish.site import build_site
from llamalab.studies.spec import load_study
from llamalab.tasks.task import NAME, load_task, suggested_name

TEXT = {"posts": "---\ntitle: All posts?\ndate: 2026-11-26\n---\nHello.\n",
        "projects": "---\ntitle: A project\n---\nAbout it.\n"}


@pytest.mark.parametrize(("folder", "name"), [("posts", "index.md"), ("posts", "Index.md"), ("projects", "index.md")])
def test_a_post_or_project_named_index_is_refused_before_the_site_is_written(lab, folder, name):
    (lab.root / folder / name).write_text(TEXT[folder])
    out = lab.root / "site-index"
    with pytest.raises(LlamalabError, match=rf"{folder}/{name}: its page would be {folder}/{name[:-3]}\.html, the "
                                            rf"list of all {folder}, and replace it: rename the file"):
        build_site(lab, out)
    assert not out.exists()


@pytest.mark.parametrize(("folder", "name", "valid"), [
    ("posts", "week 1 & 2#draft.md", "week-1-2-draft"), ("projects", "what?.md", "what")])
def test_a_post_or_project_whose_name_breaks_its_link_is_refused(lab, folder, name, valid):
    (lab.root / folder / name).write_text(TEXT[folder])
    out = lab.root / "site-names"
    with pytest.raises(LlamalabError, match=re.escape(f"{folder}/{name}: its file name is its page's address") +
                       ".*" + re.escape(f"rename the file to {folder}/{valid}.md")):
        build_site(lab, out)
    assert not out.exists()


def test_a_task_name_that_breaks_links_and_latex_is_refused_where_the_task_is_read(lab):
    source = lab.task_path("sentiment").read_text()
    path = lab.root / "tasks" / "q&a#1.yaml"
    path.write_text(source.replace("name: sentiment", "name: 'q&a#1'"))
    expected = re.escape(f"{path}:") + r"\d+: key 'name': 'q&a#1' .*links.*" + re.escape(
        "e.g. `name: q-a-1`, and rename the file to tasks/q-a-1.yaml")
    with pytest.raises(LlamalabError, match=expected):
        load_task(path, lab.root)
    with pytest.raises(LlamalabError, match=expected):
        build_report(lab, "names")
    with pytest.raises(LlamalabError, match=expected):
        build_site(lab, lab.root / "site-task")
    assert not (lab.root / "reports" / "names").exists() and not (lab.root / "site-task").exists()
    # renamed as suggested, it loads
    path.rename(lab.root / "tasks" / "q-a-1.yaml")
    (lab.root / "tasks" / "q-a-1.yaml").write_text(source.replace("name: sentiment", "name: q-a-1"))
    assert load_task(lab.task_path("q-a-1"), lab.root).name == "q-a-1"


def test_a_study_name_that_breaks_links_is_refused(lab):
    shutil.copyfile(lab.root / "studies" / "sentiment-scaling.yaml", lab.root / "studies" / "my study#2.yaml")
    with pytest.raises(LlamalabError, match=re.escape("my study#2.yaml: the study's name 'my study#2'") + ".*" +
                       re.escape("rename the file to studies/my-study-2.yaml")):
        load_study(lab, "my study#2")
    with pytest.raises(LlamalabError, match=r"study my study#2: .*rename the file to studies/my-study-2\.yaml"):
        study_boards(lab)


def test_the_example_lab_and_the_test_labs_keep_the_rule(lab):
    """Every task, study, post and project of the shipped lab has a name the site and report can link to."""
    names = [p.stem for folder in ("tasks", "studies", "posts", "projects")
             for p in (lab.root / folder).iterdir() if p.suffix in (".yaml", ".md")]
    assert names and all(NAME.fullmatch(name) for name in names), names
    assert all(load_task(lab.task_path(p.stem), lab.root) for p in (lab.root / "tasks").glob("*.yaml"))


def test_suggested_names_follow_the_rule():
    rng = random.Random(5)
    alphabet = "aZ09._- &#?/\\é中%:"
    for _ in range(500):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
        suggestion = suggested_name(name, "my-task")
        assert NAME.fullmatch(suggestion), (name, suggestion)
        if NAME.fullmatch(name):
            assert suggestion == name or name[-1] in "._-"  # a valid name is kept (bar trailing punctuation)
