"""The website's hand-written content: posts, people, projects and publications read from a lab folder."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from llamalab.config import LlamalabError
from llamalab.publish.content import (
    load_people,
    load_posts,
    load_projects,
    load_publications,
    render_markdown,
    split_front_matter,
)


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def post(title: str, date: str, extra: str = "", body: str = "Body.") -> str:
    return f"---\ntitle: {title}\ndate: {date}\n{extra}---\n{body}\n"


# --- Posts, people, projects ----------------------------------------------------------------------------------


def test_missing_folders_give_empty_lists(tmp_path: Path):
    assert load_posts(tmp_path) == []
    assert load_people(tmp_path) == []
    assert load_projects(tmp_path) == []
    assert load_publications(tmp_path) == []


def test_posts_are_newest_first_then_slug_descending(tmp_path: Path):
    write(tmp_path, "posts/a-old.md", post("Old", "2026-11-12"))
    write(tmp_path, "posts/b-same-day.md", post("B", "2026-11-26"))
    write(tmp_path, "posts/c-same-day.md", post("C", "'2026-11-26'"))  # quoted: a string, parsed all the same
    write(tmp_path, "posts/d-mid.md", post("Mid", "2026-11-19", "authors: [Ada, Grace]\ntags: [eval]\n"))
    posts = load_posts(tmp_path)
    assert [p.slug for p in posts] == ["c-same-day", "b-same-day", "d-mid", "a-old"]
    mid = posts[2]
    assert mid.date == datetime.date(2026, 11, 19)
    assert (mid.authors, mid.tags, mid.summary) == (["Ada", "Grace"], ["eval"], "")
    assert mid.body_html == "<p>Body.</p>\n"
    assert mid.source == tmp_path / "posts" / "d-mid.md"


def test_people_by_order_then_name_and_projects_by_title(tmp_path: Path):
    write(tmp_path, "people/zed.md", "---\nname: Zed\norder: 1\n---\n")
    write(tmp_path, "people/bob.md", "---\nname: Bob\nrole: PhD student\n---\n*Likes* evals.\n")
    write(tmp_path, "people/amy.md", "---\nname: Amy\nurl: https://amy.example\n---\n")
    people = load_people(tmp_path)
    assert [p.slug for p in people] == ["zed", "amy", "bob"]
    assert (people[1].url, people[1].order, people[2].role) == ("https://amy.example", 100, "PhD student")
    assert people[2].bio_html == "<p><em>Likes</em> evals.</p>\n"

    write(tmp_path, "projects/p2.md", "---\ntitle: Zebra\nstatus: done\ntasks: [gsm8k]\npeople: [amy]\n---\n# Z\n")
    write(tmp_path, "projects/p1.md", "---\ntitle: apple\nsummary: First.\n---\n")
    projects = load_projects(tmp_path)
    assert [p.title for p in projects] == ["apple", "Zebra"]
    assert (projects[0].status, projects[0].tasks, projects[0].summary) == ("active", [], "First.")
    assert (projects[1].status, projects[1].tasks, projects[1].people) == ("done", ["gsm8k"], ["amy"])
    assert projects[1].body_html == "<h1>Z</h1>\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No front matter here.\n", ["posts/x.md", "front matter", "---"]),
        ("---\ntitle: [unclosed\ndate: 2026-11-26\n---\n", ["posts/x.md", "not valid YAML"]),
        ("---\n- a list\n---\n", ["posts/x.md", "key: value"]),
        ("---\ntitle: T\n---\n", ["posts/x.md", "'date'", "date: 2026-11-26"]),
        ("---\ndate: 2026-11-26\n---\n", ["posts/x.md", "'title'", "title:"]),
        (post("T", "26.11.2026"), ["posts/x.md", "'date: 26.11.2026'", "YYYY-MM-DD"]),
        (post("T", "2026-11-26", "titel: typo\n"), ["posts/x.md", "'titel'", "allowed keys: title, date"]),
        (post("T", "2026-11-26", "tags: {a: 1}\n"), ["posts/x.md", "'tags'", "list"]),
    ],
)
def test_front_matter_errors_name_the_file_and_the_fix(tmp_path: Path, text: str, expected: list[str]):
    write(tmp_path, "posts/x.md", text)
    with pytest.raises(LlamalabError) as info:
        load_posts(tmp_path)
    for fragment in expected:
        assert fragment in str(info.value)


def test_person_order_must_be_a_number(tmp_path: Path):
    write(tmp_path, "people/ada.md", "---\nname: Ada\norder: first\n---\n")
    with pytest.raises(LlamalabError, match=r"people/ada\.md: 'order' must be a whole number"):
        load_people(tmp_path)


def test_split_front_matter_returns_the_body():
    meta, body = split_front_matter("\ufeff---\ntitle: T\n---\n# Heading\n\n---\nmore\n", Path("posts/x.md"))
    assert meta == {"title": "T"}
    assert body == "# Heading\n\n---\nmore\n"


# --- Markdown -------------------------------------------------------------------------------------------------


def test_markdown_shows_raw_html_as_text():
    html = render_markdown("Hi <script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n<div>broken")
    assert "<script" not in html and "<img" not in html and "<div" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_markdown_drops_javascript_links():
    html = render_markdown("[x](javascript:alert(1)) [y](JavaScript:alert(1)) <javascript:alert(1)> [z](vbscript:a)")
    assert not re.search(r"href=\"\s*(javascript|vbscript)", html, re.IGNORECASE)
    assert "<a " not in html


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("../runs/abc/", "../runs/abc/index.html"),
        ("other.md#s", "other.html#s"),
        ("other.md", "other.html"),
        ("sub/page.md?x=1", "sub/page.html?x=1"),
        ("https://x.org/a.md", "https://x.org/a.md"),
        ("https://x.org/docs/", "https://x.org/docs/"),
        ("mailto:a@b.org", "mailto:a@b.org"),
        ("/abs/page.md", "/abs/page.md"),
        ("#section", "#section"),
        ("plain.html", "plain.html"),
    ],
)
def test_relative_links_are_rewritten_for_the_static_site(href: str, expected: str):
    assert f'href="{expected}"' in render_markdown(f"[link]({href})")


def test_markdown_tables_are_enabled():
    html = render_markdown("| a | b |\n|---|---|\n| 1 | 2 |\n")
    assert "<table>" in html and "<td>1</td>" in html


# --- Publications ---------------------------------------------------------------------------------------------

BIB = r"""% Our papers

