"""Property tests for the figures bench/gpu_train.py prints and writes from what it measured.

The bench runs on a lent GPU, with little time to spare, so its report must be right the first time: here its pure
parts (the summary `_print`, the step clock's timing, `_attempt`, and `main`, `trl_default`, `llamalab_train` and
`label_scoring` with the GPU work replaced by fakes that return random raw measurements) are driven with random
inputs and what they print is read back and checked against a small reference written from the bench's docstring
and the README: model FLOPs 4 P per trained token (P every parameter, embeddings included), 2 x (P less the
embedding table and the output layer) per token computed when scoring; shares of the card's measured matmul rate;
peak memory in MiB (2**20 bytes) shown in GiB (2**10 MiB); the plan's error as predicted / measured - 1, as the
README's tables give it; the ratio to TRL's default recipe. Nothing here needs CUDA: `torch.cuda` is faked where
the bench reads it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import signal
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).parents[1]
SEEDS = range(30)


def _load_bench():
    spec = importlib.util.spec_from_file_location("gpu_train", ROOT / "bench" / "gpu_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
NAME_WIDTH = 18  # the summary's name column


# --- the reference: what each printed figure must be, from the bench's docstring and the README ---------------------


def training_tflops(params: int, tokens_per_s: float) -> float:
    """4 P per trained token (LoRA and QLoRA: forward 2 P, backward 2 P for the activations), in TFLOP/s."""
    return 4 * params * tokens_per_s / 1e12


def scoring_tflops(scoring_flops: float, run: dict) -> float:
    """Forward FLOPs per token the model computed (`forward_tokens_per_s`; where a backend did not say, every
    token scored) in TFLOP/s."""
    computed = run.get("forward_tokens_per_s") or run["tokens_per_s"]
    return scoring_flops * computed / 1e12


def gib(mib: float) -> float:
    return mib / 2**10  # MiB are 2**20 bytes, GiB 2**30


def plan_error(predicted_mib: float, measured_mib: float) -> float:
    """The README tables' convention: predicted / measured - 1 (negative: the plan under-predicted)."""
    return predicted_mib / measured_mib - 1


def assert_shown(text: str, value: float, decimals: int, what: str = "") -> None:
    """`text` is `value` printed with `decimals` places (thousands separators allowed)."""
    shown = float(text.replace(",", ""))
    assert re.fullmatch(r"[+-]?[\d,]+" + (rf"\.\d{{{decimals}}}" if decimals else ""), text), (what, text, decimals)
    assert abs(shown - value) <= 0.5 * 10**-decimals + 1e-9 * abs(value), (what, text, value)


def assert_shown_sig(text: str, value: float, digits: int = 3, what: str = "") -> None:
    """`text` is `value` printed with `digits` significant digits (format `g`)."""
    shown = float(text)
    if value == 0:
        assert shown == 0, (what, text)
        return
    unit = 10 ** (math.floor(math.log10(abs(value))) - digits + 1)
    assert abs(shown - value) <= 0.5 * unit * (1 + 1e-9), (what, text, value)


def assert_percent(text: str, share: float, what: str = "") -> None:
    """`text` is `share` as a whole percentage."""
    assert re.fullmatch(r"[+-]?\d+", text), (what, text)
    assert abs(int(text) - 100 * share) <= 0.5 + 1e-9 * abs(100 * share), (what, text, share)


TRAINING = re.compile(
    r"(?P<tokens>[\d,]+) tokens/s +(?P<tflops>\S+) model TFLOP/s \((?P<pct>\d+)% of the card\)  "
    r"(?:peak n/a|peak +(?P<peak>[\d.]+) GiB)"
    r"(?: \(plan (?P<plan>[\d.]+) GiB(?:, (?P<error>[+-]\d+)%)?\), checkpointing (?P<checkpointing>on|off))?"
    r"(?:, reserved (?P<reserved>[\d.]+) GiB)?  "
    r"(?:TRL default (?:failed|skipped)|(?P<ratio>[\d.]+)x TRL default"
    r"(?: \((?P<steady_ratio>[\d.]+)x over the later half: TRL runs first\))?)")
STEADY = re.compile(
    r"(?P<tokens>[\d,]+) tokens/s over the later half of the steps \((?P<tflops>\S+) TFLOP/s, (?P<pct>\d+)%\); "
    r"first step (?P<first>\S+) s, then (?P<median>\S+) s a step \(median\)")
SCORING = re.compile(
    r"(?P<examples>[\d,]+\.\d) examples/s +(?P<tflops>\S+) forward TFLOP/s \((?P<pct>\d+)% of the card; "
    r"(?P<precision>\w+), batch (?P<batch>\S+), at most (?P<rows>\S+) rows"
    r"(?:; (?P<rechecked>\d+) of (?P<examples_n>\d+) close calls scored again in float32: their time counted, "
    r"their FLOPs not)?\)")


