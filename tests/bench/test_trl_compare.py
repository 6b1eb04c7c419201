"""The TRL comparison of `make bench` at its smallest: both sides run and report step times."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("trl")
# ~60 s on 2 idle cores, but it starts a vLLM engine and a DeepSpeed learner (see the marker).
pytestmark = pytest.mark.slow


def test_trl_compare_smallest():
    from bench.trl_compare import compare

    results = compare(prompts=2, group=2, max_tokens=8, steps=2, threads=1, prompt_tokens=40,
                      rounds=2)
    for key in ("trl_grpo_step_seconds_median", "ours_text_grpo_step_seconds_median",
                "ours_text_generation_seconds_median", "ours_text_learner_seconds_median",
                "ours_text_sync_seconds_median", "speedup_vs_trl"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert [len(r) for r in results["trl_step_seconds"]] == [2, 2]  # 2 rounds of 2 steps
    assert [len(r) for r in results["ours_text_step_seconds"]] == [2, 2]
    assert len(results["speedup_per_round"]) == 2 and all(x > 0 for x in results["speedup_per_round"])
    assert 1 <= results["trl_mean_completion_tokens"] <= 8
    assert 1 <= results["ours_text_mean_completion_tokens"] <= 8
    assert results["ours_text_mean_prompt_tokens"] >= 40
    assert "P=2" in results["workload"] and "G=2" in results["workload"]
    assert "KL beta 0.0" in results["workload"]  # cpu_tiny trains without the KL term


def test_prompts_reach_the_least_length_and_stay_distinct(model_dirs):
    from bench.trl_compare import prompt_texts
    from models.loading import load_processor

    processor = load_processor(model_dirs[0])
    short, long = prompt_texts(processor, 6), prompt_texts(processor, 6, min_tokens=160)
    lengths = [len(processor.tokenizer(t, add_special_tokens=False).input_ids) for t in long]
    assert min(lengths) >= 160 > max(len(processor.tokenizer(t).input_ids) for t in short)
    assert len(set(long)) == 6 and all(t.endswith("<|im_start|>assistant\n") for t in long)
