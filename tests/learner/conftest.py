"""Fixtures of the learner tests: a fixed batch of GRPO turns built as the rollout builds them
(expanded prompt ids, real videos of the synthetic corpus, sampling log-probs from the initial
policy), SFT examples, and helpers to read log-probs back with transformers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus.video import decode_video
from models.loading import load_policy, load_processor
from models.prompts import hf_turn_inputs
from rollout.trajectory import Turn
from tests.learner.logprobs import response_logprobs

RESPONSES = [  # one per sample of a group; sample g gets reward g
    "<think>a red circle moves left</think> <answer>not_matched</answer> <REFINE>",
    "<think>the video shows it</think> <answer>matched</answer> <start>2.0</start> <end>6.0</end> <REFINE>",
]


@pytest.fixture(scope="session")
def learner_cfg(cfg):
    """The session config with a learning rate that moves a tiny model visibly in one step."""
    return dataclasses.replace(cfg, learner=dataclasses.replace(
        cfg.learner, lr=1e-3, micro_batch_size=2, grad_accum_steps=2, kl_beta=0.01))


@pytest.fixture(scope="session")
def processor(model_dirs):
    return load_processor(model_dirs[0])


@pytest.fixture(scope="session")
def corpus_rows(synth):
    queries = pq.read_table(synth.queries_path).to_pylist()
    videos = pq.read_table(synth.videos_path).to_pylist()
    return queries, {v["video_id"]: str(synth.out_dir / v["path"]) for v in videos}


@pytest.fixture(scope="session")
def grpo_turns(cfg, model_dirs, processor, corpus_rows) -> list[Turn]:
    """2 queries x 2 samples, one turn each, rewards 0 and 1 within each group."""
    queries, paths = corpus_rows
    v = cfg.video
    turns = []
    for q in queries[:2]:
        path = paths[q["video_id"]]
        video = decode_video(path, v)
        prompt = hf_turn_inputs(processor, q["text"], video)["input_ids"][0].tolist()
        for g, text in enumerate(RESPONSES):
            response = processor.tokenizer(text, add_special_tokens=False).input_ids
            turns.append(Turn(
                episode_id=f"{q['query_id']}#{g}", query_id=q["query_id"], sample=g, turn=1,
                query_text=q["text"], gt_video_id=q["video_id"], gt_start=q["start_s"],
                gt_end=q["end_s"], video_id=q["video_id"], video_path=path,
                frame_times=video.timestamps.tolist(), retrieved_ids=[q["video_id"]],
                retrieved_scores=[1.0], prompt_ids=prompt, response_ids=response,
                sampling_logprobs=[0.0] * len(response), response_text=text,
                reward=float(g), episode_reward=float(g), is_final=True))
    model = load_policy(model_dirs[0])[0].eval()
    for t, lp in zip(turns, response_logprobs(model, turns, processor, cfg), strict=True):
        t.sampling_logprobs = lp.tolist()
    return turns


@pytest.fixture(scope="session")
def grpo_samples(grpo_turns, cfg):
    """grpo_turns as the rollout hands them to the learner (a group per query, advantages in)."""
    from rollout.group import samples_of

    return samples_of(grpo_turns, cfg.learner.std_normalize_advantages)


@pytest.fixture(scope="session")
def sft_examples(learner_cfg, model_dirs, corpus_rows):
    """Random unit vectors stand in for the index's video embeddings."""
    from learner.sft_data import build_sft_examples

    queries, paths = corpus_rows
    dim = json.loads((model_dirs[1] / "config.json").read_text())["text_config"]["hidden_size"]
    rng = np.random.default_rng(0)
    vectors = {vid: (x / np.linalg.norm(x)).astype(np.float32)
               for vid, x in ((vid, rng.normal(size=dim)) for vid in sorted(paths))}
    topk = {q["query_id"]: sorted(paths)[:5] for q in queries[:2]}
    return build_sft_examples(queries[:2], paths, vectors, topk, learner_cfg.learner.infonce_negatives,
                              seed=0, annotated=queries)


@pytest.fixture(scope="module")
def process_group():
    """This process as a one-rank learner group (nccl on GPU, gloo on CPU), for in-process
    Learner tests."""
    from learner.engine import close_distributed, init_single_rank

    init_single_rank()
    yield
    close_distributed()
