"""best.json's answer in one line, as a sweep of another Hydra app ends with it (ftharness/sweep/best.py)."""

import pytest

from ftharness.sweep.best import best_line

POINT = {"number": 4, "params": {"optim.lr": 0.000123456, "lora.r": 8}, "values": {"eval_loss": 0.0312345}}


@pytest.mark.parametrize("answer, line", [
    ({"best": POINT}, "study s: best trial 4 (optim.lr=1.23e-4, lora.r=8), eval_loss 0.0312"),
    ({"best": {**POINT, "confirmed": {"mean": 0.0305, "values": [0.0312, 0.0301, 0.0302]}}},
     "study s: best trial 4 (optim.lr=1.23e-4, lora.r=8), eval_loss 0.0305, the mean of 3 seeds"),
    ({"pareto_front": [{"number": 0, "values": {"loss": 1.0, "size": 2.0}}, {"number": 3, "values": {}}]},
     "study s: the Pareto front of loss, size holds trials 0, 3"),
    ({"best": None}, "study s: no completed trial, no best point"),
])
def test_the_best_line_says_the_point_its_value_and_what_the_value_rests_on(answer, line):
    assert best_line({"study": "s", **answer}) == line
