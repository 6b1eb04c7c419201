"""End-to-end GRPO step time of the whole system (rollout, learner, weight sync) on the
tiny default, with P=4 queries x G=8 samples, as the training job runs it: the preset's SFT
first, so that the policy verifies and refines as the job's does (a policy one SFT step old
ended every episode after one turn, which measures another workload). The comparison with
TRL's GRPOTrainer (on a text workload both can run) is bench/trl_compare.py.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import ray

from actors.driver import run as run_job
from config import load_config


def run(results: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("cpu_tiny", [
            f"paths.workdir={tmp}", "train.grpo_steps=4", "train.queries_per_step=4",
            "rollout.group_size=8", "learner.checkpoint_every=100",
        ])
        run_job(cfg, stages="sft,grpo")
        history = json.loads((Path(tmp) / "results" / "history.json").read_text())
        ray.shutdown()
    steps = [h for h in history if h["stage"] == "grpo"][1:]  # the first step warms up
    med = {k: float(np.median([h[k] for h in steps]))
           for k in ("rollout_seconds", "step_seconds", "sync_seconds")}
    results.update({f"grpo_{k}_median": v for k, v in med.items()})
    results["grpo_step_total_seconds_median"] = sum(med.values())
    results["turns_per_episode"] = float(np.mean([h["turns_per_episode"] for h in steps]))
    results["learned_tokens_per_step"] = float(np.median([h["tokens"] for h in steps]))
    results["workload"] = (f"P=4 G=8 after the preset's {cfg.train.sft_steps} SFT steps, up to "
                           f"{cfg.rollout.sampling.max_tokens} tokens/turn, up to "
                           f"{cfg.rollout.max_turns} turns, tiny Qwen3-VL + video")
    return results
