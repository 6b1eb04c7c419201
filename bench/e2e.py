"""End-to-end GRPO step time of the whole system (rollout, learner, weight sync) on the
tiny default, with P=4 queries x G=8 samples, as the training job runs it: the preset's SFT
first, so that the policy verifies and refines as the job's does (a policy one SFT step old
ended every episode after one turn, which measures another workload). The comparison with
TRL's GRPOTrainer (on a text workload both can run) is bench/trl_compare.py.

`async_speedup`: from the same SFT, GRPO with the policy worker and the search engine pinned
to core 0 and the learner rank to core 1 (disjoint, as disjoint GPUs are on a cluster),
synchronous (k = 0) and one version ahead (train.max_staleness = 1); the median step time of
the first over the second. `fan_out_driver_cpu_ms_per_episode`: the driver process's CPU time
per episode while 32 queries x G = 8 episodes run through the pool from the SFT export (the
agent loops run in the workers; the driver only asks for groups).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from actors.driver import run as run_job
from config import load_config

ASYNC_STEPS = 6  # the first step of each run warms up and is left out
FAN_OUT_QUERIES, FAN_OUT_G = 32, 8


def _grpo_history(work: Path) -> list[dict]:
    history = json.loads((work / "results" / "history.json").read_text())
    return [h for h in history if h["stage"] == "grpo"]


def _async_runs(cfg) -> dict:
    out = {}
    for k in (0, 1):
        pinned = replace(cfg, train=replace(cfg.train, grpo_steps=ASYNC_STEPS, max_staleness=k),
                         resources=replace(cfg.resources, rollout_cpu_set=[0], retrieval_cpu_set=[0],
                                           learner_cpu_set=[1], cpus_per_learner_rank=1))
        run_job(pinned, stages="grpo")
        steps = _grpo_history(Path(cfg.paths.workdir))[1:]
        out[f"k{k}_step_seconds_median"] = float(np.median([h["step_total_seconds"] for h in steps]))
        out[f"k{k}_learner_seconds_median"] = float(np.median([h["step_seconds"] for h in steps]))
        out[f"k{k}_staleness_mean"] = float(np.mean([h["staleness"] for h in steps]))
    out["async_speedup"] = out["k0_step_seconds_median"] / out["k1_step_seconds_median"]
    return out


def _fan_out(cfg) -> dict:
    from actors.driver import open_session
    from actors.rollout_pool import sync_weights, weights_from_export

    s = open_session(cfg)
    try:
        state = json.loads((Path(cfg.paths.workdir) / "job_state.json").read_text())
        asyncio.run(sync_weights(s.pool, s.router, weights_from_export(Path(state["sft_export"]))))
        queries = s.corpus.queries("train")[:FAN_OUT_QUERIES]
        asyncio.run(s.pool.groups(queries[:4], FAN_OUT_G, seed=99))  # warm-up
        cpu, wall = time.process_time(), time.perf_counter()
        groups = asyncio.run(s.pool.groups(queries, FAN_OUT_G, seed=0))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        s.metrics.close()
    episodes = [e for g in groups for e in g.episodes]
    return {"fan_out_driver_cpu_ms_per_episode": 1000 * cpu / len(episodes),
            "fan_out_seconds": wall,
            "fan_out_turns_per_episode": sum(map(len, episodes)) / len(episodes)}


def run(results: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("cpu_tiny", [
            f"paths.workdir={tmp}", "train.grpo_steps=4", "train.queries_per_step=4",
            "rollout.group_size=8", "learner.checkpoint_every=100",
        ])
        run_job(cfg, stages="sft,grpo")
        history = _grpo_history(Path(tmp))
        results.update(_async_runs(cfg))
        results.update(_fan_out(cfg))
        ray.shutdown()
    steps = history[1:]  # the first step warms up
    med = {k: float(np.median([h[k] for h in steps]))
           for k in ("rollout_seconds", "step_seconds", "sync_seconds")}
    results.update({f"grpo_{k}_median": v for k, v in med.items()})
    results["grpo_step_total_seconds_median"] = sum(med.values())
    results["turns_per_episode"] = float(np.mean([h["turns_per_episode"] for h in steps]))
    results["learned_tokens_per_step"] = float(np.median([h["tokens"] for h in steps]))
    results["workload"] = (f"P=4 G=8 after the preset's {cfg.train.sft_steps} SFT steps, up to "
                           f"{cfg.rollout.sampling.max_tokens} tokens/turn, up to "
                           f"{cfg.rollout.max_turns} turns, tiny Qwen3-VL + video; async: "
                           f"{ASYNC_STEPS} GRPO steps per k, worker on core 0, learner on core 1")
    return results
