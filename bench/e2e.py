"""End-to-end GRPO step time of the whole system (rollout, learner, weight sync) on the
tiny default, with P=4 queries x G=8 samples, as the training job runs it. The comparison
with TRL's GRPOTrainer (on a text workload both can run) is bench/trl_compare.py.
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
            f"paths.workdir={tmp}", "train.sft_steps=1", "train.grpo_steps=4",
            "train.queries_per_step=4", "rollout.group_size=8", "rollout.sampling.max_tokens=64",
            "learner.checkpoint_every=100",
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
    results["workload"] = "P=4 G=8, up to 64 tokens/turn, up to 3 turns, tiny Qwen3-VL + video"
    return results
