import numpy as np
import pytest

from evaluation.bootstrap import mean_ci, paired_difference
from evaluation.metrics import compute_metrics, paired
from evaluation.report import interval_table
from tests.evaluation.test_metrics import row


def test_mean_ci_covers_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 30), rng.normal(1.0, 1.0, 3000)
    lo_s, hi_s = mean_ci(small)
    lo_l, hi_l = mean_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 5
    assert mean_ci([2.0] * 10) == (2.0, 2.0)
    assert all(np.isnan(mean_ci([])))


def test_paired_difference_sees_a_shift_that_unpaired_noise_would_hide():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 3, 200)  # large between-query spread
    a = {i: v + 0.5 for i, v in enumerate(base)}  # the same queries, shifted a little
    b = dict(enumerate(base))
    mean, lo, hi = paired_difference(a, b)
    assert mean == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    lo_a, hi_a = mean_ci(list(a.values()))
    lo_b, hi_b = mean_ci(list(b.values()))
    assert lo_a < hi_b  # unpaired intervals overlap
    with pytest.raises(ValueError, match="share no query"):
        paired_difference({1: 0.0}, {2: 0.0})


def test_paired_metrics_and_the_interval_table():
    good = [row(f"q{i}", 1, "v", "v", "matched", (0, 10), True, episode_reward=2.0)
            for i in range(40)]
    bad = [row(f"q{i}", 1, "v", "v" if i % 2 else "w", "matched", (0, 10), True,
               episode_reward=0.0) for i in range(40)]
    a, b = compute_metrics(good), compute_metrics(bad)
    assert a["final_ci"]["VR"] == [100.0, 100.0] and b["final_ci"]["VR"][0] < 50 < b["final_ci"]["VR"][1]
    diff = paired(a, b)
    assert diff["reward"] == [2.0, 2.0, 2.0] and diff["VR"][0] == 50.0 and diff["VR"][1] > 0
    text = interval_table({"sft": b, "grpo": a}, {"grpo-sft": diff})
    assert "grpo-sft" in text and "+2.00 [2.00,2.00]" in text
