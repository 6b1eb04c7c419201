"""Synthetic GRPO samples for the learner benchmarks: each video's prompt as the rollout builds it,
random response ids, flat sampler log-probs and random rewards (what a learner step costs does
not depend on what the tokens say)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from corpus.video import decode_video
from learner.sample import Sample
from models.loading import load_processor
from models.prompts import hf_turn_inputs
from rollout.group import samples_of
from rollout.trajectory import Turn


def synthetic_samples(video_cfg, policy_dir: Path, paths: list[str], per_video: int,
                      length: int) -> list[Sample]:
    processor = load_processor(policy_dir)
    rng = np.random.default_rng(0)
    v, turns = video_cfg, []
    for p, path in enumerate(paths):
        video = decode_video(path, v)
        prompt = hf_turn_inputs(processor, f"query {p}", video)["input_ids"][0].tolist()
        for g in range(per_video):
            turns.append(Turn(
                episode_id=f"q{p}#{g}", query_id=f"q{p}", sample=g, turn=1,
                query_text=f"query {p}", gt_video_id="", gt_start=0.0, gt_end=1.0, video_id="",
                video_path=path, frame_times=video.timestamps.tolist(), retrieved_ids=[],
                retrieved_scores=[], prompt_ids=prompt,
                response_ids=rng.integers(100, 400, size=length).tolist(),
                sampling_logprobs=[-6.0] * length, response_text="",
                episode_reward=float(rng.random()), is_final=True))
    return samples_of(turns, std_normalize=False)