@article{mueller2024,
  author = {M{\"u}ller, J{\"o}rg and {Barnes and Noble} and Jan van der Berg},
  title = {The {BERT} Model of {\"U}ber
           Evaluation},
  journal = {J. {M}achine Learning},
  year = {2024},
  doi = {10.1000/xyz_1},
}

@inproceedings{doe2023,
  title = "Zeta results",
  author = "Doe, Jane",
  booktitle = {Proc. of {ACL}},
  year = 2023,
  url = {https://example.org/p%20q},
  doi = {10.1000/ignored},
}

@misc{alpha2024,
  title = {Alpha},
  eprint = {2401.00001},
  year = {2024},
}
"""


def test_publications_are_plain_text_newest_first(tmp_path: Path):
    write(tmp_path, "publications.bib", BIB)
    pubs = load_publications(tmp_path)
    assert [p.key for p in pubs] == ["alpha2024", "mueller2024", "doe2023"]
    mueller = pubs[1]
    assert mueller.entry_type == "article"
    assert mueller.title == "The BERT Model of Über Evaluation"
    assert mueller.authors == ["Jörg Müller", "Barnes and Noble", "Jan van der Berg"]
    assert (mueller.year, mueller.venue) == ("2024", "J. Machine Learning")
    assert mueller.url == "https://doi.org/10.1000/xyz_1"
    assert mueller.bibtex.startswith("@article{mueller2024,") and mueller.bibtex.endswith("}")
    assert "{\\\"u}" in mueller.bibtex  # the raw entry, as written
    doe = pubs[2]
    assert (doe.venue, doe.url, doe.authors) == ("Proc. of ACL", "https://example.org/p%20q", ["Jane Doe"])
    assert (pubs[0].venue, pubs[0].url, pubs[0].authors) == ("2401.00001", "", [])


def test_broken_bibtex_entry_names_the_file_and_line(tmp_path: Path):
    broken = BIB.replace("  doi = {10.1000/ignored},\n}\n", "  doi = {10.1000/ignored},\n")  # forgot its '}'
    write(tmp_path, "publications.bib", broken)
    line = broken.splitlines().index("@inproceedings{doe2023,") + 1
    with pytest.raises(LlamalabError, match=rf"publications\.bib, line {line}\b"):
        load_publications(tmp_path)
    with pytest.raises(LlamalabError, match=r"@misc"):  # bibtexparser's reason: the next entry began too early
        load_publications(tmp_path)


def test_duplicate_bibtex_key_is_an_error(tmp_path: Path):
    write(tmp_path, "publications.bib", BIB + "\n@misc{doe2023, title = {Again}}\n")
    with pytest.raises(LlamalabError, match=r"publications\.bib, line \d+: .*doe2023"):
        load_publications(tmp_path)