def check_summary(text: str, shape: str, params: int, scoring_flops: float, runs: dict, rate: float) -> None:
    """Every figure of `shape`'s summary in `text` (what `_print` printed) against the reference, computed from
    the raw results as they were written (`runs`); a run that failed or was skipped shows its error and no
    figure."""
    lines = text.split("\n")
    header = [i for i, line in enumerate(lines) if re.fullmatch(rf"{re.escape(shape)}: [\d.]+ B parameters", line)]
    assert len(header) == 1, (shape, text)
    at = header[0]
    assert_shown(lines[at].split(": ")[1].split(" ")[0], params / 1e9, 2, "parameters (billions)")
    assert lines[at - 1] == ""  # the summary starts a paragraph
    at += 1
    peer = runs.get("TRL default", {})
    for name, run in runs.items():
        prefix = f"  {name:{NAME_WIDTH}s} "
        line = lines[at]
        at += 1
        assert line.startswith(prefix), (name, line)
        body = line[len(prefix):].strip()
        if "error" in run:  # no figure of its own: its error, cut to 300 characters (a skipped run's says so)
            failed = "" if run["error"].startswith("skipped") else "failed: "
            assert body == f"{failed}{run['error'][:300]}".strip(), (name, body)
            continue
        if "examples_per_s" in run:
            check_scoring_line(body, name, run, scoring_flops, rate)
            continue
        shown = TRAINING.fullmatch(body)
        assert shown, (name, body)
        tflops = training_tflops(params, run["tokens_per_s"])
        assert_shown(shown["tokens"], run["tokens_per_s"], 0, "tokens/s")
        assert_shown_sig(shown["tflops"], tflops, 3, "model TFLOP/s")
        assert_percent(shown["pct"], tflops / rate, "share of the card")
        # the share comes from the tokens/s on the same line (the same timed window), within its rounding
        from_shown = training_tflops(params, float(shown["tokens"].replace(",", ""))) / rate
        assert abs(int(shown["pct"]) - 100 * from_shown) <= 0.5 + 100 * training_tflops(params, 0.5) / rate + 1e-9
        peak, predicted = run.get("peak_mib"), run.get("predicted_mib")
        if peak:
            assert_shown(shown["peak"], gib(peak), 1, "peak GiB")
        else:
            assert shown["peak"] is None and "peak n/a" in body
        if predicted:
            assert_shown(shown["plan"], gib(predicted), 1, "plan GiB")
            assert shown["checkpointing"] == ("on" if run["checkpointing"] else "off")
            if peak:
                assert shown["error"][0] == ("-" if predicted < peak else "+"), (predicted, peak, shown["error"])
                assert_percent(shown["error"], plan_error(predicted, peak), "plan error")
            else:
                assert shown["error"] is None
        else:
            assert shown["plan"] is None and shown["checkpointing"] is None
        if run.get("reserved_mib"):
            assert_shown(shown["reserved"], gib(run["reserved_mib"]), 1, "reserved GiB")
        else:
            assert shown["reserved"] is None
        if peer.get("tokens_per_s"):
            assert_shown(shown["ratio"], run["tokens_per_s"] / peer["tokens_per_s"], 2, "ratio to TRL")
        else:
            fate = "skipped" if peer.get("error", "").startswith("skipped") else "failed"
            assert shown["ratio"] is None and body.endswith(f"TRL default {fate}")
        if name != "TRL default" and peer.get("steady_tokens_per_s") and run.get("steady_tokens_per_s"):
            assert_shown(shown["steady_ratio"], run["steady_tokens_per_s"] / peer["steady_tokens_per_s"], 2,
                         "later-half ratio to TRL")
        else:
            assert shown["steady_ratio"] is None
        if run.get("steady_tokens_per_s"):
            line = lines[at]
            at += 1
            assert line.startswith(" " * (3 + NAME_WIDTH)), line
            steady = STEADY.fullmatch(line.strip())
            assert steady, line
            steady_tflops = training_tflops(params, run["steady_tokens_per_s"])
            assert_shown(steady["tokens"], run["steady_tokens_per_s"], 0, "later-half tokens/s")
            assert_shown_sig(steady["tflops"], steady_tflops, 3, "later-half TFLOP/s")
            assert_percent(steady["pct"], steady_tflops / rate, "later-half share of the card")
            assert float(steady["first"]) == run["first_step_s"] and float(steady["median"]) == run["median_step_s"]
    # the summary ends with its last run: nothing more is indented under it
    assert at == len(lines) or not lines[at].startswith("  "), lines[at:]


def check_scoring_line(body: str, name: str, run: dict, scoring_flops: float, rate: float) -> None:
    shown = SCORING.fullmatch(body)
    assert shown, (name, body)
    tflops = scoring_tflops(scoring_flops, run)
    assert_shown(shown["examples"], run["examples_per_s"], 1, "examples/s")
    assert_shown_sig(shown["tflops"], tflops, 3, "forward TFLOP/s")
    assert_percent(shown["pct"], tflops / rate, "scoring share of the card")
    assert shown["precision"] == run["precision"] and shown["batch"] == str(run["batch_size"])
    assert shown["rows"] == str(run.get("largest_batch_rows", run["batch_size"]))
    if run.get("rechecked_float32"):
        assert (int(shown["rechecked"]), int(shown["examples_n"])) == (run["rechecked_float32"], run["examples"])
    else:
        assert shown["rechecked"] is None


