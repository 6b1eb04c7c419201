"""Learner speed on the GRPO workload (docs/design.md §6: P=4 prompts x G=8 samples, 128-token
completions, here with the tiny Qwen3-VL and a video prefix), and weight-sync cost.

Step time: one GRPO step (one optimizer update, cpu_tiny's KL beta: 0, no reference forward)
for 1 rank ZeRO-2 and 2 ranks ZeRO-3 on a local Ray cluster; the G rows of a query share its
prompt, forwarded once (learner.shared_prefix). Weight sync: learner rank 0's tensors (all of them, and what a
GRPO step changes) through the object store into a vLLM PolicyWorker's weight reload, end to
end, against a raw copy of the step's bytes between two actors in the same run (one buffer,
put by one actor, copied out by the other).
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from bench.turns import synthetic_samples
from config import load_config
from corpus.synth import generate_corpus
from models.loading import model_dirs
from tiny.build import with_tiny_models

P, G, LENGTH, TIMED = 4, 8, 128, 2
SYNC_REPS = 10  # syncs are ~0.1 s: medians of many, on a machine others share


def _step_seconds(group, turns) -> float:
    group.grpo_step(turns)  # warm-up
    return statistics.median(group.grpo_step(turns)["step_seconds"] for _ in range(TIMED))


@ray.remote(num_cpus=0.5)
class _Bytes:
    """Both ends of the raw copy: `make` leaves a buffer in the object store, `take` copies it."""

    def make(self, nbytes: int) -> np.ndarray:
        return np.ones(nbytes, np.uint8)

    def take(self, buf: np.ndarray) -> float:
        started = time.perf_counter()
        np.copy(buf)
        return time.perf_counter() - started


def _sync(group, cfg, policy_dir) -> dict:
    """Full weights (a stage's first sync) and what a GRPO step sends (what it trains), each
    end to end into a PolicyWorker; the raw copy moves the step's bytes."""
    from actors.policy_worker import PolicyWorker

    worker = PolicyWorker.options(num_cpus=0.5).remote(cfg, str(policy_dir), "bench")
    ray.get(worker.ready.remote())
    timed, sizes = {}, {}
    for kind, changed_only in (("full", False), ("step", True)):
        runs = []
        for _ in range(1 + SYNC_REPS):
            started = time.perf_counter()
            w = group.export_weights(changed_only=changed_only)
            exported = time.perf_counter()
            reload_s = ray.get(worker.load_weights.remote(w.version, w.model_ref, w.heads_ref))
            runs.append((time.perf_counter() - started, exported - started, reload_s))
        timed[kind] = [statistics.median(x) for x in zip(*runs[1:], strict=True)]
        sizes[kind] = sum(t.numel() * t.element_size() for t in ray.get(w.model_ref).values())
    ray.kill(worker)
    broadcast = _broadcast(group, cfg, policy_dir)
    a, b = _Bytes.remote(), _Bytes.remote()
    raw = []
    for _ in range(1 + SYNC_REPS):
        started = time.perf_counter()
        ray.get(b.take.remote(a.make.remote(sizes["step"])))
        raw.append(time.perf_counter() - started)
    ray.kill(a)
    ray.kill(b)
    total, export, reload_s = timed["step"]
    raw_s = statistics.median(raw[1:])
    return {"weight_bytes_full": sizes["full"], "sync_seconds_full": timed["full"][0],
            "weight_bytes": sizes["step"], "sync_seconds": total, "sync_export_seconds": export,
            "sync_vllm_reload_seconds": reload_s, "raw_copy_seconds": raw_s,
            "sync_over_raw_copy": total / raw_s,
            "sync_seconds_gloo_full": broadcast["full"], "sync_seconds_gloo": broadcast["step"],
            "gloo_sync_over_raw_copy": broadcast["step"] / raw_s}


def _broadcast(group, cfg, policy_dir) -> dict[str, float]:
    """The broadcast transport on CPU (rollout.weight_transport=gloo): vLLM's weight-transfer
    API from learner rank 0 into the engine, full and a step's changes, end to end."""
    from actors.policy_worker import PolicyWorker

    cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout,
                                                               weight_transport="gloo"))
    worker = PolicyWorker.options(num_cpus=0.5).remote(cfg, str(policy_dir), "bench-gloo")
    ray.get(worker.ready.remote())
    group.connect_workers([worker], "gloo")
    timed = {}
    for kind, changed_only in (("full", False), ("step", True)):
        runs = []
        for v in range(1 + SYNC_REPS):
            started = time.perf_counter()
            group.push_weights(v + 1, changed_only)
            runs.append(time.perf_counter() - started)
        timed[kind] = statistics.median(runs[1:])
    ray.kill(worker)
    return timed


def run(results: dict) -> dict:
    torch.manual_seed(0)
    from actors.learner import LearnerGroup

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg = with_tiny_models(load_config("cpu_tiny", [
            f"paths.workdir={work}", "corpus.synth.num_videos=4",
            "learner.micro_batch_size=8", "learner.grad_accum_steps=4",
            "learner.logprob_mismatch_warn=1e9", "resources.cpus_per_actor=0.5",
            "rollout.max_model_len=1024", "rollout.sampling.max_tokens=16"]))
        policy_dir, _ = model_dirs(cfg)
        corpus = generate_corpus(cfg.corpus.synth, work / "corpus")
        turns = synthetic_samples(cfg.video, policy_dir,
                                [str(corpus.out_dir / f"videos/synth_{p:04d}.mp4") for p in range(P)],
                                G, LENGTH)
        # Logical CPUs: one rank takes the preset's 2 (its torch threads), two ranks 1 each.
        ray.init(address="local", num_cpus=4, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        try:
            one = LearnerGroup(cfg, num_ranks=1)
            one.build("grpo", policy_dir)
            results["step_seconds_1rank_zero2"] = _step_seconds(one, turns)
            results.update(_sync(one, cfg, policy_dir))
            one.shutdown()
            two = LearnerGroup(dataclasses.replace(cfg, resources=dataclasses.replace(
                cfg.resources, cpus_per_learner_rank=1)), num_ranks=2)
            two.build("grpo", policy_dir, cfg=dataclasses.replace(cfg, learner=dataclasses.replace(
                cfg.learner, zero_stage=3, grad_accum_steps=2)))
            results["step_seconds_2rank_zero3"] = _step_seconds(two, turns)
            two.shutdown()
        finally:
            ray.shutdown()
    tokens = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
    results["step_tokens"] = tokens
    results["tokens_per_s_1rank_zero2"] = tokens / results["step_seconds_1rank_zero2"]
    results["workload"] = (f"GRPO P={P} G={G} {LENGTH}-token responses, video prompts of "
                           f"{len(turns[0].prompt_ids)} tokens (one per query, its G rows share it), one "
                           f"optimizer step, KL beta {cfg.learner.kl_beta}, tiny Qwen3-VL fp32, 2 CPU cores")
    return results
