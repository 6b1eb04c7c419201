"""The before/after table and the training plot."""

import numpy as np
import pytest

from evaluation.report import comparison_table


def _metrics(vr_final, vr_turn1, reward=None):
    final = {"R1@0.3": 10.0, "R1@0.5": 0.0, "R1@0.7": 0.0, "VER": 50.0, "VR": vr_final,
             "VR@any": 60.0, "num_queries": 10}
    out = {"final": final, "per_turn": {"1": {"VR": vr_turn1}}}
    if reward is not None:
        final["reward"] = reward
        out["refinement"] = {"refined_turns": 6, "VR_refined": 33.3, "VR_next_in_ranking": 50.0,
                             "turns": 6, "gt_rank_before": 9.0, "gt_rank_after": 7.5,
                             "per_turn": {"2": {"gt_rank_before": 9.0, "gt_rank_after": 7.0},
                                          "3": {"gt_rank_before": 9.0, "gt_rank_after": 8.0}}}
    return out


def test_table_has_one_row_per_model_with_turn1_vr_and_reward():
    lines = comparison_table({"sft": _metrics(40.0, 30.0, 0.25),
                              "old": _metrics(20.0, 20.0)}).splitlines()
    assert lines[0].split() == ["model", "R1@0.3", "R1@0.5", "R1@0.7", "VER", "VR", "VR@turn1",
                                "VR@any", "VR@SQR", "VR@next", "reward", "n"]
    assert lines[2].split() == ["sft", "10.0", "0.0", "0.0", "50.0", "40.0", "30.0", "60.0",
                                "33.3", "50.0", "0.250", "10"]
    # metrics written before rewards and rankings were recorded
    assert lines[3].split()[-4:-1] == ["nan", "nan", "nan"]


def test_refinement_line_names_each_paired_difference():
    from evaluation.report import refinement_line

    sft = _metrics(40.0, 30.0, 0.25)
    sft["refinement"]["VR_refined_minus_next"] = [-16.7, -50.0, 16.7]
    assert refinement_line({"sft": sft, "old": _metrics(20.0, 20.0)}) == (
        "VR@SQR - VR@next, paired over refined turns: sft -16.7 [-50.0,16.7] (6 turns)")
    assert refinement_line({"old": _metrics(20.0, 20.0)}).endswith(": none")


def test_no_refined_turn_prints_nan_not_zero():
    m = _metrics(40.0, 30.0, 0.25)
    m["refinement"] = {"refined_turns": 0, "VR_refined": 0.0, "VR_next_in_ranking": 0.0}
    assert comparison_table({"untrained": m}).splitlines()[2].split()[-4:-2] == ["nan", "nan"]


def test_plot_names_rewards_and_models_only_when_there_are_any(tmp_path):
    import warnings

    from evaluation.report import plot

    history = [{"stage": "grpo", "step": s, "reward_total": 0.1 * s} for s in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with nothing to name
        assert plot(history, {}, tmp_path / "a.png").stat().st_size > 0
        assert plot([], {"sft": _metrics(40.0, 30.0)}, tmp_path / "b.png").stat().st_size > 0


def test_smoothed_reward_is_a_trailing_mean():
    from evaluation.report import smoothed

    assert smoothed([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    assert smoothed([]) == []


def test_plot_marks_the_held_out_rewards(tmp_path):
    from evaluation.report import plot

    history = [{"stage": "grpo", "step": i, "reward_total": float(i)} for i in range(6)]
    evals = {"sft": _metrics(40.0, 30.0, 0.25), "grpo": _metrics(45.0, 30.0, 0.5)}
    path = plot(history, evals, tmp_path / "training.png")
    assert path.stat().st_size > 1000


def test_refinement_figure_ranks_and_cosines():
    from evaluation.refinement import GroundTruthPlace as P
    from evaluation.refinement import place, refinement_figure

    assert place(["a", "b", "c"], [0.9, 0.5, 0.1], "b") == P(2, 0.5)
    assert place(["a", "b"], [0.9, 0.5], "z") is None
    fig = refinement_figure([(2, P(5, 0.2), P(1, 0.6)), (2, P(3, 0.4), P(4, 0.3)),
                             (3, P(5, 0.2), P(2, 0.5))])
    assert (fig["turns"], fig["gt_rank_before"], fig["gt_rank_after"]) == (3, 13 / 3, 7 / 3)
    assert fig["gt_cos_after"] == pytest.approx(1.4 / 3)
    assert fig["gt_rank_improved"] == pytest.approx(200 / 3)
    assert fig["per_turn"]["2"]["gt_rank_before"] == 4.0 and fig["per_turn"]["3"]["turns"] == 1
    assert refinement_figure([]) == {"turns": 0, "per_turn": {}}


def test_soft_spread_is_the_share_that_differs_between_turns():
    from evaluation.refinement import soft_spread

    same = np.ones((2, 3))
    assert soft_spread([same, same, same]) == 0.0  # one refinement whatever the query
    assert soft_spread([same, -same]) == 1.0  # mean zero: all of it differs
    # mean [[1, 0]], deviations +-[[1, 0]]: 2 of the energy 4 differs
    assert soft_spread([np.array([[0.0, 0.0]]), np.array([[2.0, 0.0]])]) == pytest.approx(0.5)
    assert soft_spread([same]) is None
    assert soft_spread([np.zeros((1, 2)), np.zeros((1, 2))]) == 0.0
