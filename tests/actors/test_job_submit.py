"""The product as a cluster user runs it: `ray start --head` (token authentication on),
`ray job submit` of a short `all` run, and its metrics on the Prometheus endpoint."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import ray

from tests.overrides import TEST_MODELS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
AGENT_NOT_READY = "No available agent to submit job"
RAY = str(Path(sys.executable).parent / "ray")
SHORT = [
    "corpus.synth.num_videos=10", "video.max_frames=8", "rollout.group_size=2",
    "rollout.max_turns=2", "rollout.sampling.max_tokens=24", "train.sft_steps=2",
    "train.grpo_steps=1", "train.queries_per_step=2", "learner.micro_batch_size=4",
    "learner.infonce_negatives=3", "retrieval.topk=5",
] + TEST_MODELS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    ray.shutdown()  # `ray start` must own the machine's only cluster for this test
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    ports = {"gcs": _free_port(), "dashboard": _free_port(), "metrics": _free_port()}
    subprocess.run([RAY, "start", "--head", f"--port={ports['gcs']}", "--num-cpus=8",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
                    f"--metrics-export-port={ports['metrics']}", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, cwd=tmp_path)
    yield env, ports
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)


def test_job_submit_runs_all_stages_and_exports_metrics(head, tmp_path, cfg):
    env, ports = head
    address = f"http://127.0.0.1:{ports['dashboard']}"
    overrides = SHORT + [f"paths.workdir={tmp_path / 'job'}",
                         f"paths.model_cache={cfg.paths.model_cache}-short"]
    unauthenticated = {k: v for k, v in env.items() if k not in ("RAY_AUTH_TOKEN",)}
    denied = subprocess.run([RAY, "job", "list", "--address", address], env=unauthenticated,
                            capture_output=True, text=True, cwd=ROOT)
    assert denied.returncode != 0  # the cluster really is behind the token
    for _ in range(3):
        job = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--runtime-env",
             "cluster/runtime_env.yaml", "--", sys.executable, "-m", "cli", "train", *overrides],
            env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)
        # `ray start` returns before the head's job agent has registered; on a busy 2-core
        # machine the dashboard's 10 s wait for it can run out, and the job is never started
        if AGENT_NOT_READY not in job.stdout + job.stderr:
            break
        time.sleep(10)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    assert (tmp_path / "job" / "results" / "results.json").is_file()
    deadline, text = time.time() + 60, ""
    while "ray_rollout_generated_tokens_total" not in text and time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics") as resp:
            text = resp.read().decode()
        time.sleep(2)
    assert "ray_rollout_generated_tokens_total" in text
    assert "ray_learner_step_seconds" in text
