"""What the GPU benchmarks share: the Qwen3-VL-2B shape and its timing. No weights can be
downloaded where they run, so the models are the released architecture (its config's
dimensions) with random weights and the tiny tokenizer, and the videos are synthetic ones as
long and as large as the `qwen3vl_2b` preset samples (64 frames of 448 x 448)."""

from __future__ import annotations

import time
from pathlib import Path

import torch


def cuda_seconds(repeats: int, fn, *args) -> list[float]:
    """Wall seconds of `repeats` calls of fn(*args) after one warm-up, the GPU drained around
    each."""
    fn(*args)
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def qwen3vl_2b_config(tokenizer, layers: int = 28, vision_depth: int = 24):
    """Qwen3-VL-2B-Instruct's dimensions (fewer layers only for a quick check elsewhere)."""
    from transformers import Qwen3VLConfig

    ids = tokenizer.convert_tokens_to_ids
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=2048, intermediate_size=6144,
            num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
            head_dim=128, max_position_embeddings=262144, tie_word_embeddings=True,
            rope_parameters=dict(rope_type="default", rope_theta=5_000_000.0,
                                 mrope_section=[24, 20, 20], mrope_interleaved=True),
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=1024, intermediate_size=4096, num_heads=16,
            patch_size=16, spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=2048,
            num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17][:vision_depth],
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_model(out: Path, cfg, tokenizer, model_config, policy: bool = True) -> Path:
    """Random weights saved as bf16 with the tiny tokenizer's processor: the policy (with SQR
    heads) or the embedder's base model."""
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

    from models.sqr_heads import SQRHeads, SQRHeadsConfig
    from tiny.build import build_processor

    processor = build_processor(tokenizer, cfg.video.max_pixels, cfg.video.max_frames)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = (Qwen3VLForConditionalGeneration if policy else Qwen3VLModel)(model_config)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    if policy:
        hidden = model_config.text_config.hidden_size
        SQRHeads(SQRHeadsConfig(hidden, hidden, hidden, cfg.sqr.num_tokens)).save(out)
    return out


def preset_videos(cfg, count: int, out_dir: Path):
    """A synthetic corpus of `count` videos long enough for the preset's frame budget."""
    from config.schema import SynthConfig
    from corpus.synth import generate_corpus

    v = cfg.video
    return generate_corpus(SynthConfig(num_videos=count, queries_per_video=1,
                                       seconds=int(v.max_frames / v.fps), size=448, fps=2,
                                       near_duplicate_fraction=0.0), out_dir)
