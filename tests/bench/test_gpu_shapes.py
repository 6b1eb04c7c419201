"""The GPU benchmarks' models and videos, checked on the CPU so that they do not rot between the
sessions that are lent a GPU: a one-layer cut of the 2B shape must load through the project's
loaders and take the preset's video prompt."""

from __future__ import annotations

import torch

from bench.gpu_shapes import build_model, preset_videos, qwen3vl_2b_config
from config import load_config
from corpus.video import decode_video
from models.loading import load_policy, load_processor
from models.prompts import hf_turn_inputs
from tiny.tokenizer import train_tokenizer


def test_the_2b_shape_is_consistent():
    config = qwen3vl_2b_config(train_tokenizer())
    text, vision = config.text_config, config.vision_config
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    assert text.num_attention_heads * text.head_dim == text.hidden_size
    assert vision.out_hidden_size == text.hidden_size
    assert max(vision.deepstack_visual_indexes) < vision.depth


def test_a_cut_of_the_2b_shape_takes_the_presets_video_prompt(tmp_path):
    cfg = load_config("qwen3vl_2b", [f"paths.workdir={tmp_path}", "video.max_frames=8"])
    tokenizer = train_tokenizer()
    config = qwen3vl_2b_config(tokenizer, layers=1, vision_depth=1)
    config.text_config.vocab_size = 1024  # the full vocabulary's embedding is 1.2 GB in fp32
    policy_dir = build_model(tmp_path / "policy", cfg, tokenizer, config)
    corpus = preset_videos(cfg, 1, tmp_path / "corpus")
    v = cfg.video
    video = decode_video(corpus.out_dir / "videos/synth_0000.mp4", v)
    assert video.frames.shape[0] == v.max_frames and video.frames.shape[1:3] == (448, 448)
    inputs = hf_turn_inputs(load_processor(policy_dir), "a query", video)
    model, heads = load_policy(policy_dir)
    assert heads.cfg.policy_hidden == 2048
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=1).logits
    assert logits.shape == (1, 1, 1024) and torch.isfinite(logits).all()
