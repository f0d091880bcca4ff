"""The demo's stage table: every shown time, floor and ratio is the measured one, on random stage timings."""

from __future__ import annotations

import random

import pytest

from llamalab.demo import model_flops, stage_rows
from llamalab.runs.record import RunRecord
from llamalab.training.plan import Shape
from tests.records import eval_fields, train_fields


@pytest.mark.parametrize("seed", range(50))
def test_stage_rows_show_each_stage_against_its_floor(seed):
    rng = random.Random(seed)
    stages = {f"stage {k}": round(rng.uniform(0, 900), 1) for k in range(rng.randint(1, 9))}
    floors = {name: round(rng.choice([0.0, rng.uniform(0, 400)]), 1) for name in stages if rng.random() < 0.7}
    # a stage that took up an earlier demo's run says so, and has no floor (its seconds are not the work's)
    taken_up = {name: f"{rng.choice(['reused', 'resumed'])} run-{k}" for k, name in enumerate(stages)
                if name not in floors and rng.random() < 0.5}
    rows = stage_rows(stages, floors, taken_up)
    assert [row[0] for row in rows[:-1]] == [f"{n} ({taken_up[n]})" if n in taken_up else n for n in stages]
    for (label, seconds, floor, ratio), (expected_name, expected) in zip(rows, stages.items(), strict=False):
        name = label.split(" (")[0] if expected_name in taken_up else label
        assert name == expected_name and float(seconds) == pytest.approx(expected, abs=0.05)
        if name not in floors:
            assert floor == ratio == "–"
            continue
        assert float(floor) == pytest.approx(floors[name], abs=0.05)
        if floors[name]:
            assert float(ratio) == pytest.approx(expected / floors[name], abs=0.005)
        else:
            assert ratio == "–"  # a floor that rounds to zero has no meaningful ratio
    total = rows[-1]
    assert float(total[1].removeprefix("[bold]")) == pytest.approx(sum(stages.values()), abs=0.05)
    assert float(total[2]) == pytest.approx(sum(floors.values()), abs=0.05)


def test_model_flops_are_the_records_tokens_at_the_shapes_flops_per_token(tmp_path):
    """The floors' FLOPs, from records of random sizes on random Llama shapes: training 4 P (LoRA) or 6 P (full)
    per trained token, scoring 2 x the parameters less the embedding and output layers per computed token, and
    nothing for other work."""
    rng = random.Random(7)
    for k in range(40):
        heads = rng.choice([2, 4, 9])
        shape = Shape.of({"hidden_size": heads * 64, "intermediate_size": rng.choice([128, 1536]),
                          "num_hidden_layers": rng.randint(1, 30), "num_attention_heads": heads,
                          "num_key_value_heads": rng.choice([1, heads]), "vocab_size": rng.choice([100, 49152]),
                          "tie_word_embeddings": rng.random() < 0.5})
        method, tokens, epochs = rng.choice(["lora", "full"]), rng.randint(0, 10**6), round(rng.uniform(0.01, 3), 3)
        train = RunRecord.create(tmp_path, "train", f"t{k}", {"method": method}, **train_fields())
        train.update(data_used={"train_examples": 1, "skipped_too_long": 0, "tokens_per_epoch": tokens},
                     metrics={"first_loss": 1.0, "final_loss": 0.5, "steps": 1, "epochs": epochs})
        per_token = (6 if method == "full" else 4) * shape.params
        assert model_flops(train, shape) == pytest.approx(per_token * tokens * epochs, rel=1e-12)
        scored = rng.randint(0, 10**6)
        evaluation = RunRecord.create(tmp_path, "eval", f"e{k}", {}, **eval_fields())
        assert model_flops(evaluation, shape) is None  # no count of computed tokens: no floor
        evaluation.update(throughput={"forward_tokens": scored})
        # the embedding table is looked up and the output layer runs at a few positions: both left out
        table_and_output = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        assert model_flops(evaluation, shape) == 2 * (shape.params - table_and_output) * scored
        assert model_flops(None, shape) is None


@pytest.mark.parametrize("seed", range(8))
def test_the_summarys_paired_delta_is_finetuned_minus_baseline_whichever_won(lab, seed):
    """Against the better of the two (the comparison's default reference), a fine-tune that won was recorded with
    the negative Δ of a loss."""
    from llamalab.demo import _summary, versus_baseline
    from tests.test_compare import fake_eval

    rng = random.Random(seed)
    n = 200
    base_right, fine_right = rng.randint(60, 140), rng.randint(60, 140)
    baseline = fake_eval(lab, "base", [i < base_right for i in range(n)])
    finetuned = fake_eval(lab, "tuned", [i < fine_right for i in range(n)])
    for record, right in ((baseline, base_right), (finetuned, fine_right)):
        record.update(metrics={"accuracy": {"estimate": right / n, "low": 0.0, "high": 1.0, "n": n}})
    trained = RunRecord.create(lab.runs_dir, "train", "t", {}, **train_fields())
    trained.update(metrics={"first_loss": 1.0, "final_loss": 0.5, "steps": 2, "epochs": 1.0},
                   throughput={"tokens_per_s": 10.0}, status="finished")
    summary = _summary({}, {}, 1e9, {}, baseline, trained, finetuned, versus_baseline(lab, baseline, finetuned))
    assert summary["paired_test"]["delta"] == pytest.approx((fine_right - base_right) / n)
    assert summary["finetuned_wins"] == (fine_right > base_right and summary["paired_test"]["p_value"] < 0.05)
