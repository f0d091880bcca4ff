"""A lab with real runs for the report and site tests, seeded with hostile text everywhere a user or model writes.

Real records: a tiny-Llama LoRA run, its evaluation and the base model's on sentiment (test and dev), and an
API model served by a real llama.cpp server on 127.0.0.1 (so cost and latency are known). Then predictions,
posts, people, projects, publications and the lab description get HTML and script payloads: the site must show
them as text and run none of them.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import yaml

from llamalab.evaluation.evaluate import EvalSettings, evaluate
from llamalab.lab import Lab, find_lab, init_lab
from llamalab.publish.posts import new_post
from llamalab.runs.files import read_jsonl, write_text_atomic
from llamalab.training.trainer import train

KEY_ENV = "LLAMALAB_SITE_TEST_KEY"
# Each payload sets window.__pwned (or shows a dialog) if it ever runs.
PAYLOADS = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    '"><svg onload="window.__pwned = 3"></svg><a href="javascript:window.__pwned = 4">x</a>',
    "<b>unclosed <i>broken <table><tr><td>html",
]


def build_published_lab(root: Path, tiny_model_dir: Path, llama_server: str) -> Lab:
    lab = init_lab(root)
    config = yaml.safe_load((lab.root / "lab.yaml").read_text())
    config["description"] = f"Our question {PAYLOADS[1]} and more."
    config["api_models"] = {"smol-api": {
        "base_url": llama_server, "model": "smollm2", "api_key_env": KEY_ENV, "input_price_per_mtok": 0.15,
        "output_price_per_mtok": 0.6, "max_concurrency": 4, "timeout_s": 30,
    }}
    (lab.root / "lab.yaml").write_text(yaml.safe_dump(config))
    lab = find_lab(lab.root)
    (lab.root / "experiments" / "tiny.yaml").write_text(
        f"task: sentiment\nbase_model: {tiny_model_dir}\nmax_steps: 8\nsave_steps: 4\ntrain_examples: 64\n"
        "lora: {r: 4, alpha: 8}\n")
    trained = train(lab, "tiny")
    smaller = train(lab, "tiny", train_examples=32)  # a second size: the scaling figure needs two
    for system, split, extra in ((str(tiny_model_dir), "test", {}), (trained.id, "test", {}),
                                 (smaller.id, "test", {}),
                                 (str(tiny_model_dir), "dev", {}),
                                 ("smol-api", "test", {"max_new_tokens": 4, "limit": 24})):
        settings = {"system": system, "task": "sentiment", "split": split, "limit": 40, **extra}
        record = evaluate(lab, EvalSettings(**settings))
    # A sweep over the two training-set sizes: its cells are the runs above (same settings, same evaluation), so
    # the site gets a study page without training anything more.
    (lab.root / "studies" / "tiny-sweep.yaml").write_text(
        "kind: sweep\nexperiment: tiny\ngrid:\n  train_examples: [32, 64]\neval: {limit: 40}\n"
        "comparators: {baselines: false}\n")
    _poison_predictions(record.folder / "predictions.jsonl")
    _poison_content(lab)
    return lab


def _poison_predictions(path: Path) -> None:
    import json

    rows = read_jsonl(path)
    for row, payload in zip(rows, PAYLOADS, strict=False):
        row["generation"] = payload
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _poison_content(lab: Lab) -> None:
    today = datetime.date.today().isoformat()
    (lab.root / "people" / "mallory.md").write_text(
        f"---\nname: 'Mallory {PAYLOADS[0]}'\nrole: '{PAYLOADS[1]}'\n---\nBio with {PAYLOADS[2]} and {PAYLOADS[3]}\n")
    (lab.root / "projects" / "hostile.md").write_text(
        f"---\ntitle: 'Hostile {PAYLOADS[0]}'\nsummary: '{PAYLOADS[1]}'\n---\n{PAYLOADS[2]}\n\n"
        "[click](javascript:window.__pwned=5)\n")
    with (lab.root / "publications.bib").open("a") as bib:
        bib.write("\n@misc{hostile2026,\n  title = {Hostile " + PAYLOADS[1] + "},\n  author = {Mallory, M.},\n"
                  "  year = {2026},\n  url = {javascript:window.__pwned=6}\n}\n")
    post = new_post(lab, "Week one", ["Ada Example"])
    text = post.read_text().replace("## Next", f"## Next\n\nRaw HTML in a post: {PAYLOADS[0]} {PAYLOADS[2]}\n")
    post.write_text(text)
    assert today in post.name
