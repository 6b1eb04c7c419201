"""End-to-end GRPO step time of the whole system (rollout, learner, weight sync) on the
tiny default, with P=4 queries x G=8 samples, as the training job runs it: the preset's SFT
first, so that the policy verifies and refines as the job's does (a policy one SFT step old
ended every episode after one turn, which measures another workload). The comparison with
TRL's GRPOTrainer (on a text workload both can run) is bench/trl_compare.py.

`async_speedup`: from the same SFT, GRPO with the policy worker pinned to core 0 and the
learner rank to core 1 (disjoint, as disjoint GPUs are on a cluster), synchronous (k = 0)
and one version ahead (train.max_staleness = 1); the median step time of the first over the
second. `driver_cpu_ms_per_episode`: the driver process's CPU time over those GRPO runs per
episode generated (its share of the hot path now that agent loops run in the workers).
"""

from __future__ import annotations

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


def _grpo_history(work: Path) -> list[dict]:
    history = json.loads((work / "results" / "history.json").read_text())
    return [h for h in history if h["stage"] == "grpo"]


def _async_runs(cfg) -> dict:
    out, cpu = {}, {}
    for k in (0, 1):
        pinned = replace(cfg, train=replace(cfg.train, grpo_steps=ASYNC_STEPS, max_staleness=k),
                         resources=replace(cfg.resources, rollout_cpu_set=[0], learner_cpu_set=[1],
                                           cpus_per_learner_rank=1))
        started = time.process_time()
        run_job(pinned, stages="grpo")
        cpu[k] = time.process_time() - started
        steps = _grpo_history(Path(cfg.paths.workdir))
        out[f"k{k}_step_seconds_median"] = float(np.median([h["step_total_seconds"] for h in steps[1:]]))
        out[f"k{k}_staleness_mean"] = float(np.mean([h["staleness"] for h in steps]))
        episodes = sum(h["queries_drawn"] for h in steps) * cfg.rollout.group_size
        out[f"k{k}_driver_cpu_ms_per_episode"] = 1000 * cpu[k] / episodes
    out["async_speedup"] = out["k0_step_seconds_median"] / out["k1_step_seconds_median"]
    return out


def run(results: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("cpu_tiny", [
            f"paths.workdir={tmp}", "train.grpo_steps=4", "train.queries_per_step=4",
            "rollout.group_size=8", "learner.checkpoint_every=100",
        ])
        run_job(cfg, stages="sft,grpo")
        history = _grpo_history(Path(tmp))
        results.update(_async_runs(cfg))
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
