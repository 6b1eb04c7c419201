"""Pooling several seeds' results: per-query means over seeds, a bootstrap over queries, and
each seed's GRPO − SFT; and the `experiment seeds` command around it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli.main import app
from evaluation.seeds import pooled, seeds_table


def _result(sft: list[float], grpo: list[float], diff: float) -> dict:
    def ev(rewards):
        return {"per_query": {f"q{i}": {"reward": r, "VR": 100.0 * (r > 1)} for i, r in enumerate(rewards)}}
    return {"eval": {"sft": ev(sft), "grpo": ev(grpo),
                     "paired": {"grpo-sft": {"reward": [diff, diff - 0.1, diff + 0.1],
                                             "VR": [0.0, -5.0, 5.0]}}}}


RESULTS = [_result([1.0, 2.0, 0.0], [2.0, 2.0, 1.0], 0.67), _result([1.0, 0.0, 2.0], [1.0, 1.0, 0.5], -0.17)]


def test_pooled_means_average_each_query_over_the_seeds():
    out = pooled(RESULTS)
    assert set(out) == {"sft", "grpo"}
    mean, low, high = out["grpo"]["reward"]
    assert mean == pytest.approx((1.5 + 1.5 + 0.75) / 3)
    assert low <= mean <= high and high - low > 0
    assert out["sft"]["VR"][0] == pytest.approx(100 * 2 / 6)


def test_table_shows_each_seeds_difference_and_the_count_of_wins():
    text = seeds_table([0, 1], RESULTS)
    assert "seed 0" in text and "+0.67 [0.57,0.77]" in text and "-0.17" in text
    assert "GRPO above SFT on mean test reward in 1 of 2 seeds" in text.splitlines()
    # runs written before refinement's paired difference was recorded have none to count
    assert text.splitlines()[-1] == "VR@SQR above VR@next in no seed"


def test_table_counts_the_seeds_where_refinement_beats_next():
    import copy

    results = copy.deepcopy(RESULTS)
    for r, diffs in zip(results, ([1.7, -0.4, 4.2], [-0.5, -2.0, 1.0]), strict=True):
        r["eval"]["sft"]["refinement"] = {"refined_turns": 10, "VR_refined_minus_next": diffs}
    lines = seeds_table([0, 1], results).splitlines()
    assert "seed 0: VR@SQR - VR@next, paired over refined turns: sft +1.7 [-0.4,4.2] (10 turns)" in lines
    assert lines[-1] == "VR@SQR above VR@next in 1 of 2 seeds (sft)"


def test_the_command_reuses_finished_seeds_and_stops_at_a_failed_one(tmp_path):
    for seed, r in enumerate(RESULTS):
        done = tmp_path / "seeds" / f"seed{seed}" / "results"
        done.mkdir(parents=True)
        (done / "results.json").write_text(json.dumps(r))
    out = CliRunner().invoke(app, ["experiment", "seeds", "--n", "2", f"paths.workdir={tmp_path}"])
    assert out.exit_code == 0, out.output
    assert "finished earlier" in out.output and "in 1 of 2 seeds" in out.output
    assert (tmp_path / "seeds" / "seeds.txt").read_text().startswith("2 seeds: 0, 1")
    # a third seed whose job fails at once (an odd frame size): the command says where to look
    out = CliRunner().invoke(app, ["experiment", "seeds", "--n", "3", f"paths.workdir={tmp_path}",
                                   "corpus.synth.size=7"])
    assert out.exit_code == 1 and "seed 2 failed" in out.output
    assert "even size" in (tmp_path / "seeds" / "seed2" / "train.log").read_text()


def test_pooled_difference_pairs_each_query_over_the_seeds():
    from evaluation.seeds import pooled_difference

    out = pooled_difference(RESULTS, "grpo", "sft")
    # per query: q0 (1 + 0) / 2, q1 (0 + 1) / 2, q2 (1 - 1.5) / 2
    mean, low, high = out["reward"]
    assert mean == pytest.approx((0.5 + 0.5 - 0.25) / 3) and low <= mean <= high
    lines = seeds_table([0, 1], RESULTS).splitlines()
    assert "pooled" in lines[lines.index("GRPO above SFT on mean test reward in 1 of 2 seeds") - 1]