# --- random raw results, as the bench's runs return them --------------------------------------------------------------


def timing_of(rng: random.Random, tokens: float) -> dict:
    """The step clock's figures for random step ends (the bench's own StepClock, as the runs use it)."""
    clock = bench.step_clock()
    clock.ends = [rng.uniform(0, 1e4)]
    for _ in range(rng.choice([0, 1, 2, 3, 4, 5, 9, 30, 31])):
        clock.ends.append(clock.ends[-1] + rng.uniform(0.005, 8))
    return clock.timing(tokens)


def error_text(rng: random.Random) -> str:
    return rng.choice([
        f"skipped: {rng.randint(0, 19)} s left of the bench's --budget-s",
        f"RunTooLong: stopped after {rng.randint(20, 240)} s (bench/gpu_train.py's limit for this run)",
        f"OutOfMemoryError: CUDA out of memory. Tried to allocate {rng.uniform(0.1, 9):.2f} GiB",
        "RuntimeError: " + "x" * rng.randint(250, 400),  # longer than what is shown
    ])


def training_run(rng: random.Random, params: int, rate: float, planned: bool) -> dict:
    tokens_per_s = rng.uniform(0.001, 1.2) * rate * 1e12 / (4 * params)  # 0.1% to 120% of the card
    run = {"tokens_per_s": round(tokens_per_s, 1) if planned else tokens_per_s,
           "peak_mib": rng.choice([None, round(rng.uniform(50, 140_000), 1)]),
           "reserved_mib": rng.choice([None, rng.uniform(50, 140_000)])}
    if planned:
        run.update(predicted_mib=rng.choice([round(rng.uniform(50, 140_000), 1), run["peak_mib"],
                                             round((run["peak_mib"] or 1000) * rng.uniform(0.5, 1.5), 1)]),
                   checkpointing=rng.random() < 0.5, reason="auto: ...")
    return {**run, **timing_of(rng, tokens_per_s * rng.uniform(1, 100))}


def scoring_run(rng: random.Random, scoring_flops: float, rate: float, recheck: bool) -> dict:
    forward = round(rng.uniform(0.001, 1.2) * rate * 1e12 / scoring_flops)
    batch = rng.choice(["auto", 16, rng.randint(1, 512)])
    limit = rng.randint(8, 1066)
    return {"examples_per_s": round(rng.uniform(0.1, 5000), 2), "tokens_per_s": round(forward * rng.uniform(1, 3)),
            "forward_tokens_per_s": forward if rng.random() < 0.85 else None,
            "precision": rng.choice(["bfloat16", "float32"]), "batch_size": batch,
            "largest_batch_rows": rng.randint(1, 2048) if batch == "auto" and rng.random() < 0.8 else batch,
            "examples": limit, "rechecked_float32": rng.randint(1, limit) if recheck and rng.random() < 0.7 else 0}


def random_runs(rng: random.Random, shape: str, params: int, scoring_flops: float, rate: float) -> dict:
    def maybe_failed(run: dict) -> dict:
        return {"error": error_text(rng)} if rng.random() < 0.25 else run

    runs = {"TRL default": maybe_failed(training_run(rng, params, rate, planned=False)),
            "llamalab": maybe_failed(training_run(rng, params, rate, planned=True))}
    if shape == "7b":
        runs["llamalab, 24 GB"] = maybe_failed(training_run(rng, params, rate, planned=True))
        runs["llamalab QLoRA, 24 GB"] = maybe_failed(training_run(rng, params, rate, planned=True))
    else:
        runs["label scoring"] = maybe_failed(scoring_run(rng, scoring_flops, rate, recheck=True))
        runs["label scoring, bf16 alone"] = maybe_failed(scoring_run(rng, scoring_flops, rate, recheck=False))
    return runs


# --- the summary ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_the_summary_shows_each_written_figure_rounded(seed, capsys):
    """Each figure `_print` shows is the written result's value, computed as the docstring says and rounded as
    shown: tokens/s, model TFLOP/s and share of the card from the same tokens/s, the later half's, peak and plan
    in GiB, the plan's error, the ratio to TRL; failed and skipped runs show their error only."""
    rng = random.Random(seed)
    shape = rng.choice(["tiny", "1b", "7b"])
    params = rng.randint(10**6, 8 * 10**9)
    scoring_flops = 2 * params * rng.uniform(0.5, 0.99)
    rate = rng.choice([rng.uniform(0.05, 3), rng.uniform(100, 999)])  # a CPU's fp32 rate, a card's bf16 one
    runs = random_runs(rng, shape, params, scoring_flops, rate)
    written = json.loads(json.dumps(runs))  # what --out holds
    bench._print(shape, params, scoring_flops, written, rate)
    check_summary(capsys.readouterr().out, shape, params, scoring_flops, written, rate)


