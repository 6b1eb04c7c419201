"""Learner step time and GPU memory at the Qwen3-VL-2B shape, on one CUDA GPU.

No weights can be downloaded here, so the policy is Qwen3-VL-2B-Instruct's architecture with
random weights (its config's dimensions: 28 layers of 2048, 151936-token vocabulary, a 24-layer
vision tower) and the tiny tokenizer. The workload is one learner rank's share of a
`qwen3vl_2b` GRPO step: ROWS turns whose prompts hold a 64-frame 448x448 video (the preset's
video settings, ~6.3k video tokens) and 512-token responses, the KL reference on, one optimizer
update; no Ray. Each setting (micro-batch size, gradient checkpointing) builds a fresh Learner,
takes a warm-up step and TIMED timed ones; a setting that runs out of GPU memory is recorded as
such. Run on a CUDA machine (`make bench` does not: it is the CPU suite):

    python -m bench.learner_gpu --out bench/results_gpu.json
"""

from __future__ import annotations

import gc
import json
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import typer

ROWS, P, RESPONSE, TIMED = 16, 4, 512, 2


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


def build_policy(out: Path, cfg, tokenizer, model_config) -> Path:
    """Random weights saved as bf16, with the tiny tokenizer's processor and SQR heads."""
    from transformers import Qwen3VLForConditionalGeneration

    from models.sqr_heads import SQRHeads, SQRHeadsConfig
    from models.tiny import build_processor

    processor = build_processor(tokenizer, cfg.video.max_pixels, cfg.video.max_frames)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3VLForConditionalGeneration(model_config)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    hidden = model_config.text_config.hidden_size
    SQRHeads(SQRHeadsConfig(hidden, hidden, hidden, cfg.sqr.num_tokens)).save(out)
    return out


def build_turns(cfg, policy_dir: Path, corpus_dir: Path) -> list:
    from config.schema import SynthConfig
    from corpus.synth import generate_corpus
    from corpus.video import decode_video
    from models.loading import load_processor
    from rollout.prompts import hf_turn_inputs
    from rollout.trajectory import Turn

    v = cfg.video
    seconds = int(v.max_frames / v.fps)  # as many frames as the preset samples
    corpus = generate_corpus(SynthConfig(num_videos=P, queries_per_video=1, seconds=seconds,
                                         size=448, fps=2, near_duplicate_fraction=0.0), corpus_dir)
    processor = load_processor(policy_dir)
    rng = np.random.default_rng(0)
    turns = []
    for p in range(P):
        path = str(corpus.out_dir / f"videos/synth_{p:04d}.mp4")
        video = decode_video(path, v.fps, v.max_frames, v.max_pixels, v.min_pixels)
        prompt = hf_turn_inputs(processor, f"query {p}", video)["input_ids"][0].tolist()
        for g in range(ROWS // P):
            turns.append(Turn(
                episode_id=f"q{p}#{g}", query_id=f"q{p}", sample=g, turn=1,
                query_text=f"query {p}", gt_video_id="", gt_start=0.0, gt_end=1.0, video_id="",
                video_path=path, frame_times=video.timestamps.tolist(), retrieved_ids=[],
                retrieved_scores=[], prompt_ids=prompt,
                response_ids=rng.integers(100, 600, size=RESPONSE).tolist(),
                sampling_logprobs=[-6.0] * RESPONSE, response_text="",
                reward=float(rng.random()), is_final=True))
    return turns


def measure(cfg, policy_dir: Path, turns: list) -> dict:
    """One setting: build, warm up, time; an out-of-memory error is a result, not a failure."""
    from learner.learner import Learner

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    learner = None
    out: dict = {}
    try:
        learner = Learner(cfg, "grpo", policy_dir)
        out["build_seconds"] = time.perf_counter() - started
        learner.grpo_step(turns)
        seconds = []
        for _ in range(TIMED):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            learner.grpo_step(turns)
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
        out.update(step_seconds=statistics.median(seconds), tokens_per_s=tokens / min(seconds))
    except torch.OutOfMemoryError as err:
        out["oom"] = str(err).splitlines()[0]
    finally:
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if learner is not None:
            learner.close()
        del learner
        gc.collect()
        torch.cuda.empty_cache()
    return out


def main(out: Path = typer.Option(Path("bench/results_gpu.json"), help="results JSON"),
         setting: list[str] = typer.Option(["4:0", "4:1"], help="MICRO_BATCH:CHECKPOINTING"),
         tag: str = typer.Option("", help="a name for this code version in the results")):
    if not torch.cuda.is_available():
        raise typer.BadParameter("this benchmark needs a CUDA GPU (make bench is the CPU suite)")
    from config import load_config
    from learner.engine import close_distributed, init_distributed
    from models.tokenizer import train_tokenizer

    results = json.loads(out.read_text()) if out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = load_config("qwen3vl_2b", [f"paths.workdir={work}"])
        tokenizer = train_tokenizer()
        policy_dir = build_policy(work / "policy", base, tokenizer, qwen3vl_2b_config(tokenizer))
        turns = build_turns(base, policy_dir, work / "corpus")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        init_distributed(0, 1, "127.0.0.1", port)
        runs = {}
        for mb, ckpt in (map(int, s.split(":")) for s in setting):
            overrides = [f"learner.micro_batch_size={mb}", f"learner.grad_accum_steps={ROWS // mb}"]
            if ckpt:
                overrides.append("learner.gradient_checkpointing=true")
            cfg = load_config("qwen3vl_2b", [f"paths.workdir={work}", "learner.zero_stage=2",
                                             "learner.logprob_mismatch_warn=1e9", *overrides])
            name = f"{tag}micro{mb}_ckpt{ckpt}"
            runs[name] = measure(cfg, policy_dir, turns)
            print(name, json.dumps(runs[name]), flush=True)
        close_distributed()
    results.setdefault("runs", {}).update(runs)
    results["workload"] = (
        f"1 GPU ({torch.cuda.get_device_name()}), ZeRO-2 bf16, Qwen3-VL-2B shape (random weights), "
        f"{ROWS} GRPO turns per optimizer step: {len(turns[0].prompt_ids)}-token prompts with a "
        f"64-frame 448x448 video, {RESPONSE}-token responses, KL reference on")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(main)
