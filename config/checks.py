"""Range checks on a loaded config: a value the schema's type admits but the job cannot use
(a group of one, a NaN temperature, ZeRO stage 7) fails here, naming the key, its value and
what is allowed, before any actor starts."""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import attrgetter

DTYPES = ("float32", "bfloat16", "float16")


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low) -> tuple[Callable, str]:
    return (lambda v: _number(v) and v >= low), f">= {low}"


def above(low) -> tuple[Callable, str]:
    return (lambda v: _number(v) and v > low), f"> {low} (finite)"


def within(low, high, *, open_low=False, open_high=False) -> tuple[Callable, str]:
    def ok(v):
        return (_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))
    return ok, f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def one_of(*values) -> tuple[Callable, str]:
    return (lambda v: v in values), f"one of {', '.join(map(str, values))}"


def optional(rule: tuple[Callable, str]) -> tuple[Callable, str]:
    return (lambda v: v is None or rule[0](v)), f"null or {rule[1]}"


SIZES = [
    "corpus.synth.num_videos", "corpus.synth.queries_per_video", "corpus.synth.fps",
    "video.max_frames", "video.max_pixels", "video.min_pixels",
    "retrieval.num_shards", "retrieval.topk", "retrieval.ivf_nlist", "retrieval.ivf_nprobe",
    "retrieval.hnsw_m", "sqr.num_tokens", "rollout.max_turns", "rollout.sampling.max_tokens",
    "rollout.tensor_parallel_size", "rollout.max_model_len", "learner.micro_batch_size",
    "learner.grad_accum_steps", "learner.infonce_negatives", "learner.checkpoint_every",
    "train.queries_per_step", "train.max_query_draws", "resources.num_policy_workers",
    "resources.num_learner_ranks",
    "model.tiny_pretrain.embedder.batch_size", "model.tiny_pretrain.policy.batch_size",
]
COUNTS = [  # 0 is meaningful: no steps, keep all, none saved
    "train.sft_steps", "train.grpo_steps", "train.save_rollouts_every", "learner.keep_checkpoints",
    "train.max_staleness",
    "model.tiny_pretrain.embedder.steps", "model.tiny_pretrain.policy.steps",
]
RULES: dict[str, tuple[Callable, str]] = {
    **{k: at_least(1) for k in SIZES},
    **{k: at_least(0) for k in COUNTS},
    "rollout.group_size": at_least(2),  # GRPO compares an episode with its group
    "rollout.sampling.temperature": above(0),
    "rollout.sampling.top_p": within(0, 1, open_low=True),
    "rollout.gpu_memory_utilization": within(0, 1, open_low=True),
    "rollout.kv_cache_gib": above(0),
    "rollout.block_size": optional(at_least(1)),
    "rollout.weight_transport": one_of("auto", "object_store", "nccl", "gloo"),
    "video.fps": above(0),
    "corpus.synth.near_duplicate_fraction": within(0, 0.5),
    "corpus.synth.val_fraction": within(0, 1, open_high=True),
    "corpus.synth.test_fraction": within(0, 1, open_high=True),
    "train.grpo_video_fraction": within(0, 1, open_high=True),
    "learner.zero_stage": one_of(0, 1, 2, 3),
    "learner.lr": above(0),
    "learner.grpo_lr": optional(above(0)),
    "learner.heads_lr_scale": above(0),
    "sqr.latent_sigma": at_least(0),
    "sqr.latent_loss_weight": at_least(0),
    "sqr.latent_clip_eps": at_least(0),
    "sqr.latent_infonce_lambda": at_least(0),
    "sqr.slot_word_weight": at_least(0),
    "sqr.fit_steps": at_least(0),
    "sqr.fit_lr": above(0),
    "sqr.fit_batch_size": at_least(1),
    "sqr.fit_turns_per_query": at_least(1),
    "sqr.refine_scale": above(0),
    "learner.sft_warmup_fraction": within(0, 1),
    "learner.sft_min_lr_ratio": within(0, 1),
    "learner.weight_decay": at_least(0),
    "learner.max_grad_norm": above(0),
    "learner.clip_eps": at_least(0),
    "learner.clip_eps_high": at_least(0),
    "learner.kl_beta": at_least(0),
    "learner.behaviour_weight_cap": at_least(1),
    "learner.infonce_tau": above(0),
    "learner.infonce_lambda": at_least(0),
    "retrieval.serve_port": within(1, 65535),
    "model.dtype": one_of(*DTYPES),
    "resources.cpus_per_actor": above(0),
    "resources.cpus_per_learner_rank": above(0),
    "resources.gpus_per_policy_worker": at_least(0),
    "resources.gpus_per_learner_rank": at_least(0),
    "resources.gpus_per_index_shard": at_least(0),
}


def problems(cfg) -> list[str]:
    """Every value outside its range, as 'key = value: allowed range' lines."""
    out = []
    for key, (ok, allowed) in RULES.items():
        value = attrgetter(key)(cfg)
        if not ok(value):
            out.append(f"{key} = {value!r}: must be {allowed}")
    if cfg.corpus.source != "synth" and not cfg.corpus.video_dir:
        out.append(f"corpus.video_dir = '': a {cfg.corpus.source} corpus is read from the "
                   "directory `videosearch corpus build --out` wrote; set corpus.video_dir")
    if cfg.learner.infonce_negatives > cfg.retrieval.topk - 1:  # rollout.agent._negatives
        out.append(f"learner.infonce_negatives = {cfg.learner.infonce_negatives}: at most "
                   f"retrieval.topk - 1 = {cfg.retrieval.topk - 1} (a refined turn's negatives "
                   "are its search's top results but the ground truth)")
    return out
