"""The demo's stage table: every shown time, floor and ratio is the measured one, on random stage timings."""

from __future__ import annotations

import random

import pytest

from llamalab.demo import stage_rows


@pytest.mark.parametrize("seed", range(50))
def test_stage_rows_show_each_stage_against_its_floor(seed):
    rng = random.Random(seed)
    stages = {f"stage {k}": round(rng.uniform(0, 900), 1) for k in range(rng.randint(1, 9))}
    floors = {name: round(rng.choice([0.0, rng.uniform(0, 400)]), 1) for name in stages if rng.random() < 0.7}
    rows = stage_rows(stages, floors)
    assert [row[0] for row in rows[:-1]] == list(stages)
    for (name, seconds, floor, ratio), (expected_name, expected) in zip(rows, stages.items(), strict=False):
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