@pytest.mark.parametrize("seed", range(10))
def test_a_failed_or_skipped_peer_leaves_no_ratio(seed, capsys):
    """Without TRL's tokens/s no run shows a ratio to it (nor a later-half one), and TRL's line shows no figure."""
    rng = random.Random(seed)
    params, rate = rng.randint(10**8, 8 * 10**9), rng.uniform(100, 999)
    runs = {"TRL default": {"error": error_text(rng)},
            **{name: training_run(rng, params, rate, planned=True) for name in ("llamalab", "llamalab, 24 GB")}}
    bench._print("7b", params, params, runs, rate)
    out = capsys.readouterr().out
    check_summary(out, "7b", params, params, runs, rate)
    assert "x TRL default" not in out and "over the later half:" not in out
    trl = [line for line in out.splitlines() if line.startswith("  TRL default")]
    error = runs["TRL default"]["error"]
    failed = "" if error.startswith("skipped") else "failed: "
    assert trl == [f"  {'TRL default':{NAME_WIDTH}s} {failed}{error[:300]}"]


def test_a_skipped_peer_is_not_reported_as_failed(capsys):
    """A run left out for lack of time (never started) says it was skipped, on its line and on the others'."""
    runs = {"TRL default": {"error": "skipped: 12 s left of the bench's --budget-s"},
            "llamalab": {"tokens_per_s": 3000.0, "peak_mib": 20_000.0, "predicted_mib": 19_000.0,
                         "checkpointing": False, "reason": "", "reserved_mib": None, "first_step_s": 1.0}}
    bench._print("7b", 6_738_415_616, 1.3e10, runs, 790.0)
    lines = capsys.readouterr().out.splitlines()
    llamalab = next(line for line in lines if line.startswith("  llamalab"))
    assert "TRL default failed" not in llamalab and llamalab.endswith("TRL default skipped"), llamalab
    trl = next(line for line in lines if line.startswith("  TRL default"))
    assert trl == f"  {'TRL default':{NAME_WIDTH}s} skipped: 12 s left of the bench's --budget-s", trl


def test_the_plans_error_has_the_readme_tables_sign_and_size(capsys):
    """Each row of the README's memory tables (predicted, measured, error) shown by the bench as a llamalab run:
    the same error, predicted / measured - 1, as `llamalab plan`'s history computes it; and the README's plan
    figures in MiB (GiB) shown as the same GiB (2**10 MiB, not 1000)."""
    from llamalab.training.plan import PastRun

    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) MiB \| ([\d,]+) MiB \| ([+-]\d+%) \|", readme, re.M)
    assert len(rows) >= 10, rows
    for name, predicted, measured, error in rows:
        predicted, measured = float(predicted.replace(",", "")), float(measured.replace(",", ""))
        assert f"{plan_error(predicted, measured):+.0%}" == error, (name, predicted, measured)  # the reference
        assert f"{PastRun('r', 'cpu', predicted, measured, None, None).memory_error:+.0%}" == error
        run = {"tokens_per_s": 100.0, "peak_mib": measured, "predicted_mib": predicted, "checkpointing": True}
        bench._print("tiny", 10**6, 10**6, {"llamalab": run}, 1.0)
        assert f"(plan {predicted / 1024:.1f} GiB, {error}), checkpointing on" in capsys.readouterr().out, name
    pairs = re.findall(r"([\d,]+) MiB \(([\d.]+) GiB\)", " ".join(readme.split()))
    assert len(pairs) >= 3, pairs
    for mib, shown in pairs:
        bench._print("7b", 10**9, 10**9, {"llamalab": {"tokens_per_s": 1.0, "predicted_mib": float(mib.replace(
            ",", "")), "checkpointing": False}}, 1.0)
        assert f"(plan {shown} GiB)" in capsys.readouterr().out, (mib, shown)


# --- FLOPs per token: P as the runs count it ------------------------------------------------------------------------


def test_the_flops_per_token_of_the_bench_shapes():
    """Llama-2-7B and TinyLlama with their 32,000-token vocabulary have their published parameter counts; training
    counts 4 P (6 P for a full fine-tune), scoring 2 x P less the embedding table and the output layer."""
    from llamalab.training.plan import Shape, flops_per_token, scoring_flops_per_token

    published = {"7b": 6_738_415_616, "1b": 1_100_048_384}
    for shape, params in published.items():
        found = Shape.of({**bench.SHAPES[shape], "vocab_size": 32000, "tie_word_embeddings": False})
        assert found.params == params
        assert flops_per_token(found, "lora") == flops_per_token(found, "qlora") == 4 * params
        assert flops_per_token(found, "full") == 6 * params
        tables = 2 * 32000 * bench.SHAPES[shape]["hidden_size"]
        assert scoring_flops_per_token(found) == 2 * (params - tables)


