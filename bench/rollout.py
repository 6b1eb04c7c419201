"""Rollout speed on the GRPO workload (docs/design.md §6): P prompts with a long shared
video prefix, G samples each, response lengths that differ between samples.

vLLM (the PolicyEngine a PolicyWorker hosts) against transformers `generate` on the
same tiny policy, prompts and batch, counting *useful* tokens (each sample's own
length); and the cost of soft-token capture (<REFINE> and the N slots written after the
response in the same request, their hidden states captured) against plain generation of the
same responses.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from config import load_config
from config.schema import SamplingConfig
from corpus.synth import generate_corpus
from corpus.video import decode_video
from models.loading import load_policy, load_processor, model_dirs
from models.prompts import hf_turn_inputs, prompt_ids, vllm_video_data
from models.tokens import REFINE_TOKEN, SQR_SLOT_TOKEN
from rollout.engine import PolicyEngine
from rollout.slot_forcing import trigger_at_cap
from tiny.build import RANDOM_TINY_MODELS, with_tiny_models

P, G, MIN_LEN, MAX_LEN = 4, 8, 32, 128
CAPTURE_ROUNDS = 5
FRAMES, PIXELS = 16, 128 * 128  # 8 temporal groups x 16 tokens -> a ~180-token prefix


def _setup(work: Path):
    cfg = with_tiny_models(load_config("cpu_tiny", [f"paths.workdir={work}", f"paths.model_cache={work}/models",
                                   f"video.max_pixels={PIXELS}", f"video.max_frames={FRAMES}",
                                   "corpus.synth.num_videos=4", "corpus.synth.size=128",
                                   "corpus.synth.seconds=16", *RANDOM_TINY_MODELS]))
    policy_dir, _ = model_dirs(cfg)
    corpus = generate_corpus(cfg.corpus.synth, work / "corpus")
    videos = [decode_video(corpus.out_dir / f"videos/synth_{i:04d}.mp4", cfg.video)
              for i in range(P)]
    return cfg, policy_dir, videos


async def _vllm(engine: PolicyEngine, processor, videos, lengths, capture: bool) -> tuple[float, int]:
    """Every response runs to its length; with `capture` it then writes <REFINE> and the slot
    tail in the same request, its states captured (what a refining turn costs)."""
    refine = processor.tokenizer.convert_tokens_to_ids(REFINE_TOKEN)
    eos = processor.tokenizer.eos_token_id

    async def one(p, g):
        sampling = SamplingConfig(max_tokens=int(lengths[p, g]))
        if capture:
            params = trigger_at_cap(engine.sampling_params(
                sampling, [refine, eos], seed=p * G + g, capture_after=refine,
                banned_token_ids=[eos, refine]))  # like ignore_eos: every response runs to its length
        else:
            params = engine.sampling_params(sampling, [], seed=p * G + g)
            params.ignore_eos = True
        ids = prompt_ids(processor, f"query {p}")
        out = await engine.generate(ids, vllm_video_data(videos[p]), params)
        if capture and out.slot_states is None:
            raise RuntimeError("a capturing request came back without its slot states")
        return len(out.response_ids) - capture  # the trigger is not a generated token here

    started = time.perf_counter()
    counts = await asyncio.gather(*[one(p, g) for p in range(P) for g in range(G)])
    return time.perf_counter() - started, sum(counts)


def _transformers(model, processor, videos, lengths) -> tuple[float, int]:
    """One batch per prompt (its G samples share the video); a batch runs until its
    longest sample is done, which is the waste vLLM avoids."""
    started = time.perf_counter()
    useful = 0
    for p in range(P):
        inputs = hf_turn_inputs(processor, f"query {p}", videos[p])
        batch = {k: v.repeat(G, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
        longest = int(lengths[p].max())
        with torch.no_grad():
            model.generate(**batch, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=True, temperature=1.0)
        useful += int(lengths[p].sum())
    return time.perf_counter() - started, useful


def run(results: dict) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=(P, G))
    with tempfile.TemporaryDirectory() as tmp:
        cfg, policy_dir, videos = _setup(Path(tmp))
        processor = load_processor(policy_dir)
        slot = processor.tokenizer.convert_tokens_to_ids(SQR_SLOT_TOKEN)
        for prefix_caching in (False, True):
            rollout = replace(cfg.rollout, enable_prefix_caching=prefix_caching)
            engine = PolicyEngine(str(policy_dir), rollout, slot, cfg.sqr.num_tokens)
            asyncio.run(_vllm(engine, processor, videos, np.full_like(lengths, 4), True))  # warm-up
            if prefix_caching:  # plain and capture alternate: the machine drifts between runs
                rounds = [(asyncio.run(_vllm(engine, processor, videos, lengths, False)),
                           asyncio.run(_vllm(engine, processor, videos, lengths, True)))
                          for _ in range(CAPTURE_ROUNDS)]
                plain_s = float(np.median([plain[0] for plain, _ in rounds]))
                capture_s = float(np.median([capture[0] for _, capture in rounds]))
                results["vllm_prefix_cache_tokens_per_s"] = rounds[0][0][1] / plain_s
                results["soft_capture_overhead"] = capture_s / plain_s - 1.0
                results["soft_capture_overhead_rounds"] = [c[0] / p[0] - 1.0 for p, c in rounds]
            else:
                seconds, tokens = asyncio.run(_vllm(engine, processor, videos, lengths, False))
                results["vllm_tokens_per_s"] = tokens / seconds
            engine.shutdown()
        model, _ = load_policy(policy_dir)
        seconds, useful = _transformers(model.eval(), processor, videos, lengths)
        results["transformers_useful_tokens_per_s"] = useful / seconds
    results["prefix_tokens"] = int(hf_turn_inputs(processor, "query 0", videos[0])["input_ids"].shape[1])
    results["workload"] = f"P={P} G={G} lengths U[{MIN_LEN},{MAX_LEN}] tiny Qwen3-VL fp32"
    results["speedup_vs_transformers"] = (results["vllm_prefix_cache_tokens_per_s"]
                                          / results["transformers_useful_tokens_per_s"])
    return results
