"""The product as a cluster user runs it, following cluster/README.md "Local cluster" literally:
the project's environment active (`.venv/bin` first on PATH), `ray start --head` with token
authentication, `ray job submit` of a short run with an absolute `paths.workdir`. The job must
find the tiny models an earlier command built (no pretraining again), show its rollout metrics
on the Prometheus endpoint while it runs, and leave its results where the docs say. Free ports
instead of 8265/8080, and a private XDG_CACHE_HOME (the documented model cache's root), keep it
from clashing with anything else on the machine."""

from __future__ import annotations

import json
import os
import re
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
FINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SHORT = [
    "corpus.synth.num_videos=12", "video.max_frames=8", "rollout.group_size=2",
    "rollout.max_turns=2", "rollout.sampling.max_tokens=24", "train.sft_steps=2",
    "train.grpo_steps=2", "train.queries_per_step=2", "learner.micro_batch_size=4",
    "learner.infonce_negatives=3", "retrieval.topk=5",
] + TEST_MODELS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture
def activated(tmp_path) -> dict:
    """The environment `source .venv/bin/activate` gives, with the token variables the docs
    name (RAY_AUTH_TOKEN instead of writing the user's ~/.ray/auth_token)."""
    venv_bin = str(Path(sys.executable).parent)
    return dict(os.environ, PATH=f"{venv_bin}:{os.environ['PATH']}",
                VIRTUAL_ENV=str(Path(venv_bin).parent), XDG_CACHE_HOME=str(tmp_path / "cache"),
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))


@pytest.fixture
def head(activated, tmp_path):
    ray.shutdown()  # `ray start` must own the machine's only cluster for this test
    ports = {"gcs": _free_port(), "dashboard": _free_port(), "metrics": _free_port()}
    subprocess.run(["ray", "start", "--head", f"--port={ports['gcs']}", "--num-cpus=8",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
                    f"--metrics-export-port={ports['metrics']}", "--disable-usage-stats"],
                   env=activated, check=True, capture_output=True, cwd=tmp_path)
    yield ports
    subprocess.run(["ray", "stop", "--force"], env=activated, capture_output=True)


def _submit(args: list[str], env: dict) -> str:
    for _ in range(6):  # 3 were not enough beside another CPU-heavy job
        job = _run(["ray", "job", "submit", "--no-wait", *args], env, timeout=300)
        # `ray start` returns before the head's job agent has registered; on a busy 2-core
        # machine the dashboard's 10 s wait for it can run out, and the job is never started
        if AGENT_NOT_READY not in job.stdout + job.stderr:
            break
        time.sleep(10)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    return next(w.strip("'") for line in job.stdout.splitlines() if "submitted successfully" in line
                for w in line.split() if w.startswith("'raysubmit_"))


def _status(job_id: str, address: str, env: dict) -> str:
    """The job's state as `ray job status` words it: "Status for job '<id>': RUNNING" while it
    runs, "Job '<id>' succeeded" (or failed, or was stopped) once it ended, both on its log
    stream; "UNKNOWN" when the command itself failed (a busy dashboard can miss its deadline),
    which the caller retries."""
    done = _run(["ray", "job", "status", "--address", address, job_id], env)
    out = done.stdout + done.stderr
    if m := re.search(r"Status for job '[^']+': (\w+)", out):
        return m.group(1)
    if m := re.search(r"Job '[^']+' (succeeded|failed|was stopped)", out):
        return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[m.group(1)]
    return "UNKNOWN"


def test_documented_local_job_reuses_models_and_writes_results_where_the_docs_say(
        activated, head, tmp_path):
    address = f"http://127.0.0.1:{head['dashboard']}"
    built = _run(["python", "-m", "cli", "models", "tiny", *SHORT], activated, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    manifest = tmp_path / "cache" / "videosearch-r1" / "models" / "tiny_manifest.json"
    before = manifest.stat().st_mtime_ns

    unauthenticated = {k: v for k, v in activated.items() if k != "RAY_AUTH_TOKEN"}
    assert _run(["ray", "job", "list", "--address", address], unauthenticated).returncode != 0

    workdir = tmp_path / "runs" / "cpu_tiny"
    job_id = _submit(["--address", address, "--runtime-env", "cluster/runtime_env.yaml", "--",
                      "python", "-m", "cli", "train", "--config", "configs/cpu_tiny.yaml",
                      f"paths.workdir={workdir}", *SHORT], activated)
    deadline, text, status = time.time() + 900, "", "PENDING"
    while status not in FINAL and time.time() < deadline:  # metrics scraped while the job runs
        time.sleep(2)
        status = _status(job_id, address, activated)
        if status == "RUNNING" and "ray_learner_step_seconds" not in text:
            with urllib.request.urlopen(f"http://127.0.0.1:{head['metrics']}/metrics") as resp:
                scraped = resp.read().decode()
            if "ray_rollout_generated_tokens_total" in scraped:
                text = scraped
    logs = _run(["ray", "job", "logs", "--address", address, job_id], activated).stdout
    assert status == "SUCCEEDED", logs[-4000:]
    assert "ray_rollout_generated_tokens_total" in text and "ray_learner_step_seconds" in text
    assert f"workdir: {workdir}" in logs
    results = json.loads((workdir / "results" / "results.json").read_text())
    assert results["stages"]["grpo"]["steps"] == 2
    assert manifest.stat().st_mtime_ns == before  # the job found the models: none rebuilt