@pytest.mark.parametrize("seed", range(20))
def test_the_config_only_count_is_the_models_own(seed):
    """make_model counts P from the model it built (the bench's 4 P), or from config.json alone (`weights=False`)
    and the scoring FLOPs come from config.json too: on random Llama shapes (tied or not, grouped KV heads, another
    head_dim), built on the meta device, both are the model's own count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llamalab.training.plan import Shape, scoring_flops_per_token

    rng = random.Random(seed)
    heads = rng.choice([2, 4, 8])
    config = {"hidden_size": heads * rng.choice([8, 16, 32]), "intermediate_size": rng.randint(8, 300),
              "num_hidden_layers": rng.randint(1, 4), "num_attention_heads": heads,
              "num_key_value_heads": rng.choice([k for k in (1, 2, 4, 8) if heads % k == 0]),
              "vocab_size": rng.randint(50, 5000), "tie_word_embeddings": rng.random() < 0.3}
    if rng.random() < 0.3:
        config["head_dim"] = rng.choice([8, 24, 40])
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**config))
    counted = sum(p.numel() for p in model.parameters())
    shape = Shape.of(LlamaConfig(**config).to_dict())
    assert shape.params == counted
    looked_up = model.get_input_embeddings().weight.numel()
    output = 0 if config["tie_word_embeddings"] else model.get_output_embeddings().weight.numel()
    assert scoring_flops_per_token(shape) == 2 * (counted - looked_up - output)


# --- the step clock and the runs' raw results -----------------------------------------------------------------------


def fake_clock(monkeypatch, ends: list[float]) -> None:
    """bench._synchronized_clock returns these step ends in turn (the first: on_train_begin)."""
    it = iter(ends)
    monkeypatch.setattr(bench, "_synchronized_clock", lambda: next(it))


def reference_timing(steps: list[float], tokens: float) -> dict:
    """First step, median later step, and tokens/s over the later half (⌈n/2⌉ last steps, their share of the
    tokens: steps carry equal tokens)."""
    if len(steps) < 4:
        return {"first_step_s": round(steps[0], 3) if steps else None}
    later = steps[len(steps) // 2:]
    return {"first_step_s": round(steps[0], 3), "median_step_s": round(statistics.median(steps[1:]), 4),
            "steady_tokens_per_s": tokens * len(later) / len(steps) / sum(later)}


def drive_clock(clock, steps: int) -> None:
    clock.on_train_begin(None, None, None)
    for _ in range(steps):
        clock.on_step_end(None, None, None)


@pytest.mark.parametrize("seed", range(20))
def test_llamalab_trains_report_the_records_figures_and_the_logs_tokens(seed, monkeypatch, tmp_path):
    """`llamalab_train`: tokens/s, peak and plan as the run's record has them; its later-half rate from the same
    tokens the record's rate counts (the train log's), over the step clock's later steps; the settings passed on."""
    from llamalab.runs.files import append_jsonl
    from llamalab.training import trainer

    rng = random.Random(seed)
    steps = [rng.uniform(0.01, 6) for _ in range(rng.randint(0, 40))]
    ends = [rng.uniform(0, 1e4)]
    for seconds in steps:
        ends.append(ends[-1] + seconds)
    fake_clock(monkeypatch, ends)
    seen = sorted(rng.sample(range(1, 10**7), max(1, len(steps))))  # num_input_tokens_seen, one row a step
    setup = rng.uniform(0, 3)
    settings = rng.choice([{}, {"memory_limit": "24GB"}, {"method": "qlora", "memory_limit": "24GB"}])
    memory = SimpleNamespace(measured_mb=rng.choice([None, round(rng.uniform(10, 1e5), 1)]),
                             predicted_mb=round(rng.uniform(10, 1e5), 1), activation_checkpointing=rng.random() < .5,
                             reason=rng.choice(["", "auto: 47,272 MiB would not fit"]))
    folder = tmp_path / "run"
    folder.mkdir()
    append_jsonl(folder / "train_log.jsonl", [{"step": i + 1, "loss": 1.0, "num_input_tokens_seen": n}
                                              for i, n in enumerate(seen)])
    rate = round(seen[-1] / (sum(steps) + setup), 1)
    calls = []

    def train(lab, experiment, name, callbacks):
        calls.append((experiment, name))
        drive_clock(callbacks[0], len(steps))
        return SimpleNamespace(folder=folder, run=SimpleNamespace(memory=memory, throughput={"tokens_per_s": rate}))

    monkeypatch.setattr(trainer, "train", train)
    result = bench.llamalab_train(None, tmp_path / "llama-7b", 16, len(steps) or 1, **settings)
    (experiment, name), = calls
    assert (experiment.batch_size, experiment.max_steps, experiment.train_examples) == (
        16, len(steps) or 1, 16 * (len(steps) or 1))
    assert experiment.method == settings.get("method", "lora")
    assert experiment.memory_limit == settings.get("memory_limit")
    assert experiment.format == "plain" and name.startswith("bench-llama-7b-")
    timing = reference_timing(steps, seen[-1])  # the tokens the record's rate counts: the log's last
    assert {k: v for k, v in result.items() if k not in timing} == {
        "tokens_per_s": rate, "peak_mib": memory.measured_mb, "reserved_mib": None,
        "predicted_mib": memory.predicted_mb, "checkpointing": memory.activation_checkpointing,
        "reason": memory.reason}
    assert set(result) - {"tokens_per_s", "peak_mib", "reserved_mib", "predicted_mib", "checkpointing",
                          "reason"} == set(timing)
    for key, value in timing.items():
        assert result[key] == pytest.approx(value, rel=1e-12), key


class FakeCuda:
    """What the bench and PeakMemory read of torch.cuda, in bytes, without a GPU."""

    def __init__(self, before: int, peak: int, reserved: int):
        self.before, self.peak, self.reserved = before, peak, reserved
        self.resets = 0

    def install(self, monkeypatch) -> None:
        import torch

        for name, value in {"is_available": lambda: True, "empty_cache": lambda: None, "synchronize": lambda: None,
                            "reset_peak_memory_stats": self.reset, "memory_allocated": lambda: self.before,
                            "max_memory_allocated": lambda: self.peak,
                            "max_memory_reserved": lambda: self.reserved}.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def reset(self) -> None:
        self.resets += 1


@pytest.mark.parametrize("seed", range(8))
def test_trl_and_llamalab_count_peak_memory_in_the_same_mib(seed, monkeypatch, tmp_path):
    """`trl_default` on a (faked) card: its peak counted from what was allocated before the model loaded, in MiB
    of 2**20 bytes, as llamalab's PeakMemory counts the run it compares with (so the two peaks printed side by side
    are in one unit); reserved in MiB; tokens/s from TRL's token count over trainer.train()'s seconds, and the
    later-half rate from the same tokens."""
    import datasets
    import transformers
    import trl

    import llamalab.models
    from llamalab.training import plan

    rng = random.Random(seed)
    cuda = FakeCuda(before=rng.randint(0, 2**34), peak=0, reserved=0)
    cuda.peak = cuda.before + rng.randint(2**20, 2**37)
    cuda.reserved = cuda.peak + rng.randint(0, 2**33)
    steps = [rng.uniform(0.01, 6) for _ in range(rng.randint(1, 40))]
    ends = [0.0]
    for seconds in steps:
        ends.append(ends[-1] + seconds)
    fake_clock(monkeypatch, ends)
    started, seconds = rng.uniform(0, 1e4), sum(steps) + rng.uniform(0, 5)
    clock_reads = iter([started, started + seconds])
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(clock_reads),
                                                       monotonic=time.monotonic))
    logged = sorted(rng.sample(range(1, 10**7), 1 + len(steps) // 10))
    history = [{"loss": 1.0, "num_tokens": n} for n in logged] + [{"train_runtime": seconds}]

    class Trainer:
        def __init__(self, **kwargs):
            self.callbacks = kwargs["callbacks"]
            self.state = SimpleNamespace(log_history=[])

        def train(self):
            drive_clock(self.callbacks[0], len(steps))
            self.state.log_history = history

    monkeypatch.setattr(trl, "SFTTrainer", Trainer)
    monkeypatch.setattr(trl, "SFTConfig", lambda **kwargs: kwargs)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: object())
    monkeypatch.setattr(datasets.Dataset, "from_list", lambda rows: rows)
    monkeypatch.setattr(llamalab.models, "load_tokenizer", lambda ref: None)
    monkeypatch.setattr(llamalab.models, "resolve_model", lambda name: None)
    monkeypatch.setattr(bench, "_rows", lambda lab, folder, count: [])
    cuda.install(monkeypatch)

    result = bench.trl_default(None, tmp_path / "llama-1b", 16, len(steps))
    assert cuda.resets >= 1
    assert result["peak_mib"] == pytest.approx((cuda.peak - cuda.before) / 2**20, rel=1e-12)
    assert result["reserved_mib"] == pytest.approx(cuda.reserved / 2**20, rel=1e-12)
    assert result["tokens_per_s"] == pytest.approx(logged[-1] / seconds, rel=1e-12)
    for key, value in reference_timing(steps, logged[-1]).items():
        assert result[key] == pytest.approx(value, rel=1e-12), key

    monkeypatch.setattr(plan, "_cuda_available", lambda: True)
    with plan.PeakMemory() as peak:  # llamalab's own peak, on the same bytes
        pass
    assert peak.mb == round((cuda.peak - cuda.before) / 2**20, 1)
    assert abs(peak.mb - result["peak_mib"]) <= 0.05 + 1e-9  # one unit: only PeakMemory's rounding differs


@pytest.mark.parametrize("seed", range(12))
def test_label_scoring_reports_the_evaluations_rates(seed, monkeypatch):
    """`label_scoring`: the evaluation's rates as recorded, the close calls rescored in float32 only with
    `recheck` (the bf16 pass alone: none is close), and the batch it was given where `auto` reported none."""
    from llamalab.backends import hf_scoring
    from llamalab.evaluation import evaluate

    rng = random.Random(seed)
    recheck = rng.random() < 0.5
    batch = rng.choice(["auto", rng.randint(1, 256)])
    limit = rng.randint(1, 2000)
    throughput = {"examples_per_s": round(rng.uniform(0.1, 5000), 2), "tokens_per_s": rng.randint(1, 10**6)}
    if rng.random() < 0.8:
        throughput["forward_tokens_per_s"] = rng.randint(1, throughput["tokens_per_s"])
    if rng.random() < 0.5:
        throughput["rechecked_float32"] = rng.randint(0, limit)
    if batch == "auto" and rng.random() < 0.7:
        throughput["largest_batch_rows"] = rng.randint(1, 4096)
    original = hf_scoring._too_close
    calls = []

    def fake_evaluate(lab, model, task, limit, precision, batch_size):
        calls.append((task, limit, batch_size))
        assert (hf_scoring._too_close is original) == recheck
        assert recheck or hf_scoring._too_close([], None) is False
        return SimpleNamespace(run=SimpleNamespace(throughput=throughput))

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    result = bench.label_scoring(None, Path("llama-1b"), limit, batch, recheck=recheck)
    assert calls == [("sentiment", limit, batch)] and hf_scoring._too_close is original
    assert result == {"examples_per_s": throughput["examples_per_s"], "tokens_per_s": throughput["tokens_per_s"],
                      "forward_tokens_per_s": throughput.get("forward_tokens_per_s"), "precision": "float32",
                      "batch_size": batch, "largest_batch_rows": throughput.get("largest_batch_rows", batch),
                      "examples": limit, "rechecked_float32": throughput.get("rechecked_float32")}


# --- one deadline: skipped runs, errors, each run's limit -----------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_attempt_skips_fails_or_returns_within_the_time_left(seed, monkeypatch):
    """`_attempt`: with under MIN_RUN_S left after SAVE_S is kept back, skipped (the run not started), saying the
    whole seconds left (never negative); else the run's result, or its error as 'Type: message' cut to 2,000
    characters; its alarm at the run's limit or the time left, whichever is less, and cleared after."""
    rng = random.Random(seed)
    now = rng.uniform(0, 1e6)
    left = rng.choice([rng.uniform(-100, 40), rng.uniform(0, 600),  # and either side of the edge:
                       bench.SAVE_S + bench.MIN_RUN_S + rng.choice([-0.5, 0.5, 1.5])])
    limit = rng.choice([bench.RUN_LIMIT_S, 400, rng.randint(20, 300)])
    monkeypatch.setattr(bench, "time", SimpleNamespace(monotonic=lambda: now, perf_counter=time.perf_counter))
    outcome = rng.choice(["result", "error", "long error"])
    message = "y" * (3000 if outcome == "long error" else rng.randint(0, 50))
    ran = []

    def run():
        armed = signal.alarm(0)
        signal.alarm(armed)  # as it was: the attempt's limit
        ran.append(armed)
        if outcome == "result":
            return {"tokens_per_s": 1.0}
        raise ValueError(message)

    previous = signal.getsignal(signal.SIGALRM)
    result = bench._attempt(run, now + left, limit)
    assert signal.alarm(0) == 0 and signal.getsignal(signal.SIGALRM) == previous
    seconds = int((now + left) - now) - bench.SAVE_S  # whole seconds to the deadline, less what saving keeps
    if seconds < bench.MIN_RUN_S:
        assert not ran
        assert result == {"error": f"skipped: {max(seconds, 0)} s left of the bench's --budget-s"}
        return
    assert ran == [min(limit, seconds)]
    if outcome == "result":
        assert result == {"tokens_per_s": 1.0}
    else:
        assert result == {"error": f"ValueError: {message}"[:2000]}


def test_attempt_stops_a_run_at_its_limit():
    """A run past its limit is stopped with an error naming the limit (not a TimeoutError, which loaders catch)."""
    started = time.monotonic()

    def crawl():
        while time.monotonic() - started < 10:
            time.sleep(0.01)
        return {"tokens_per_s": 1.0}

    result = bench._attempt(crawl, time.monotonic() + 600, limit_s=1)
    assert result == {"error": "RunTooLong: stopped after 1 s (bench/gpu_train.py's limit for this run)"}
    assert time.monotonic() - started < 5 and signal.alarm(0) == 0


# --- main: what is printed as each run ends, the summary, and what is written ---------------------------------------


@pytest.fixture
def sigterm_kept():
    """main sets a SIGTERM handler of its own: the test process's comes back after."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("seed", range(25))
def test_main_prints_and_writes_the_same_figures(seed, monkeypatch, tmp_path, capsys, sigterm_kept):
    """The whole bench with its GPU work faked (random results, errors and durations against one deadline): each
    run's printed result is the one written; each summary shows the written figures (as checked above), P and the
    scoring FLOPs as written, the 7B shape's runs at 24 GB as LoRA and QLoRA, the 1B's label scoring with and
    without the float32 recheck; runs with too little time left skipped, not started."""
    import llamalab.lab
    from llamalab.training import plan

    rng = random.Random(seed)
    now = [rng.uniform(0, 1e6)]
    monkeypatch.setattr(bench, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=lambda: now[0]))
    rate = round(rng.uniform(100, 999), 4)
    monkeypatch.setattr(plan, "resolve_device", lambda: plan.Device("cuda", "NVIDIA H200", 143_771.0, True, 790.0))
    monkeypatch.setattr(plan, "measure_matmul_tflops", lambda device: rate)
    monkeypatch.setattr(llamalab.lab, "init_lab", lambda root: SimpleNamespace(root=root))
    monkeypatch.setattr(bench, "rows_attention_error", lambda: 0.0078125)
    vocab = rng.choice([32000, 32001, 151_936])
    started: list[tuple] = []

    def spend() -> None:
        now[0] += rng.choice([0, rng.uniform(0, 30), rng.uniform(30, 300)])

    def fail_sometimes(what: str) -> None:
        if rng.random() < 0.15:
            raise RuntimeError(f"{what} failed")

    def make_model(shape, folder, tokenizer_from=None):
        spend()
        fail_sometimes("make_model")
        folder.mkdir(parents=True)
        config = {**bench.SHAPES[shape], "vocab_size": vocab, "tie_word_embeddings": False}
        (folder / "config.json").write_text(json.dumps(config))
        return plan.Shape.of(config).params

    def trl_default(lab, folder, batch, steps):
        started.append((folder.name, "TRL default"))
        spend()
        fail_sometimes("TRL")
        return training_run(rng, params_of(folder), rate, planned=False)

    def llamalab_train(lab, folder, batch, steps, **settings):
        started.append((folder.name, "llamalab", tuple(sorted(settings.items()))))
        spend()
        fail_sometimes("llamalab")
        return training_run(rng, params_of(folder), rate, planned=True)

    def label_scoring(lab, folder, limit, batch, recheck=True):
        started.append((folder.name, "label scoring", limit, batch, recheck))
        spend()
        fail_sometimes("scoring")
        return scoring_run(rng, 2 * params_of(folder), rate, recheck)

    def params_of(folder: Path) -> int:
        return plan.Shape.of_folder(folder).params

    for name, fake in {"make_model": make_model, "trl_default": trl_default, "llamalab_train": llamalab_train,
                       "label_scoring": label_scoring}.items():
        monkeypatch.setattr(bench, name, fake)
    shapes = rng.choice([["1b", "7b"], ["7b"], ["tiny"], ["1b"], ["7b", "1b"]])
    budget = rng.uniform(25, 900)
    out = tmp_path / "results.json"
    monkeypatch.setattr("sys.argv", ["gpu_train.py", "--shapes", ",".join(shapes), "--out", str(out), "--work",
                                     str(tmp_path), "--budget-s", str(budget), "--score-limit", "1000"])
    deadline = now[0] + budget
    bench.main()
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())

    assert written["matmul_tflops"] == rate and written["device"] == "NVIDIA H200 (140.4 GiB)"
    first = printed.splitlines()[0]
    assert first.startswith("device: NVIDIA H200 (140.4 GiB); measured matmul rate ")
    assert_shown_sig(first.split("measured matmul rate ")[1].split(" ")[0].replace(",", ""), rate, 3, "rate")
    assert list(written["shapes"]) == shapes
    for shape in shapes:
        result = written["shapes"][shape]
        if "error" in result:  # no model: its error printed as written, no summary
            assert f"{shape}: {json.dumps(result)}" in printed.splitlines()
            assert not re.search(rf"^{shape}: [\d.]+ B parameters$", printed, re.M)
            assert not [s for s in started if s[0] == f"llama-{shape}"]
            continue
        params = result["params"]
        hidden = bench.SHAPES[shape]["hidden_size"]
        assert result["scoring_flops_per_token"] == 2 * (params - 2 * vocab * hidden)
        runs = result["runs"]
        expected = ["TRL default", "llamalab"] + (["llamalab, 24 GB", "llamalab QLoRA, 24 GB"] if shape == "7b"
                                                  else ["label scoring", "label scoring, bf16 alone"])
        assert list(runs) == expected
        for name, run in runs.items():  # printed as it ended: the same values as written
            line = next(line for line in printed.splitlines() if line.startswith(f"{shape} {name}: "))
            assert json.loads(line[len(f"{shape} {name}: "):]) == run
        mine = [s[1:] for s in started if s[0] == f"llama-{shape}"]
        skipped = [n for n, r in runs.items() if r.get("error", "").startswith("skipped: ")]
        assert len(mine) == len(runs) - len(skipped)  # a skipped run never started
        calls = dict(zip([n for n in runs if n not in skipped], mine, strict=True))
        wanted = {"TRL default": ("TRL default",), "llamalab": ("llamalab", ()),
                  "llamalab, 24 GB": ("llamalab", (("memory_limit", "24GB"),)),
                  "llamalab QLoRA, 24 GB": ("llamalab", (("memory_limit", "24GB"), ("method", "qlora"))),
                  "label scoring": ("label scoring", 1000, "auto", True),
                  "label scoring, bf16 alone": ("label scoring", 1000, "auto", False)}
        assert calls == {n: wanted[n] for n in calls}
        check_summary(printed, shape, params, result["scoring_flops_per_token"], runs, rate)
    if now[0] < deadline - bench.SAVE_S - bench.MIN_RUN_S - 1:  # time was left all along: nothing skipped
        assert '"error": "skipped: ' not in out.read_text()
